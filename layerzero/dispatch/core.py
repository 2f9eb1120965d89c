"""The shared hot path of the built-in dispatchers: key -> cached plan -> run -> result.

A cached dispatch builds one key tuple from tensor metadata, does one dict lookup, checks the primary
kernel's circuit and calls it. Everything else (building a SelectionContext, ranking, fallbacks, error
reports, selection-change logging) happens only on a miss or a failure.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Mapping

import torch

from layerzero.dispatch.protocols import BaseDispatcher
from layerzero.dispatch.types import _NO_TIMING, DispatchConfig, DispatchMode, DispatchResult, DispatchTiming
from layerzero.dispatch.circuit import CircuitState
from layerzero.errors import CircuitOpenError, FallbackChainExhaustedError, KernelExecutionError
from layerzero.selection.context import SelectionContext, default_is_causal
from layerzero.selection.engine import Explanation, Plan, SelectionEngine
from layerzero.selection.keys import make_keyer
from layerzero.operations import ATTENTION_OPS

_ATTENTION_OPS = frozenset(ATTENTION_OPS)
_CLOSED = CircuitState.CLOSED

if TYPE_CHECKING:
    from layerzero.dispatch.circuit import CircuitBreakerManager
    from layerzero.registry import BackendRegistry, KernelRegistry, KernelSpec
    from layerzero.telemetry import DispatchTelemetry


class SelectionState:
    """An engine and the key function that matches its buckets. Swapped as one reference."""

    __slots__ = ("engine", "keyer", "version")

    def __init__(self, engine: SelectionEngine, version: Any = None):
        self.engine = engine
        self.keyer = make_keyer(engine.bucketers)
        self.version = version


def expected_output_check(operation: str, inputs: Mapping[str, Any], out: Any) -> str | None:
    """Why an output is wrong (shape, dtype, NaN/Inf), or None. Used when ``check_outputs`` is on."""
    tensors = out if isinstance(out, tuple) else (out,)
    if operation.startswith("attention"):
        q, v = inputs["query"], inputs["value"]
        expected = [(tuple(q.shape[:-1]) + (v.shape[-1],), q.dtype)]
    elif operation in ("rms_norm", "layer_norm"):
        x = inputs["x"]
        expected = [(tuple(x.shape), x.dtype)] * len(tensors)
    elif operation == "rope":
        expected = [(tuple(inputs["q"].shape), inputs["q"].dtype), (tuple(inputs["k"].shape), inputs["k"].dtype)]
    elif operation in ("swiglu", "geglu"):
        g = inputs["gate"]
        expected = [(tuple(g.shape), g.dtype)]
    else:
        expected = []
    if expected and len(tensors) != len(expected):
        return f"returned {len(tensors)} tensors, expected {len(expected)}"
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            return f"output {i} is {type(t).__name__}, not a tensor"
        if expected:
            shape, dtype = expected[i]
            if tuple(t.shape) != shape:
                return f"output {i} has shape {tuple(t.shape)}, expected {shape}"
            if t.dtype != dtype:
                return f"output {i} has dtype {t.dtype}, expected {dtype}"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"output {i} contains NaN or Inf"
    return None


class PlannedDispatcher(BaseDispatcher):
    """Base of the dynamic, static, hot-reload and autotune dispatchers."""

    def __init__(
        self,
        config: DispatchConfig | None = None,
        kernel_registry: "KernelRegistry | None" = None,
        backend_registry: "BackendRegistry | None" = None,
        circuits: "CircuitBreakerManager | None" = None,
        telemetry: "DispatchTelemetry | None" = None,
    ):
        from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

        self.config = config or DispatchConfig()
        self.kernel_registry = kernel_registry or get_global_kernel_registry()
        self.backend_registry = backend_registry or get_global_backend_registry()
        if circuits is None and self.config.circuit_breaker_enabled:
            from layerzero.dispatch.circuit import CircuitBreakerManager

            circuits = CircuitBreakerManager.from_dispatch_config(self.config)
        self.circuits = circuits if self.config.circuit_breaker_enabled else None
        if telemetry is None and self.config.enable_telemetry:
            from layerzero.telemetry import DispatchTelemetry

            telemetry = DispatchTelemetry()
        self.telemetry = telemetry if self.config.enable_telemetry else None
        self._check_outputs = self.config.check_outputs
        self._record_timing = self.config.record_timing
        self._state: SelectionState = self._build_state()

    # ------------------------------------------------------------------ to override
    def _build_engine(self) -> SelectionEngine:
        raise NotImplementedError

    def _build_state(self, version: Any = None) -> SelectionState:
        return SelectionState(self._build_engine(), version)

    # ------------------------------------------------------------------ public
    @property
    def engine(self) -> SelectionEngine:
        return self._state.engine

    def refresh(self) -> None:
        """Rebuild selection after the kernel catalogue changed (new kernels registered)."""
        self._state = self._build_state(self._state.version)

    def explain(self, operation: str, context: SelectionContext | None = None, **facts: Any) -> Explanation:
        ctx = context if context is not None else SelectionContext(operation=operation, **facts)
        return self._state.engine.explain(operation, ctx)

    def get_kernel_for_operation(self, operation: str, context: SelectionContext) -> "KernelSpec":
        return self._state.engine.select(operation, context)

    def select(self, operation: str, inputs: Mapping[str, Any], **kwargs: Any) -> "KernelSpec":
        """The kernel a call with these inputs would run first (uses and fills the cache)."""
        return self._plan_for(self._state, operation, inputs, None, kwargs)[0].primary

    def dispatch(
        self,
        operation: str,
        inputs: Mapping[str, Any],
        context: SelectionContext | None = None,
        **kwargs: Any,
    ) -> DispatchResult:
        return self._execute(operation, inputs, context, kwargs, True)

    def call(self, operation: str, inputs: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
        """The output alone: the path patched modules take in decode loops (no DispatchResult, no
        DispatchTiming objects; telemetry, breakers and fallbacks work as in ``dispatch``)."""
        return self._execute(operation, inputs, None, kwargs, False)

    def _execute(
        self,
        operation: str,
        inputs: Mapping[str, Any],
        context: SelectionContext | None,
        kwargs: dict[str, Any],
        want_result: bool,
    ) -> Any:
        # The hot path. Kept flat on purpose: every attribute lookup and call here costs ~50-100 ns.
        t0 = perf_counter_ns()
        state = self._state  # read once: the whole call runs under one policy version
        if operation in _ATTENTION_OPS and "is_causal" not in kwargs:
            # "attention.causal"/"prefill" are causal by name; a context can make other attention causal.
            kwargs = {**kwargs, "is_causal": default_is_causal(operation) or (context is not None and context.is_causal)}
        engine = state.engine
        if context is None:
            key = state.keyer(operation, inputs, kwargs)
        else:
            key = (operation, engine.bucket_context(context))
        plan = engine.lookup(key)
        hit = plan is not None
        if not hit:
            plan = self._miss(state, key, operation, inputs, context, kwargs)
        return self._run_plan(plan, hit, operation, inputs, kwargs, t0, want_result)

    def _run_plan(
        self,
        plan: Plan,
        hit: bool,
        operation: str,
        inputs: Mapping[str, Any],
        kwargs: Mapping[str, Any],
        t0: int,
        want_result: bool,
    ) -> Any:
        """Run a plan's primary kernel under its breaker; on failure walk the fallbacks. Shared by
        ``_execute`` and by :class:`~layerzero.dispatch.callsite.CallSite`, which brings its own plan."""
        t1 = perf_counter_ns()
        spec = plan.kernels[0]
        circuit = None
        if self.circuits is not None:
            circuit = self.circuits.get_circuit(plan.circuit_keys[0])
            # CLOSED is checked inline (the common case); any other state takes the locked path.
            if circuit._state is not _CLOSED and not circuit.allow_request():
                result = self._recover(plan, operation, inputs, kwargs, t0, t1, hit, [], skipped=[spec.kernel_id])
                return result if want_result else result.output
        try:
            params = spec.parameters
            if params.issuperset(kwargs) and params.issuperset(inputs):
                out = spec.impl(**inputs, **kwargs)
            else:
                out = spec.impl(**spec.map_arguments(inputs, kwargs))
            if self._check_outputs:
                problem = expected_output_check(operation, inputs, out)
                if problem is not None:
                    raise KernelExecutionError(spec.kernel_id, problem)
        except Exception as exc:  # noqa: BLE001 - any kernel failure goes to the fallback path
            result = self._recover(plan, operation, inputs, kwargs, t0, t1, hit, [(spec.kernel_id, exc)])
            return result if want_result else result.output
        if circuit is not None and (circuit._failures or circuit._state is not _CLOSED):
            circuit.record_success()
        t2 = perf_counter_ns()
        if self.telemetry is not None:
            self.telemetry.record(operation, spec.kernel_id, t2 - t0, hit, False)
        if not want_result:
            return out
        if self._record_timing:
            return DispatchResult(out, spec.kernel_id, DispatchTiming(t2 - t0, t1 - t0, t2 - t1), False, hit, operation)
        return DispatchResult(out, spec.kernel_id, _NO_TIMING, False, hit, operation)

    # ------------------------------------------------------------------ internals
    def _plan_for(
        self,
        state: SelectionState,
        operation: str,
        inputs: Mapping[str, Any],
        context: SelectionContext | None,
        kwargs: Mapping[str, Any],
    ) -> tuple[Plan, bool]:
        engine = state.engine
        key = state.keyer(operation, inputs, kwargs) if context is None else (operation, engine.bucket_context(context))
        plan = engine.lookup(key)
        if plan is not None:
            return plan, True
        return self._miss(state, key, operation, inputs, context, kwargs), False

    def _miss(
        self,
        state: SelectionState,
        key: Any,
        operation: str,
        inputs: Mapping[str, Any],
        context: SelectionContext | None,
        kwargs: Mapping[str, Any],
    ) -> Plan:
        """Cache miss: build the full context, rank, cache the plan, note a change of kernel. A catalogue
        that changed since the engine was built (kernels registered at run time) is picked up here."""
        engine = state.engine
        if engine.is_stale:
            self.refresh()
            state = self._state
            engine = state.engine
            key = state.keyer(operation, inputs, kwargs) if context is None else (operation, engine.bucket_context(context))
        engine.misses += 1
        ctx = context if context is not None else SelectionContext.from_inputs(operation, inputs, **kwargs)
        if ctx.operation != operation:
            ctx = ctx.replace(operation=operation)
        plan, cacheable = self._make_plan(engine, operation, ctx, key, inputs, kwargs)
        plan.primary.impl  # resolve the lazy import now, not inside the timed kernel call
        if cacheable:
            engine.store(key, plan)
            if self.telemetry is not None:
                self.telemetry.record_selection(operation, plan.primary.kernel_id, ctx)
        return plan

    def _make_plan(
        self,
        engine: SelectionEngine,
        operation: str,
        ctx: SelectionContext,
        key: Any,
        inputs: Mapping[str, Any],
        kwargs: Mapping[str, Any],
    ) -> tuple[Plan, bool]:
        """The plan for a cache miss, and whether it may be cached (subclasses refine the ranking)."""
        return engine.plan(operation, ctx), True

    def _recover(
        self,
        plan: Plan,
        operation: str,
        inputs: Mapping[str, Any],
        kwargs: Mapping[str, Any],
        t0: int,
        t1: int,
        hit: bool,
        attempts: list[tuple[str, BaseException]],
        skipped: list[str] | None = None,
    ) -> DispatchResult:
        """Slow path: record the failure, then walk the fallback order under the circuit breakers."""
        skipped = list(skipped or [])
        circuits = self.circuits
        ckey = dict(zip((k.kernel_id for k in plan.kernels), plan.circuit_keys))
        telemetry = self.telemetry
        for kid, exc in attempts:
            if circuits is not None:
                circuits.get_circuit(ckey.get(kid, kid)).record_failure(exc)
            if telemetry is not None:
                telemetry.record_failure(operation, kid, exc)
        if not self.config.enable_fallback:
            if attempts:
                raise attempts[0][1]
            raise CircuitOpenError(operation, skipped)
        budget = self.config.max_fallback_attempts
        for spec in plan.kernels[1:]:
            if budget <= 0:
                break
            if circuits is not None and not circuits.get_circuit(ckey[spec.kernel_id]).allow_request():
                skipped.append(spec.kernel_id)
                continue
            budget -= 1
            try:
                out = spec.impl(**spec.map_arguments(inputs, kwargs))
                if self.config.check_outputs:
                    problem = expected_output_check(operation, inputs, out)
                    if problem is not None:
                        raise KernelExecutionError(spec.kernel_id, problem)
            except Exception as exc:  # noqa: BLE001
                attempts.append((spec.kernel_id, exc))
                if circuits is not None:
                    circuits.get_circuit(ckey[spec.kernel_id]).record_failure(exc)
                if telemetry is not None:
                    telemetry.record_failure(operation, spec.kernel_id, exc)
                continue
            if circuits is not None:
                circuits.get_circuit(ckey[spec.kernel_id]).record_success()
            t2 = perf_counter_ns()
            failed = tuple(k for k, _ in attempts) + tuple(skipped)
            if telemetry is not None:
                telemetry.record(operation, spec.kernel_id, t2 - t0, hit, True, failed)
            return DispatchResult(
                out, spec.kernel_id, DispatchTiming(t2 - t0, t1 - t0, t2 - t1), True, hit, operation, failed
            )
        if not attempts:
            raise CircuitOpenError(operation, skipped)
        raise FallbackChainExhaustedError(operation, attempts)


__all__ = ["PlannedDispatcher", "SelectionState", "expected_output_check", "DispatchMode"]
