"""BoundCall: the one fast path patched modules use. It remembers the plan of its last call together with
the guard it was chosen under, and on the next call goes straight to the dispatcher's runner.

The guard is (selection state, cache key). The state is the dispatcher's one published reference
(engine, policy, version), replaced whole by a policy swap, a hot reload or ``refresh()`` after kernels
were registered at run time; the key is the dispatcher's own cache key for the call (every fact a
constraint or policy rule can look at, sizes bucketed). So a bound plan is reused exactly when the cache
would have returned it: no new correctness rule to get wrong. The plan is dropped, and the next call
selects again, when either changes, or when verification demoted the plan (``Plan.superseded``).

Breakers, fallbacks, output checks and telemetry run exactly as in ``dispatch()``: a bound call skips the
lookup, never the runner (it calls its plan's :meth:`~layerzero.dispatch.runner.Runner.hit_path`, as a
cache hit through ``call()`` does). Calls inside ``use_kernels``, attention calls that leave ``is_causal``
to the operation's name, and dispatchers that count in-flight calls (hot reload) go through ``call()``.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import Any, Mapping, Protocol

from layerzero.context.keys import KEY_ERRORS
from layerzero.dispatch.overrides import active_overrides as _active_overrides
from layerzero.operations import ATTENTION_OPS



class BindableDispatcher(Protocol):
    """What a :class:`BoundCall` uses of its dispatcher (:class:`layerzero.dispatch.dispatcher.Dispatcher`):
    its current selection state, its runner and its plain call path. A protocol, so this module and the
    dispatcher that creates bound calls do not import each other."""

    state: Any
    runner: Any

    def call(self, operation: str, inputs: Mapping[str, Any], kwargs: dict[str, Any]) -> Any: ...

__all__ = ["BoundCall", "RoutedCall"]

_ATTENTION_OPS = frozenset(ATTENTION_OPS)


class BoundCall:
    """``bound(inputs, kwargs) -> output`` for one operation on one dispatcher. Thread-safe: the memo is
    one tuple, replaced by a single assignment. ``binds`` counts (re)selections: a decode loop should
    leave it flat."""

    __slots__ = ("dispatcher", "operation", "binds", "_memo", "_hit_path", "_attention")

    def __init__(self, dispatcher: BindableDispatcher, operation: str):
        self.dispatcher = dispatcher
        self.operation = operation
        self.binds = 0
        # (selection state, key, plan, the key function under that state (the operation's own, else the
        # state's keyer), the runner's hit path for the plan)
        self._memo: tuple = (None, None, None, None, None)
        self._hit_path = dispatcher.runner.hit_path
        self._attention = operation in _ATTENTION_OPS

    def __call__(self, inputs: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
        t0 = perf_counter_ns()
        state = self.dispatcher.state
        bound_state, bound_key, plan, key_of, hit = self._memo
        # Bound under this very state (so one that counts no calls in flight: those are never bound), outside
        # use_kernels, is_causal given to attention: only the key is left to compare.
        if bound_state is not state or _active_overrides() or (self._attention and "is_causal" not in kwargs):
            return self._unbound(state, inputs, kwargs, t0)
        try:
            key = key_of(self.operation, inputs, kwargs)
        except KEY_ERRORS:  # the operation's own key does not fit these arguments: the generic one, as the keyer
            key = state.keyer(self.operation, inputs, kwargs)
        if key == bound_key and not plan.superseded:
            return hit(inputs, kwargs, t0, key)
        return self._select(state, key, key_of, inputs, kwargs, t0)

    def _unbound(self, state: Any, inputs: Mapping[str, Any], kwargs: dict[str, Any], t0: int) -> Any:
        """A call the memo does not cover: a new selection state (or the first call), which may key
        differently, or one that must take the dispatcher's own path."""
        d = self.dispatcher
        operation = self.operation
        if state.inflight is not None or _active_overrides() or (self._attention and "is_causal" not in kwargs):
            return d.call(operation, inputs, kwargs)
        # The operation's own key function, called directly (the state's keyer would add a frame); the keyer
        # itself for an operation without one.
        key_of = state.key_of.get(operation) or state.keyer
        try:
            key = key_of(operation, inputs, kwargs)
        except KEY_ERRORS:
            key = state.keyer(operation, inputs, kwargs)
        return self._select(state, key, key_of, inputs, kwargs, t0)

    def _select(self, state: Any, key: Any, key_of: Any, inputs: Mapping[str, Any], kwargs: dict[str, Any],
                t0: int) -> Any:
        """Bind the plan the cache holds for ``key`` and run it; on a miss the dispatcher's full path selects
        and caches, then this binds that plan."""
        plan = state.engine.lookup(key)
        if plan is None:
            d = self.dispatcher
            out = d.call(self.operation, inputs, kwargs)
            plan = state.engine.lookup(key) if d.state is state else None
            if plan is not None:
                self._bind(state, key, plan, key_of)
            return out
        return self._bind(state, key, plan, key_of)(inputs, kwargs, t0, key)

    def _bind(self, state: Any, key: Any, plan: Any, key_of: Any) -> Any:
        """Remember ``plan`` for calls under (``state``, ``key``); returns its hit path."""
        hit = self._hit_path(plan)
        self.binds += 1
        self._memo = (state, key, plan, key_of, hit)
        return hit

    # The same function under a method name: ``bound.call(inputs, kwargs)`` is a plain method call, which the
    # interpreter runs without a C-level detour; calling the instance goes through the type's __call__ slot
    # (an argument tuple and a nested evaluation loop, measured ~+300 machine instructions a call).
    call = __call__

    def reset(self) -> None:
        """Forget the bound plan (the next call selects through the dispatcher's cache)."""
        self._memo = (None, None, None, None, None)

    @property
    def bound_kernel(self) -> str | None:
        """The kernel id the next call would run without selecting, if bound."""
        plan = self._memo[2]
        return None if plan is None else plan.primary.kernel_id

    def __repr__(self) -> str:
        return f"BoundCall({self.operation!r}, bound={self.bound_kernel!r}, binds={self.binds})"


class RoutedCall:
    """The ``bind`` of something that cannot be bound (a custom dispatcher, a stand-in orchestrator): the
    same call signature, every call routed through ``call``/``dispatch`` so it sees them all."""

    __slots__ = ("target", "operation", "binds")

    def __init__(self, target: Any, operation: str):
        self.target = target
        self.operation = operation
        self.binds = 0

    def __call__(self, inputs: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
        call = getattr(self.target, "call", None)
        if call is not None:
            return call(self.operation, inputs, kwargs)
        return self.target.dispatch(self.operation, inputs, **kwargs).output

    call = __call__  # as BoundCall.call

    def reset(self) -> None:
        """Nothing is remembered."""

    @property
    def bound_kernel(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"RoutedCall({self.operation!r}, target={type(self.target).__name__})"
