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

Breakers, fallbacks, output checks and telemetry behave exactly as in ``dispatch()``. A bound call runs
the kernel inline (the breaker's CLOSED state checked, the kernel, the success and telemetry records),
with what ``_run_plan`` would look up per call resolved at bind time; anything else (a breaker not
CLOSED, output checks configured, different option names) goes through ``_run_plan``, and a kernel
failure goes to the dispatcher's fallback walk with the failure recorded.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import Any, Callable, Mapping

from layerzero.dispatch.circuit import CircuitState
from layerzero.dispatch.core import _ATTENTION_OPS, PlannedDispatcher
from layerzero.dispatch.orchestrator import DispatchOrchestrator

__all__ = ["CallSite"]

_CLOSED = CircuitState.CLOSED


class _Binding:
    """What a site bound: the dispatcher and selection state it is valid under, the guard (cache key), and
    everything the inline runner needs, resolved once."""

    __slots__ = ("orch", "dispatcher", "state", "key", "plan", "impl", "kwarg_keys", "circuit", "kernel_id",
                 "telemetry", "inline")

    def __init__(self, orch: Any, dispatcher: PlannedDispatcher | None, state: Any = None, key: Any = None,
                 plan: Any = None, inputs: Mapping[str, Any] | None = None, kwargs: Mapping[str, Any] | None = None):
        self.orch, self.dispatcher, self.state, self.key, self.plan = orch, dispatcher, state, key, plan
        self.inline = False
        if plan is None or dispatcher is None:
            return
        spec = plan.kernels[0]
        self.impl = spec.impl
        self.kernel_id = spec.kernel_id
        self.kwarg_keys = frozenset(kwargs or ())
        circuits = dispatcher.circuits
        self.circuit = circuits.get_circuit(plan.circuit_keys[0]) if circuits is not None else None
        self.telemetry = dispatcher.telemetry
        params = spec.parameters
        # Inline only what needs no per-call decision beyond the guard: the kernel takes these exact
        # arguments, and no output check is configured (that path goes through _run_plan).
        self.inline = (not dispatcher._check_outputs and params.issuperset(self.kwarg_keys)
                       and params.issuperset(inputs or ()))


class CallSite:
    """Bound dispatch for one call site. ``call(operation, inputs, kwargs)`` has the signature of
    :meth:`DispatchOrchestrator.call`, so a site can stand wherever an orchestrator is passed to
    :mod:`layerzero.ops`. Thread-safe: the binding is one object, replaced by a single assignment."""

    __slots__ = ("orchestrator_name", "_resolve", "_registry", "_binding", "binds", "__weakref__")

    def __init__(self, resolve: Callable[[], Any], orchestrator_name: str | None = None,
                 registry: Mapping[str, Any] | None = None):
        self._resolve = resolve
        self.orchestrator_name = orchestrator_name  # what compiled graphs use to find the orchestrator
        # name -> orchestrator mapping read directly on the hot path (``layerzero.ops``' registry); a name
        # missing there goes through ``resolve``, which raises the helpful error.
        self._registry = registry
        self._binding: _Binding | None = None
        self.binds = 0  # how many times the site (re)selected: a decode loop should leave this flat

    def call(self, operation: str, inputs: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
        t0 = perf_counter_ns()
        registry = self._registry
        orch = registry.get(self.orchestrator_name) if registry is not None else None
        if orch is None:
            orch = self._resolve()
        b = self._binding
        if b is None or b.orch is not orch or (b.dispatcher is not None and orch._default is not b.dispatcher):
            b = self._binding = _Binding(orch, self._bindable(orch))
        d = b.dispatcher
        if d is None or (operation in _ATTENTION_OPS and "is_causal" not in kwargs):
            call = getattr(orch, "call", None)  # anything with dispatch() can stand in for an orchestrator
            if call is not None:
                return call(operation, inputs, kwargs)
            return orch.dispatch(operation, inputs, **kwargs).output
        state = d._state
        key = state.keyer(operation, inputs, kwargs)
        if b.state is state and b.key == key:
            circuit = b.circuit
            if b.inline and kwargs.keys() == b.kwarg_keys and (circuit is None or circuit._state is _CLOSED):
                # The bound runner: _run_plan's work with everything per-binding resolved already.
                try:
                    out = b.impl(**inputs, **kwargs)
                except Exception as exc:  # noqa: BLE001 - recorded, then the plan's fallbacks run
                    return d._recover(b.plan, operation, inputs, kwargs, t0, t0, True, [(b.kernel_id, exc)]).output
                if circuit is not None and circuit._failures:
                    circuit.record_success()
                if b.telemetry is not None:
                    b.telemetry.record(operation, b.kernel_id, perf_counter_ns() - t0, True, False)
                return out
            plan = b.plan
        else:
            plan = state.engine.lookup(key)
            if plan is None:  # a miss: the full path selects and caches, then the site binds that plan
                out = d.call(operation, inputs, kwargs)
                plan = state.engine.lookup(key) if d._state is state else None
                if plan is not None:
                    self.binds += 1
                    self._binding = _Binding(orch, d, state, key, plan, inputs, kwargs)
                return out
            self.binds += 1
            self._binding = _Binding(orch, d, state, key, plan, inputs, kwargs)
        return d._run_plan(plan, True, operation, inputs, kwargs, t0, False)

    @staticmethod
    def _bindable(orch: Any) -> PlannedDispatcher | None:
        """Bind only a plain DispatchOrchestrator over a PlannedDispatcher: anything standing in for one
        (a recorder, a subclass overriding ``call``/``dispatch``) must see every call."""
        cls = type(orch)
        if (
            not issubclass(cls, DispatchOrchestrator)
            or cls.call is not DispatchOrchestrator.call
            or cls.dispatch is not DispatchOrchestrator.dispatch
            or not isinstance(orch._default, PlannedDispatcher)
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
        self._binding = None

    @property
    def bound_kernel(self) -> str | None:
        """The kernel id the site would run next without selecting, if bound."""
        b = self._binding
        return None if b is None or b.plan is None else b.plan.primary.kernel_id

    def __repr__(self) -> str:
        return f"CallSite(orchestrator={self.orchestrator_name!r}, bound={self.bound_kernel!r}, binds={self.binds})"
