"""Timing and conformance checks used by autotuning, ``layerzero bench``/``tune`` and ``compare()``.

Timing goes through maintained harnesses rather than a hand-rolled loop, and always reports how much
the samples spread, because a single median from a shared machine can be off by 100x (two runs of the
same call seconds apart once read 78 us and 7,995 us) and must not be read as a speed-up:

* CPU: ``torch.utils.benchmark.Timer.adaptive_autorange`` (blocks of calls sized so timer overhead is
  negligible, repeated until the IQR is small or the time budget is spent), at the process's own thread
  count so the numbers match what the model sees;
* CUDA with Triton installed: ``triton.testing.do_bench`` (L2 flushed between calls, quantiles);
* CUDA without Triton: CUDA events on the current stream, one sample per call.

Every :class:`Timing` carries its spread, ``IQR / median``; above :data:`NOISE_THRESHOLD` it is flagged
``noisy`` (tables, plots and JSON show the flag).

On CUDA a kernel has two costs: its device time and the host time it takes to *issue* it (argument
checks, allocations, Triton's launcher: tens of microseconds). A decode step of a small model issues
hundreds of tiny kernels and is host-bound, so there the issue time is what a kernel costs; measured on an
H200 host at Gemma-2-2B's decode GeGLU, Triton's kernel took 5 us of device time but 23 us to issue,
``F.gelu`` + ``mul`` 8 us and 16 us. :func:`time_kernels` therefore also measures ``host_us``
(:func:`issue_time`: calls issued back to back, no synchronisation) for calls short enough for it to
matter, and :attr:`Timing.cost_us` — what rankings use — is the larger of the two: a call costs whichever
of host and device is the bottleneck.

Conformance: a kernel's output is compared with the fp32 reference under a per-dtype tolerance relative to
the reference's magnitude, so a fast but wrong kernel can never be chosen.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import torch

from layerzero.tuning.cost_bucket import call_cost

# A measurement whose interquartile range exceeds this fraction of its median is flagged noisy: on a
# quiet machine the IQR of these harnesses is a few percent; 20% means something else was running.
NOISE_THRESHOLD = 0.2
# Issue time is measured only for calls whose device time is below this (microseconds): a longer kernel
# keeps the GPU busy while the host issues the next ones, so its host cost never decides.
HOST_RELEVANT_US = 500.0
# CPU time budget per measurement (seconds): ``repeats`` calls' worth, within these bounds.
MIN_CPU_RUN_S = 0.1
MAX_CPU_RUN_S = 1.0

# max |out - ref| <= TOL[dtype] * max(1, max |ref|)
TOLERANCES: dict[torch.dtype, float] = {
    torch.float32: 1e-4,
    torch.float64: 1e-8,
    torch.float16: 1e-2,
    torch.bfloat16: 4e-2,
}


def _tensors(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def max_error(out: Any, ref: Any) -> float:
    """Largest absolute difference over all output tensors (inf on a shape mismatch or NaN)."""
    worst = 0.0
    for o, r in zip(_tensors(out), _tensors(ref), strict=False):
        if o.shape != r.shape:
            return float("inf")
        d = (o.float() - r.float()).abs().max().item() if o.numel() else 0.0
        if d != d:  # NaN
            return float("inf")
        worst = max(worst, d)
    return worst


def conformance_problem(out: Any, ref: Any, dtype: torch.dtype) -> str | None:
    """Why ``out`` does not match the reference within the dtype's tolerance, or None."""
    outs, refs = _tensors(out), _tensors(ref)
    if len(outs) != len(refs):
        return f"returned {len(outs)} tensors, reference {len(refs)}"
    tol = TOLERANCES.get(dtype, 4e-2)
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.shape != r.shape:
            return f"output {i} shape {tuple(o.shape)} != reference {tuple(r.shape)}"
        scale = max(1.0, r.float().abs().max().item() if r.numel() else 0.0)
        err = max_error(o, r)
        if not err <= tol * scale:
            return f"output {i} max error {err:.3g} > {tol * scale:.3g} ({dtype})"
    return None


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); NaN for no samples."""
    if not samples:
        return math.nan
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Timing:
    """One measurement in microseconds per call. ``spread`` is IQR / median; ``noisy`` says it exceeds
    :data:`NOISE_THRESHOLD`, i.e. the median should not be compared with another kernel's."""

    median_us: float
    p10_us: float
    p25_us: float
    p75_us: float
    p90_us: float
    timer: str
    samples: tuple[float, ...] = field(default=(), repr=False)  # per-call microseconds (block means on CPU)
    host_us: float | None = None  # CUDA: host time to issue one call (:func:`issue_time`), when measured

    @property
    def cost_us(self) -> float:
        """What one call costs in a sequence of calls (:func:`~layerzero.tuning.cost_bucket.call_cost`)."""
        return call_cost(self.median_us, self.host_us)

    @property
    def uncertain(self) -> bool:
        """Noisy where it matters: the device time is noisy and decides the cost (no issue time at or
        above the slow end, p90, of the device times)."""
        return self.noisy and not (self.host_us is not None and self.host_us >= self.p90_us)

    @property
    def spread(self) -> float:
        if not self.median_us or math.isnan(self.median_us):
            return math.nan
        return (self.p75_us - self.p25_us) / self.median_us

    @property
    def noisy(self) -> bool:
        if self.samples and len(self.samples) < 4:
            return True  # too few samples to know the spread: do not trust the median either
        return not math.isnan(self.spread) and self.spread > NOISE_THRESHOLD

    def as_dict(self) -> dict[str, Any]:
        return {"median_us": self.median_us, "p10_us": self.p10_us, "p90_us": self.p90_us, "spread": self.spread,
                "noisy": self.noisy, "timer": self.timer, "host_us": self.host_us}

    @classmethod
    def from_samples(cls, samples_us: Sequence[float], timer: str) -> "Timing":
        xs = tuple(float(x) for x in samples_us)
        return cls(statistics.median(xs), percentile(xs, 10), percentile(xs, 25), percentile(xs, 75),
                   percentile(xs, 90), timer, xs)


def _triton_do_bench() -> Callable[..., Any] | None:
    try:
        from triton.testing import do_bench
    except Exception:  # noqa: BLE001 - not installed, or a broken install: fall back to CUDA events
        return None
    return do_bench


def timer_name(device: torch.device | str) -> str:
    """Which harness :func:`measure` uses on ``device`` (shown in reports)."""
    if torch.device(device).type == "cuda":
        return "triton.testing.do_bench" if _triton_do_bench() is not None else "cuda events"
    return "torch.utils.benchmark.Timer"


def measure(fn: Callable[[], Any], device: torch.device | str, warmup: int = 3, repeats: int = 10) -> Timing:
    """Time ``fn()`` on ``device`` with the maintained harness for it; ``repeats`` is the minimum number of
    samples worth of time to spend (harnesses take more when calls are short)."""
    dev = torch.device(device)
    for _ in range(max(0, warmup)):
        fn()
    if dev.type == "cuda":
        do_bench = _triton_do_bench()
        if do_bench is not None:
            return _measure_do_bench(do_bench, fn, dev, repeats)
        return _measure_cuda_events(fn, dev, repeats)
    return _measure_cpu(fn, repeats)


def _measure_cpu(fn: Callable[[], Any], repeats: int) -> Timing:
    from torch.utils.benchmark import Timer

    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    # blocked_autorange sizes blocks so timer overhead is <0.01% (~10 ms blocks for short calls): a budget of
    # MIN_CPU_RUN_S gives about ten blocks, enough for an IQR; long calls get ``repeats`` blocks of one call.
    min_run = min(MAX_CPU_RUN_S, max(MIN_CPU_RUN_S, one * max(5, repeats)))
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run)
    timing = Timing.from_samples([t * 1e6 for t in m.times], timer_name("cpu"))
    if timing.noisy and min_run * 3 <= MAX_CPU_RUN_S:
        # A burst of load from another process: keep sampling until the IQR settles or the budget is spent,
        # so a disturbance costs a little time instead of a wrong median.
        m = timer.adaptive_autorange(threshold=NOISE_THRESHOLD / 2, min_run_time=min_run,
                                     max_run_time=min(MAX_CPU_RUN_S, min_run * 3))
        timing = Timing.from_samples([t * 1e6 for t in m.times], timer_name("cpu"))
    return timing


def _measure_do_bench(do_bench: Callable[..., Any], fn: Callable[[], Any], device: torch.device,
                      repeats: int) -> Timing:
    with torch.cuda.device(device):
        q = do_bench(fn, warmup=10, rep=max(20, repeats), quantiles=[0.1, 0.25, 0.5, 0.75, 0.9])
    p10, p25, p50, p75, p90 = (float(v) * 1000.0 for v in q)  # ms -> us
    return Timing(p50, p10, p25, p75, p90, "triton.testing.do_bench")


def _measure_cuda_events(fn: Callable[[], Any], device: torch.device, repeats: int) -> Timing:
    torch.cuda.synchronize(device)
    times = []
    for _ in range(max(5, repeats)):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return Timing.from_samples(times, "cuda events")


def back_to_back_us(fn: Callable[[], Any], device: torch.device | str, calls: int, trials: int
                    ) -> list[tuple[float, float]]:
    """Per trial, ``(issue_us, total_us)`` per call of ``calls`` calls of ``fn()`` made back to back without
    synchronising: the host time to issue them, and the time until the device has also finished them (about
    ``max(issue, device)`` per call). One warm-up call first; the device catches up between trials."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    out = []
    fn()
    sync()
    for _ in range(max(1, trials)):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        issued = time.perf_counter()
        sync()
        done = time.perf_counter()
        out.append(((issued - start) / calls * 1e6, (done - start) / calls * 1e6))
    return out


def issue_time(fn: Callable[[], Any], device: torch.device | str, calls: int = 50, trials: int = 7) -> float | None:
    """Host microseconds to issue one ``fn()`` on CUDA: the fastest of ``trials`` runs of ``calls`` calls
    made back to back without synchronising (:func:`back_to_back_us`). ``calls`` stays far below the launch
    queue's depth, so the host never waits for the device and this is pure host time. The fastest run, not
    the median: other processes on the host only ever add to it, and two kernels are compared by what
    issuing them costs, not by what else ran. None on a CPU, where :func:`measure` already times the host."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    with torch.cuda.device(dev):
        return min(issue for issue, _ in back_to_back_us(fn, dev, calls, trials))


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median microseconds per call (:func:`measure`'s median; the AUTOTUNE dispatcher's timer)."""
    return measure(fn, device, warmup=warmup, repeats=repeats).median_us


def unsafe_to_time() -> str | None:
    """Why timing now would be wrong (inside CUDA-graph capture or torch.compile tracing), or None."""
    try:
        if torch.compiler.is_compiling():
            return "inside torch.compile tracing"
    except Exception:
        pass
    if torch.cuda.is_available():
        try:
            if torch.cuda.is_current_stream_capturing():
                return "inside CUDA graph capture"
        except Exception:
            pass
    return None


Timer = Callable[..., Timing]


def measure_stable(
    fn: Callable[[], Any],
    device: torch.device | str,
    *,
    max_spread: float = NOISE_THRESHOLD,
    attempts: int = 3,
    warmup: int = 3,
    repeats: int = 10,
    timer: Timer | None = None,
) -> tuple[Timing | None, str | None]:
    """A measurement fit to be written into a cost table: re-measured up to ``attempts`` times while its
    spread (IQR / median) exceeds ``max_spread``; returns ``(timing, None)`` for the first steady one, else
    ``(None, note)`` saying why it was dropped. A table that records a noisy median would rank kernels by
    whatever else ran on the machine. ``timer`` defaults to :func:`measure` (tests inject a fake)."""
    run = timer if timer is not None else measure
    spreads: list[str] = []
    for _ in range(max(1, attempts)):
        timing = run(fn, device, warmup=warmup, repeats=repeats)
        spread = timing.spread
        if math.isfinite(timing.median_us) and timing.median_us > 0 and math.isfinite(spread) \
                and spread <= max_spread and not (timing.samples and len(timing.samples) < 4):
            return timing, None
        spreads.append("nan" if not math.isfinite(spread) else f"{spread:.2f}")
    return None, (f"dropped: spread (IQR/median) {', '.join(spreads)} over {len(spreads)} attempts exceeds "
                  f"{max_spread:.2f}")


def eligible_kernels(operation: str, context: Any, registry: Any = None, backends: Any = None
                     ) -> tuple[list[Any], Any]:
    """The kernels that can run a call (backend available, constraints hold), without the reference
    kernel unless it is the only one (it is the oracle, never what a tuned model should run), and the
    reference kernel itself."""
    from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

    registry = registry if registry is not None else get_global_kernel_registry()
    backends = backends if backends is not None else get_global_backend_registry()
    specs = [s for s in registry.get_by_operation(operation) if not s.check(context, backends)]
    if len(specs) > 1:
        specs = [s for s in specs if not s.is_reference]
    return specs, registry.reference_for(operation)


def fp32_reference(reference: Any, inputs: Mapping[str, Any], kwargs: Mapping[str, Any]) -> Any:
    """The reference kernel's output on fp32 copies of the arguments, or None when there is no reference
    or it fails (e.g. out of memory at a huge shape: timings then go unchecked)."""
    if reference is None:
        return None

    def cast(values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v.detach().float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in values.items()}

    try:
        return reference.impl(**reference.map_arguments(cast(inputs), cast(kwargs)))
    except Exception:  # noqa: BLE001 - no oracle for this call
        return None


def _with_issue_time(fn: Callable[[], Any], device: torch.device, timing: Timing | None, timer: Timer | None,
                     host_timer: Callable[[Callable[[], Any], torch.device], float | None], repeats: int,
                     keep_noisy: bool = False) -> Timing | None:
    """``timing`` with its issue time where the call is short enough for that to matter (CUDA).

    A call whose device time never held still (``timing`` None) is measured once more and kept when that
    noise cannot matter — it is host-bound: its issue time exceeds even the slow end (p90) of its device
    times — or, with ``keep_noisy``, kept anyway, flagged :attr:`Timing.uncertain` (a ranking then uses it
    only where the order does not depend on the noise)."""
    cuda = device.type == "cuda"
    if timing is None:
        timing = (timer or measure)(fn, device, warmup=1, repeats=repeats)
        host = host_timer(fn, device) if cuda and timing.median_us < HOST_RELEVANT_US else None
        if host is not None:
            timing = replace(timing, host_us=host)
        return timing if keep_noisy or not timing.uncertain else None
    if not cuda or timing.median_us >= HOST_RELEVANT_US:
        return timing
    host = host_timer(fn, device)
    return timing if host is None else replace(timing, host_us=host)


def time_kernels(specs: Sequence[Any], inputs: Mapping[str, Any], kwargs: Mapping[str, Any], expected: Any, *,
                 timer: Timer | None = None, attempts: int = 3, repeats: int = 10,
                 host_timer: Callable[[Callable[[], Any], torch.device], float | None] | None = None,
                 sequence: Sequence[Mapping[str, Any]] | None = None, keep_noisy: bool = False,
                 ) -> tuple[dict[str, Timing], dict[str, str]]:
    """Steady timings of each kernel on one call's arguments; a kernel that raises, disagrees with
    ``expected`` (when given) or never measures steadily gets a note instead. On CUDA, a timing below
    :data:`HOST_RELEVANT_US` also gets its issue time (``host_timer``, default :func:`issue_time`), so
    :attr:`Timing.cost_us` ranks host-bound calls by what they really cost.

    ``sequence``: the inputs of consecutive calls as a model makes them (decode: the key length grows by
    one per step), timed in turn, so a kernel that pays per new shape (a recompile, a rebuilt plan) pays
    it here too; ``expected`` is the output for ``inputs``, which the check uses.

    ``keep_noisy``: a timing that never held still is kept, flagged :attr:`Timing.uncertain`, instead of
    dropped (a cost table records the flag; a ranking uses it only where it is decisive)."""
    host_timer = host_timer if host_timer is not None else issue_time
    tensors = [v for v in inputs.values() if isinstance(v, torch.Tensor)]
    dtype, device = tensors[0].dtype, tensors[0].device
    times: dict[str, Timing] = {}
    notes: dict[str, str] = {}
    for spec in specs:
        impl = spec.impl
        arg_sets = [spec.map_arguments(i, kwargs) for i in (sequence or (inputs,))]
        if len(arg_sets) == 1:
            fn = (lambda impl=impl, args=arg_sets[0]: impl(**args))
        else:
            fn = (lambda impl=impl, step=itertools.cycle(arg_sets).__next__: impl(**step()))
        try:
            out = impl(**spec.map_arguments(inputs, kwargs))
            problem = conformance_problem(out, expected, dtype) if expected is not None else None
            timing, note = (None, f"not recorded, {problem}") if problem else measure_stable(
                fn, device, attempts=attempts, repeats=repeats, timer=timer)
            if not problem:
                timing = _with_issue_time(fn, device, timing, timer, host_timer, repeats, keep_noisy)
                if timing is not None and timing.uncertain:
                    notes[spec.kernel_id] = f"{note}; kept, flagged noisy (ranked only where decisive)"
        except Exception as e:  # noqa: BLE001 - a kernel failing here (or out of memory while timed) is noted
            timing, note = None, f"raised {type(e).__name__}: {str(e)[:120]}"
        if timing is None:
            notes[spec.kernel_id] = note or "no steady measurement"
        else:
            times[spec.kernel_id] = timing
    return times, notes
