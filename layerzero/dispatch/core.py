"""The shared hot path of the built-in dispatchers: key -> cached plan -> run -> result.

A cached dispatch builds one key tuple from tensor metadata, does one dict lookup, checks the primary
kernel's circuit and calls it. Everything else (building a SelectionContext, ranking, fallbacks, error
reports, selection-change logging) happens only on a miss or a failure.
"""

from __future__ import annotations

import logging
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Mapping

import torch

from layerzero.dispatch.protocols import BaseDispatcher
from layerzero.dispatch.types import _NO_TIMING, DispatchConfig, DispatchMode, DispatchResult, DispatchTiming
from layerzero.dispatch.circuit import CircuitState
from layerzero.dispatch.overrides import active_overrides as _active_overrides
from layerzero.dispatch.overrides import kernel_override
from layerzero.errors import (
    CircuitOpenError,
    FallbackChainExhaustedError,
    InvalidInputError,
    KernelExecutionError,
    NoKernelAvailableError,
)
from layerzero.context.call_context import SelectionContext, default_is_causal
from layerzero.selection.engine import Explanation, Plan, SelectionEngine
from layerzero.context.keys import make_keyer
from layerzero.operations import ATTENTION_OPS
from layerzero.validation import problems as input_problems
from layerzero.validation import validate

_ATTENTION_OPS = frozenset(ATTENTION_OPS)
_verify_log = logging.getLogger("layerzero.verify")
_CLOSED = CircuitState.CLOSED
_profiling = torch._C._autograd._profiler_enabled  # ~50 ns: profiler ranges cost nothing when none records
if torch.cuda.is_available():
    _cuda_device = torch._C._cuda_getDevice  # the current CUDA device, without the Python wrapper
else:
    def _cuda_device() -> int:
        return -2  # matches no plan: a CUDA plan here holds CPU tensors (explicit contexts), see _run_on_device

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
        cfg = self.config
        self._verify_first = bool(getattr(cfg, "verify_kernels", True))
        self._sample_every = int(getattr(cfg, "verify_sample_every", 0) or 0)
        self._countdown = self._sample_every
        self._verifier = None
        if self._verify_first or self._sample_every:
            from layerzero.dispatch.verify import KernelVerifier

            self._verifier = KernelVerifier(self.kernel_registry, getattr(cfg, "verify_max_elements", 1 << 26),
                                            self._sample_every)
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
        overrides = _active_overrides()
        if overrides:  # inside a use_kernels() block
            forced = kernel_override(overrides, operation)
            if forced is not None:
                return self._run_forced(forced, operation, inputs, context, kwargs, t0, want_result)
        engine = state.engine
        if context is None:
            key = state.keyer(operation, inputs, kwargs)
        else:
            key = (operation, engine.bucket_context(context))
        plan = engine.lookup(key)
        hit = plan is not None
        if not hit:
            plan = self._miss(state, key, operation, inputs, context, kwargs)
        return self._run_plan(plan, hit, operation, inputs, kwargs, t0, want_result, key)

    def _run_plan(
        self,
        plan: Plan,
        hit: bool,
        operation: str,
        inputs: Mapping[str, Any],
        kwargs: Mapping[str, Any],
        t0: int,
        want_result: bool,
        key: Any = None,
    ) -> Any:
        """Run a plan's primary kernel under its breaker; on failure walk the fallbacks. Shared by
        ``_execute`` and by :class:`~layerzero.dispatch.callsite.CallSite`, which brings its own plan.

        The kernel runs with the plan's GPU current (the device guard: Triton, FlashInfer and Liger launch
        on the current device, and a model split over GPUs calls them with tensors on another one). A
        keyword the operation does not take is the caller's error, raised before the kernel runs. On a
        cache miss (``hit`` False) the output is checked against the fp32 reference before it is served
        (:mod:`layerzero.dispatch.verify`)."""
        t1 = perf_counter_ns()
        spec = plan.kernels[0]
        circuit = None
        if self.circuits is not None:
            circuit = self.circuits.get_circuit(plan.circuit_keys[0])
            # CLOSED is checked inline (the common case); any other state takes the locked path.
            if circuit._state is not _CLOSED and not circuit.allow_request():
                result = self._recover(plan, operation, inputs, kwargs, t0, t1, hit, [], skipped=[spec.kernel_id])
                return result if want_result else result.output
        params = spec.parameters
        if params.issuperset(kwargs) and params.issuperset(inputs):
            args = None
        else:
            validate(operation, inputs, kwargs)  # an unknown keyword: raises, naming it
            args = spec.map_arguments(inputs, kwargs)
        try:
            idx = plan.cuda_index
            if _profiling():  # a torch profiler is recording: name the range after the kernel that runs
                with torch.profiler.record_function(f"layerzero::{spec.kernel_id}"):
                    out = _run_on_device(-1 if idx is None else idx, spec, inputs, kwargs, args)
            elif idx is not None and (idx < 0 or _cuda_device() != idx):
                out = _run_on_device(idx, spec, inputs, kwargs, args)
            elif args is None:
                out = spec.impl(**inputs, **kwargs)
            else:
                out = spec.impl(**args)
            if self._check_outputs:
                problem = expected_output_check(operation, inputs, out)
                if problem is not None:
                    raise KernelExecutionError(spec.kernel_id, problem)
        except Exception as exc:  # noqa: BLE001 - any kernel failure goes to the fallback path
            result = self._recover(plan, operation, inputs, kwargs, t0, t1, hit, [(spec.kernel_id, exc)])
            return result if want_result else result.output
        if self._verifier is not None:
            if not hit:
                if key is not None and self._verify_first:
                    why = self._verifier.check_now(operation, spec, inputs, kwargs, out)
                    if why is not None:
                        plan = self._demote(key, plan, operation, why)
                        return self._run_plan(plan, False, operation, inputs, kwargs, t0, want_result, key)
            elif self._sample_every:
                self._countdown -= 1
                if self._countdown <= 0:
                    self._countdown = self._sample_every
                    self._sample(key, plan, operation, inputs, kwargs, out)
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
        validate(operation, inputs, kwargs)  # the caller's mistakes never reach a kernel or a breaker
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

    def _run_forced(self, kernel: str, operation: str, inputs: Mapping[str, Any], context: SelectionContext | None,
                    kwargs: Mapping[str, Any], t0: int, want_result: bool) -> Any:
        """A call inside ``use_kernels``: that kernel (its reference as the fallback), or an error saying why
        it cannot run this call. Not cached: the block is scoped, the cache is not."""
        validate(operation, inputs, kwargs)
        spec = self.kernel_registry.get(kernel)
        ctx = context if context is not None else SelectionContext.from_inputs(operation, inputs, **kwargs)
        reasons = spec.check(ctx.replace(operation=operation), self.backend_registry)
        if reasons:
            raise NoKernelAvailableError(operation, [(spec.kernel_id, reasons)], ctx)
        ref = self.kernel_registry.reference_for(operation)
        kernels = (spec,) if ref is None or ref is spec else (spec, ref)
        return self._run_plan(Plan(operation, kernels, ctx), True, operation, inputs, kwargs, t0, want_result)

    def _caller_fault(self, operation: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any],
                      exc: BaseException) -> InvalidInputError | None:
        """The input's fault, not the kernel's: the call breaks the operation's contract, or the fp32
        reference raises on it too. Then no breaker or telemetry counts it and the caller gets the error."""
        if isinstance(exc, InvalidInputError):
            return exc
        found = input_problems(operation, inputs, kwargs)
        if found:
            return InvalidInputError(operation, found)
        if isinstance(exc, (torch.OutOfMemoryError, KernelExecutionError)):
            return None
        ref = self.kernel_registry.reference_for(operation)
        if ref is None:
            return None
        try:
            with torch.no_grad():
                ref.impl(**ref.map_arguments(inputs, kwargs))
        except torch.OutOfMemoryError:
            return None
        except Exception as ref_exc:  # noqa: BLE001 - the reference's verdict on this input
            return InvalidInputError(operation, [("inputs", "(see below)", f"{type(exc).__name__}: {exc}")],
                                     cause=ref_exc)
        return None

    def _demote(self, key: Any, plan: Plan, operation: str, why: str) -> Plan:
        """A verification failed: the bucket's plan loses its first kernel (the next one serves the call and
        the bucket), the kernel's breaker records a failure and a warning says why."""
        spec = plan.kernels[0]
        _verify_log.warning(
            "kernel %s gave a wrong result for %s (%s); the next kernel of the plan (%s) serves this shape "
            "bucket from now on", spec.kernel_id, operation, why,
            plan.kernels[1].kernel_id if len(plan.kernels) > 1 else "none")
        exc = KernelExecutionError(spec.kernel_id, f"verification against the fp32 reference failed: {why}")
        if self.circuits is not None:
            self.circuits.get_circuit(plan.circuit_keys[0]).record_failure(exc)
        if self.telemetry is not None:
            self.telemetry.record_failure(operation, spec.kernel_id, exc)
        if len(plan.kernels) < 2:
            raise exc
        demoted = Plan(plan.operation, plan.kernels[1:], plan.context)
        object.__setattr__(plan, "superseded", True)
        state = self._state
        if key is not None and state.engine.lookup(key) is plan:
            state.engine.store(key, demoted)
        return demoted

    def _sample(self, key: Any, plan: Plan, operation: str, inputs: Mapping[str, Any],
                kwargs: Mapping[str, Any], out: Any) -> None:
        """A sampled verification of a cached call (see :mod:`layerzero.dispatch.verify`)."""
        verifier = self._verifier
        for failed_key, failed_plan, op, why in verifier.poll():
            self._demote(failed_key, failed_plan, op, why)
        why = verifier.sample(key, plan, operation, inputs, kwargs, out)
        if why is not None:
            self._demote(key, plan, operation, why)

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
        if attempts:
            caller = self._caller_fault(operation, inputs, kwargs, attempts[0][1])
            if caller is not None:
                raise caller from attempts[0][1]
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
                idx = plan.cuda_index
                if idx is not None:
                    out = _run_on_device(idx, spec, inputs, kwargs, spec.map_arguments(inputs, kwargs))
                else:
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


def _run_on_device(index: int, spec: "KernelSpec", inputs: Mapping[str, Any], kwargs: Mapping[str, Any],
                   args: Mapping[str, Any] | None) -> Any:
    """Run a kernel with the GPU its tensors live on made current. The tensors decide (a plan made for an
    explicit context may name another device than the tensors hold, or none); tensors off CUDA need no
    guard."""
    call_args = {**inputs, **kwargs} if args is None else args
    first = next((t for t in inputs.values() if isinstance(t, torch.Tensor)), None)
    if first is None or first.device.type != "cuda":
        return spec.impl(**call_args)
    target = first.device.index if first.device.index is not None else index
    if target is None or target < 0 or target == _cuda_device():
        return spec.impl(**call_args)
    with torch.cuda.device(target):
        return spec.impl(**call_args)


__all__ = ["PlannedDispatcher", "SelectionState", "expected_output_check", "DispatchMode"]
