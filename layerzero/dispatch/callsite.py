"""Call sites: a patched module's own memory of the plan it ran last.

A patched model calls the same operation with the same facts at every layer and every decode step. The
dispatcher's cache already makes that a hit, but a hit still walks the orchestrator, the dispatcher's
entry points and an LRU dict. A :class:`CallSite` keeps the last plan it ran together with the guard it
was chosen under, and on the next call goes straight to the dispatcher's kernel runner.

The guard is the dispatcher's own cache key for the call (every fact a constraint or policy rule can
look at, sizes bucketed), so a bound plan is reused exactly when the cache would have returned it: no
new correctness rule to get wrong. The binding is dropped, and the next call selects again, when

* the key changes (new shape bucket, dtype, device, grad mode, options),
* the dispatcher's selection state is swapped (policy change, hot reload, kernels registered at run
  time) or the orchestrator's default dispatcher is replaced,
* the orchestrator registered under the site's name is replaced.

Breakers, fallbacks, output checks and telemetry run exactly as in ``dispatch()``: the site skips the
lookup, never the runner (:meth:`PlannedDispatcher._run_plan`).
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import Any, Callable, Mapping

from layerzero.dispatch.core import _ATTENTION_OPS, PlannedDispatcher
from layerzero.dispatch.overrides import active_overrides as _active_overrides
from layerzero.dispatch.orchestrator import DispatchOrchestrator

__all__ = ["CallSite"]


class CallSite:
    """Bound dispatch for one call site. ``call(operation, inputs, kwargs)`` has the signature of
    :meth:`DispatchOrchestrator.call`, so a site can stand wherever an orchestrator is passed to
    :mod:`layerzero.ops`. Thread-safe: the binding is one tuple, replaced by a single assignment."""

    __slots__ = ("orchestrator_name", "_resolve", "_registry", "_memo", "binds", "__weakref__")

    def __init__(self, resolve: Callable[[], Any], orchestrator_name: str | None = None,
                 registry: Mapping[str, Any] | None = None):
        self._resolve = resolve
        self.orchestrator_name = orchestrator_name  # what compiled graphs use to find the orchestrator
        # name -> orchestrator mapping read directly on the hot path (``layerzero.ops``' registry); a name
        # missing there goes through ``resolve``, which raises the helpful error.
        self._registry = registry
        # (orchestrator, dispatcher, selection state, key, plan); dispatcher None when the orchestrator
        # cannot be bound (a custom dispatcher, hot-reload's wrapper, a stand-in such as a recorder).
        self._memo: tuple | None = None
        self.binds = 0  # how many times the site (re)selected: a decode loop should leave this flat

    def call(self, operation: str, inputs: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
        t0 = perf_counter_ns()
        registry = self._registry
        orch = registry.get(self.orchestrator_name) if registry is not None else None
        if orch is None:
            orch = self._resolve()
        m = self._memo
        if m is None or m[0] is not orch or (m[1] is not None and orch._default is not m[1]):
            m = self._memo = (orch, self._bindable(orch), None, None, None)
        d = m[1]
        if d is None or _active_overrides() or (operation in _ATTENTION_OPS and "is_causal" not in kwargs):
            call = getattr(orch, "call", None)  # anything with dispatch() can stand in for an orchestrator
            if call is not None:
                return call(operation, inputs, kwargs)
            return orch.dispatch(operation, inputs, **kwargs).output
        state = d._state
        key = state.keyer(operation, inputs, kwargs)
        if m[2] is state and m[3] == key and not m[4].superseded:
            plan = m[4]
        else:
            plan = state.engine.lookup(key)
            if plan is None:  # a miss: the full path selects and caches, then the site binds that plan
                out = d.call(operation, inputs, kwargs)
                plan = state.engine.lookup(key) if d._state is state else None
                if plan is not None:
                    self.binds += 1
                    self._memo = (orch, d, state, key, plan)
                return out
            self.binds += 1
            self._memo = (orch, d, state, key, plan)
        return d._run_plan(plan, True, operation, inputs, kwargs, t0, False, key)

    @staticmethod
    def _bindable(orch: Any) -> PlannedDispatcher | None:
        """Bind only a plain DispatchOrchestrator whose default dispatcher it may bypass itself (its
        ``_default_execute``): anything standing in for one (a recorder, a subclass overriding
        ``call``/``dispatch``, a dispatcher with its own entry points) must see every call."""
        cls = type(orch)
        if (
            not issubclass(cls, DispatchOrchestrator)
            or cls.call is not DispatchOrchestrator.call
            or cls.dispatch is not DispatchOrchestrator.dispatch
            or orch._default_execute is None
        ):
            return None
        return orch._default

    # A copy (deepcopy of a patched model, pickling a module that holds a site) starts unbound: the binding
    # refers to live dispatcher objects that must not be copied along.
    def __copy__(self) -> "CallSite":
        return CallSite(self._resolve, self.orchestrator_name, self._registry)

    def __deepcopy__(self, memo: dict) -> "CallSite":
        return CallSite(self._resolve, self.orchestrator_name, self._registry)

    def __reduce__(self) -> tuple:
        # the registry is process state: an unpickled site resolves through ``resolve`` alone
        return (CallSite, (self._resolve, self.orchestrator_name))

    def reset(self) -> None:
        """Forget the binding (the next call selects through the dispatcher's cache)."""
        self._memo = None

    @property
    def bound_kernel(self) -> str | None:
        """The kernel id the site would run next without selecting, if bound."""
        m = self._memo
        return None if m is None or m[4] is None else m[4].primary.kernel_id

    def __repr__(self) -> str:
        return f"CallSite(orchestrator={self.orchestrator_name!r}, bound={self.bound_kernel!r}, binds={self.binds})"
