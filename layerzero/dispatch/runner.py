"""The kernel runner: one plan, one call -> the output, under breakers, fallbacks, checks and telemetry.

Every way into a kernel ends here: ``dispatch``/``call`` after the cache lookup, a
:class:`~layerzero.dispatch.bound.BoundCall` with the plan it remembers, a ``use_kernels`` block with its
forced plan. Cache hits take the plan's prepared hit path (:meth:`Runner.hit_path`), which runs the common
case inline and hands everything else to ``run``. Keeping one runner keeps one set of rules:

* the kernel runs with the plan's GPU current (the device guard: Triton, FlashInfer and Liger launch on the
  current device, and a model split over GPUs calls them with tensors on another one);
* a keyword the operation does not take is the caller's error, raised before the kernel runs, and a call
  that breaks the operation's contract never counts against a kernel's breaker;
* the first call of a kernel in a shape bucket is checked against the fp32 reference before it is served,
  and later calls are sampled (:mod:`layerzero.dispatch.verify`); a failed check demotes the kernel;
* a torch profiler that records sees a ``layerzero::<kernel>`` range;
* a kernel that raises while a CUDA graph is being captured fails the call at once: the capture is broken
  (most CUDA errors invalidate it), so neither the reference (the caller-fault check) nor a fallback kernel
  may run on that stream, and the failure belongs to the capture, not to the kernel's breaker. A CUDA-graph
  capture that raised part-way also leaves the default CUDA generator unusable for the rest of the process
  ("Offset increment outside graph capture"), so failing loudly and early is the kind outcome.
"""

from __future__ import annotations

import logging
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import torch

from layerzero.operations import check_outputs
from layerzero.dispatch.types import _NO_TIMING, DispatchConfig, DispatchResult, DispatchTiming
from layerzero.dispatch.callers import OTHER_NAMES, Caller, keyword_caller, unwritten
from layerzero.dispatch.verify import capture_underway
from layerzero.errors import (
    CircuitOpenError,
    FallbackChainExhaustedError,
    InvalidInputError,
    KernelExecutionError,
)
from layerzero.selection.engine import Plan
from layerzero.validation import problems as input_problems
from layerzero.validation import validate

_verify_log = logging.getLogger("layerzero.verify")
_profiling = torch._C._autograd._profiler_enabled  # ~50 ns: profiler ranges cost nothing when none records
if torch.cuda.is_available():
    _cuda_device = torch._C._cuda_getDevice  # the current CUDA device, without the Python wrapper
else:
    def _cuda_device() -> int:
        return -2  # matches no plan: a CUDA plan here holds CPU tensors (explicit contexts), see _run_on_device

if TYPE_CHECKING:
    from layerzero.dispatch.circuit import CircuitBreakerManager
    from layerzero.registry import KernelRegistry, KernelSpec
    from layerzero.telemetry import DispatchTelemetry

__all__ = ["HitPath", "Runner"]

#: ``fn(inputs, kwargs, t0, key, want_result=False)``: a plan's cache hits (:meth:`Runner.hit_path`).
HitPath = Callable[..., Any]


class _NoBreaker:
    """The breaker of a runner without breakers: always healthy, so the hit path reads one attribute
    whether or not breakers are on."""

    healthy = True


_NO_BREAKER = _NoBreaker()


class EngineOwner(Protocol):
    """The runner's view of its dispatcher: the selection engine whose cache a demoted plan is replaced in
    (a protocol, so the dispatcher and its runner do not import each other)."""

    @property
    def engine(self) -> Any: ...

class Runner:
    """Runs plans for one dispatcher (its breakers, telemetry, verifier and config). ``run`` is the whole
    path and ``hit_path`` a plan's prepared path for cache hits, the one hot loops take. Both are kept flat
    on purpose: every attribute lookup and call in them costs ~20-100 ns (slots make the instance's own
    attributes array reads instead of dict lookups)."""

    __slots__ = ("_owner", "config", "kernel_registry", "circuits", "telemetry", "_check_outputs", "_record_timing",
                 "_verify_first", "_sample_every", "_countdown", "_verifier")

    def __init__(
        self,
        owner: "EngineOwner",
        config: DispatchConfig,
        kernel_registry: "KernelRegistry",
        circuits: "CircuitBreakerManager | None",
        telemetry: "DispatchTelemetry | None",
    ):
        self._owner = owner  # whose cache a demoted plan is replaced in
        self.config = config
        self.kernel_registry = kernel_registry
        self.circuits = circuits
        self.telemetry = telemetry
        self._check_outputs = config.check_outputs
        self._record_timing = config.record_timing
        self._verify_first = bool(config.verify_kernels)
        self._sample_every = int(config.verify_sample_every or 0)
        self._countdown = self._sample_every
        self._verifier = None
        if self._verify_first or self._sample_every:
            from layerzero.dispatch.verify import KernelVerifier

            self._verifier = KernelVerifier(kernel_registry, config.verify_max_elements, self._sample_every)

    def run(
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
        """Run the plan's primary kernel under its breaker; on failure walk the fallbacks. ``hit`` False
        (a fresh plan) has the output verified before it is served; ``want_result`` False returns the
        output alone (no DispatchResult)."""
        t1 = perf_counter_ns()
        spec = plan.kernels[0]
        circuit = None
        if self.circuits is not None:
            circuit = self.circuits.existing(plan.circuit_keys[0]) or self.circuits.get_circuit(plan.circuit_keys[0])
            # A healthy breaker (CLOSED, no failure counted) is one attribute read; anything else asks it.
            if not circuit.healthy and not circuit.allow_request():
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
                _check_output(spec, operation, inputs, out)
        except Exception as exc:  # noqa: BLE001 - any kernel failure goes to the fallback path
            if capture_underway():
                raise _capture_failure(spec.kernel_id, operation, exc) from exc
            result = self._recover(plan, operation, inputs, kwargs, t0, t1, hit, [(spec.kernel_id, exc)])
            return result if want_result else result.output
        if self._verifier is not None:
            if not hit:
                if key is not None and self._verify_first:
                    why = self._verifier.check_now(operation, spec, inputs, kwargs, out)
                    if why is not None:
                        plan = self._demote(key, plan, operation, why)
                        return self.run(plan, False, operation, inputs, kwargs, t0, want_result, key)
            elif self._sample_every:
                self._countdown -= 1
                if self._countdown <= 0:
                    self._countdown = self._sample_every
                    self._sample(key, plan, operation, inputs, kwargs, out)
        if circuit is not None and not circuit.healthy:
            circuit.record_success()
        t2 = perf_counter_ns()
        if self.telemetry is not None:
            self.telemetry.record(operation, spec.kernel_id, t2 - t0, hit, False)
        if not want_result:
            return out
        if self._record_timing:
            return DispatchResult(out, spec.kernel_id, DispatchTiming(t2 - t0, t1 - t0, t2 - t1), False, hit, operation)
        return DispatchResult(out, spec.kernel_id, _NO_TIMING, False, hit, operation)

    def hit_path(self, plan: Plan) -> HitPath:
        """``fn(inputs, kwargs, t0, key, want_result=False)``: ``run(plan, True, plan.operation, inputs, kwargs,
        t0, want_result, key)`` for the cache hits of one plan, which bound call sites and calls by name make
        call after call.

        What ``run`` looks up per call and never changes for a plan is looked up here once: the kernel, its
        breaker (breakers are created once per kernel and only ever reset in place), its telemetry recorder,
        the plan's device. The call runs inline while it is the common case (a healthy breaker, keywords the
        kernel takes, its device current, no profiler recording); anything else goes to ``run``, which
        applies every rule, and a kernel failure goes to the same recovery as in ``run``. Made once per plan
        and runner, and kept on the plan (``Plan.prepared``)."""
        prepared = plan.prepared
        if prepared is not None and prepared[0] is self:
            return prepared[1]
        fn = self._make_hit_path(plan)
        object.__setattr__(plan, "prepared", (self, fn))
        return fn

    def _make_hit_path(self, plan: Plan) -> HitPath:
        full = self.run
        operation = plan.operation

        def slow(inputs: Mapping[str, Any], kwargs: Mapping[str, Any], t0: int, key: Any,
                 want_result: bool = False) -> Any:
            return full(plan, True, operation, inputs, kwargs, t0, want_result, key)

        idx = plan.cuda_index
        if self._check_outputs or (idx is not None and idx < 0):
            return slow  # uncommon configurations: not worth a second copy of their rules
        spec = plan.kernels[0]
        try:
            impl = spec.impl  # resolves a lazy import: one that fails is run()'s to report, per call
        except Exception:  # noqa: BLE001
            return slow
        params = spec.parameters
        kernel_id = spec.kernel_id
        circuit = _NO_BREAKER if self.circuits is None else self.circuits.get_circuit(plan.circuit_keys[0])
        record = None if self.telemetry is None else self.telemetry.hit_recorder(operation, kernel_id)
        sampled = self._verifier is not None and self._sample_every > 0
        timed = self._record_timing

        def unpacked(impl: Callable[..., Any], i: Mapping[str, Any], k: Mapping[str, Any]) -> Any:
            """The caller for names no keyword call can spell: checked and unpacked on every call."""
            return impl(**i, **k) if params.issuperset(k) and params.issuperset(i) else OTHER_NAMES

        # Calls the kernel for the argument names of the last call (``callers``); the first call, and any call
        # with other names, goes to run(), which checks them, and the next call gets a caller for them.
        caller: Caller = unwritten

        def hit(inputs: Mapping[str, Any], kwargs: Mapping[str, Any], t0: int, key: Any,
                want_result: bool = False) -> Any:
            nonlocal caller
            if not circuit.healthy or _profiling() or (idx is not None and _cuda_device() != idx):
                return slow(inputs, kwargs, t0, key, want_result)
            t1 = perf_counter_ns() if want_result else t0
            try:
                out = caller(impl, inputs, kwargs)
            except Exception as exc:  # noqa: BLE001 - as in run: any kernel failure goes to the fallback path
                if capture_underway():
                    raise _capture_failure(kernel_id, operation, exc) from exc
                result = self._recover(plan, operation, inputs, kwargs, t0, t1, True, [(kernel_id, exc)])
                return result if want_result else result.output
            if out is OTHER_NAMES:  # the kernel did not run
                if params.issuperset(kwargs) and params.issuperset(inputs):
                    caller = keyword_caller(tuple(inputs), tuple(kwargs)) or unpacked
                return slow(inputs, kwargs, t0, key, want_result)
            if sampled:
                countdown = self._countdown - 1
                self._countdown = countdown
                if countdown <= 0:
                    self._countdown = self._sample_every
                    self._sample(key, plan, operation, inputs, kwargs, out)
            if not circuit.healthy:  # it failed elsewhere meanwhile: this success counts, as in run
                circuit.record_success()
            t2 = perf_counter_ns()
            if record is not None:
                record(t2 - t0)
            if not want_result:
                return out
            timing = DispatchTiming(t2 - t0, t1 - t0, t2 - t1) if timed else _NO_TIMING
            return DispatchResult(out, kernel_id, timing, False, True, operation)

        return hit

    # ------------------------------------------------------------------ failures
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
        engine = self._owner.engine
        if key is not None and engine.lookup(key) is plan:
            engine.store(key, demoted)
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
        ckey = dict(zip((k.kernel_id for k in plan.kernels), plan.circuit_keys))
        for kid, exc in attempts:
            self._failed(operation, ckey.get(kid, kid), kid, exc)
        if not self.config.enable_fallback:
            if attempts:
                raise attempts[0][1]
            raise CircuitOpenError(operation, skipped)
        circuits = self.circuits
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
                args = spec.map_arguments(inputs, kwargs)
                out = spec.impl(**args) if idx is None else _run_on_device(idx, spec, inputs, kwargs, args)
                if self.config.check_outputs:
                    _check_output(spec, operation, inputs, out)
            except Exception as exc:  # noqa: BLE001
                attempts.append((spec.kernel_id, exc))
                self._failed(operation, ckey[spec.kernel_id], spec.kernel_id, exc)
                continue
            if circuits is not None:
                circuits.get_circuit(ckey[spec.kernel_id]).record_success()
            t2 = perf_counter_ns()
            failed = tuple(k for k, _ in attempts) + tuple(skipped)
            if self.telemetry is not None:
                self.telemetry.record(operation, spec.kernel_id, t2 - t0, hit, True, failed)
            return DispatchResult(
                out, spec.kernel_id, DispatchTiming(t2 - t0, t1 - t0, t2 - t1), True, hit, operation, failed
            )
        if not attempts:
            raise CircuitOpenError(operation, skipped)
        raise FallbackChainExhaustedError(operation, attempts)

    def _failed(self, operation: str, circuit_key: str, kernel_id: str, exc: BaseException) -> None:
        if self.circuits is not None:
            self.circuits.get_circuit(circuit_key).record_failure(exc)
        if self.telemetry is not None:
            self.telemetry.record_failure(operation, kernel_id, exc)


def _capture_failure(kernel_id: str, operation: str, exc: BaseException) -> KernelExecutionError:
    return KernelExecutionError(
        kernel_id,
        f"raised during CUDA-graph capture of {operation} ({type(exc).__name__}: {exc}). The capture cannot "
        "continue, so no fallback kernel ran and nothing was counted against the kernel. Capture after an "
        "eager warm-up call with the same shapes (it compiles and selects outside the capture), or pin a "
        "kernel that captures with patch(kernels=...) / use_kernels(...)",
    )


def _check_output(spec: "KernelSpec", operation: str, inputs: Mapping[str, Any], out: Any) -> None:
    problem = check_outputs(operation, inputs, out)
    if problem is not None:
        raise KernelExecutionError(spec.kernel_id, problem)


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
