"""Timing and conformance checks used by autotuning and the benchmarks.

Timing: warm-up calls, then ``repeats`` timed calls; on CUDA with events on the current stream (GPU
time, no host overhead), elsewhere with ``perf_counter_ns``; the median is reported. Conformance: a
kernel's output is compared with the fp32 reference under a per-dtype tolerance relative to the
reference's magnitude, so a fast but wrong kernel can never be chosen.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

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


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median microseconds per call."""
    for _ in range(max(0, warmup)):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = []
        for _ in range(max(1, repeats)):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000.0)
        return statistics.median(times)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    return statistics.median(times)


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
