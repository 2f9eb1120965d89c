"""Run every candidate kernel of one call on the same inputs: timings (median, p10, p90) and error vs fp32.

Shared by ``layerzero bench`` and ``layerzero_hf.compare`` so the numbers in a notebook and in a CLI
report are produced the same way. Timing goes through :func:`layerzero.tuning.measure.measure` (the
maintained harness for the device, with a noise check: ``spread`` is IQR / median and ``noisy`` flags a
row whose median should not be compared with another's). The error oracle is the operation's reference kernel run on fp32 copies of the inputs, so the error column
shows what a kernel loses against exact fp32 math, not against another low-precision kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from layerzero.operations import find, get
from layerzero.operations.base import describe_first_tensor
from layerzero.tuning.measure import conformance_problem, max_error, measure, percentile

# The plain-PyTorch kernel of each operation: what a model runs without LayerZero (Transformers' "sdpa"
# attention, eager RoPE / activations). ``speedup_vs_torch`` is measured against these.
TORCH_BASELINES: dict[str, str] = {
    "attention": "torch_sdpa_attention",
    "rms_norm": "torch_rms_norm",
    "layer_norm": "torch_layer_norm",
    "rope": "torch_rope",
    "swiglu": "torch_swiglu",
    "geglu": "torch_geglu",
}

COLUMNS: tuple[str, ...] = (
    "operation",
    "shape",
    "kernel_id",
    "backend",
    "status",
    "chosen",
    "median_us",
    "p10_us",
    "p90_us",
    "spread",
    "noisy",
    "speedup_vs_reference",
    "speedup_vs_torch",
    "max_error",
    "ok",
    "calls",
    "error",
)


def baseline_for(operation: str) -> str | None:
    op = find(operation)
    return TORCH_BASELINES.get(op.family if op is not None else operation)


@dataclass
class Candidate:
    """A kernel to measure and why it is in the list: "chosen", "eligible" (a fallback), "requested"
    (named by the caller) or "reference" (timed for the speedup column)."""

    spec: Any
    status: str
    blocked: str | None = None  # why selection would not run it (requested kernels only)


def describe_call(operation: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any]) -> str:
    """A short, stable description of a call's shapes and flags (the ``shape`` column)."""
    tensors = [(k, v) for k, v in inputs.items() if isinstance(v, torch.Tensor)]
    dtype = str(tensors[0][1].dtype).removeprefix("torch.") if tensors else "?"
    op = find(operation)
    parts = op.describe_inputs(inputs) if op is not None else describe_first_tensor(inputs)
    flags = []
    for name in ("is_causal", "interleaved"):
        if kwargs.get(name):
            flags.append(name.removeprefix("is_"))
    for name in ("sliding_window", "softcap", "casting"):
        if kwargs.get(name) is not None:
            flags.append(f"{name}={kwargs[name]}")
    for name in ("attn_mask", "sinks", "residual"):
        if kwargs.get(name) is not None or inputs.get(name) is not None:
            flags.append(name)
    return " ".join(p for p in parts if p) + f" {dtype}" + (f" [{', '.join(flags)}]" if flags else "")


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().float()
    return value


def fp32_call(inputs: Mapping[str, Any], kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of a call's arguments with every floating tensor in fp32 (masks and flags unchanged)."""
    return {k: _to_fp32(v) for k, v in inputs.items()}, {k: _to_fp32(v) for k, v in kwargs.items()}


__all__ = ["COLUMNS", "Call", "Candidate", "call_from_shape", "measure_call", "measure_calls", "percentile"]


def _device_of(inputs: Mapping[str, Any]) -> torch.device:
    for v in inputs.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def _dtype_of(inputs: Mapping[str, Any]) -> torch.dtype:
    for v in inputs.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.dtype
    return torch.float32


def measure_call(
    operation: str,
    inputs: Mapping[str, Any],
    kwargs: Mapping[str, Any],
    candidates: Iterable[Candidate],
    reference: Any | None,
    *,
    warmup: int = 2,
    repeats: int = 10,
    calls: int = 1,
    on_kernel: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per candidate (see :data:`COLUMNS`). A kernel that raises or cannot run gets a row with
    NaN timings and the reason in ``error`` rather than aborting the comparison."""
    device, dtype = _device_of(inputs), _dtype_of(inputs)
    ref_out = None
    if reference is not None:
        ref_inputs, ref_kwargs = fp32_call(inputs, kwargs)
        try:
            ref_out = reference.impl(**reference.map_arguments(ref_inputs, ref_kwargs))
        except Exception:  # noqa: BLE001 - e.g. out of memory at a huge shape: errors stay unknown (NaN)
            ref_out = None
    shape = describe_call(operation, inputs, kwargs)
    rows: list[dict[str, Any]] = []
    for cand in candidates:
        rows.append(_measure_one(cand, operation, shape, inputs, kwargs, ref_out, device, dtype, warmup, repeats,
                                 calls))
        if on_kernel is not None:
            on_kernel(cand.spec.kernel_id)
    _fill_speedups(rows, operation)
    return rows


def _measure_one(cand: Candidate, operation: str, shape: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any],
                 ref_out: Any, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int,
                 calls: int) -> dict[str, Any]:
    spec = cand.spec
    row: dict[str, Any] = dict.fromkeys(COLUMNS, None)
    row.update(operation=operation, shape=shape, kernel_id=spec.kernel_id, backend=spec.backend,
               status=cand.status, chosen=cand.status == "chosen", calls=calls, ok=False,
               median_us=math.nan, p10_us=math.nan, p90_us=math.nan, spread=math.nan, noisy=False,
               max_error=math.nan,
               speedup_vs_reference=math.nan, speedup_vs_torch=math.nan)
    if cand.blocked:
        row["error"] = f"cannot run: {cand.blocked}"
        return row
    args = spec.map_arguments(inputs, kwargs)
    try:
        impl = spec.impl
        out = impl(**args)
    except Exception as e:  # noqa: BLE001 - a failing kernel is a result, not a crash
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    if ref_out is not None:
        row["max_error"] = max_error(out, ref_out)
        problem = conformance_problem(out, ref_out, dtype)
        row["ok"] = problem is None
        if problem is not None:
            row["error"] = problem
    else:
        row["ok"] = True
    timing = measure(lambda: impl(**args), device, warmup=warmup, repeats=repeats)
    row.update(median_us=timing.median_us, p10_us=timing.p10_us, p90_us=timing.p90_us, spread=timing.spread,
               noisy=timing.noisy)
    return row


def _fill_speedups(rows: list[dict[str, Any]], operation: str) -> None:
    def median_of(pred: Callable[[dict[str, Any]], bool]) -> float:
        for r in rows:
            if pred(r) and not math.isnan(r["median_us"]):
                return r["median_us"]
        return math.nan

    ref_t = median_of(lambda r: r["kernel_id"].startswith("reference_") or r["status"] == "reference")
    base_id = baseline_for(operation)
    torch_t = median_of(lambda r: r["kernel_id"] == base_id)
    for r in rows:
        t = r["median_us"]
        if t and not math.isnan(t):
            r["speedup_vs_reference"] = ref_t / t if not math.isnan(ref_t) else math.nan
            r["speedup_vs_torch"] = torch_t / t if not math.isnan(torch_t) else math.nan


def candidates_from_explanation(explanation: Any, registry: Any) -> list[Candidate]:
    """The chosen kernel and every eligible fallback, in selection order."""
    out = []
    for c in explanation.candidates:
        if c.status in ("chosen", "eligible"):
            out.append(Candidate(registry.get(c.kernel_id), c.status))
    return out


def requested_candidates(
    kernel_ids: Iterable[str], operation: str, context: Any, chosen: str | None, registry: Any, backends: Any
) -> list[Candidate]:
    """Kernels named by the caller that serve ``operation``, whatever the policy says. A kernel whose
    backend or constraints rule it out for this call carries the reasons and is reported, not run: its
    constraints say the result would be wrong or the call would crash."""
    out = []
    for kid in kernel_ids:
        spec = registry.get(kid)
        if not spec.serves(operation):
            continue
        reasons = spec.check(context, backends)
        status = "chosen" if spec.kernel_id == chosen else "requested"
        out.append(Candidate(spec, status, blocked="; ".join(reasons) if reasons else None))
    return out


def with_reference(candidates: list[Candidate], reference: Any | None) -> list[Candidate]:
    """Make sure the reference kernel is timed (the speedup column's denominator), last."""
    if reference is None or any(c.spec.kernel_id == reference.kernel_id for c in candidates):
        return candidates
    return [*candidates, Candidate(reference, "reference")]


@dataclass
class Call:
    """One operation call to compare kernels on; ``calls`` is how often it occurred (a model's forward)."""

    operation: str
    inputs: dict[str, Any]
    kwargs: dict[str, Any]
    calls: int = 1


def call_from_shape(shape: Any, device: torch.device) -> Call:
    """A :class:`~layerzero.tuning.sweep.TuneShape` materialised as random inputs, attention causal by name."""
    inputs, kwargs = shape.inputs(device)
    kwargs = {**get(shape.operation).call_defaults(), **kwargs}
    return Call(shape.operation, inputs, kwargs)


def measure_calls(
    calls: Sequence[Call],
    orchestrator: Any,
    *,
    kernels: Sequence[str] | None = None,
    warmup: int = 2,
    repeats: int = 10,
    progress: bool = True,
    desc: str = "kernels",
) -> list[dict[str, Any]]:
    """Rows for every call x kernel: the kernels ``orchestrator`` would run (chosen + eligible), or the
    ``kernels`` named; the reference is always timed too. Shows a tqdm bar when the run takes a while."""
    from layerzero.context.call_context import SelectionContext

    registry = orchestrator.kernel_registry
    backends = orchestrator.backend_registry
    plans = []
    for call in calls:
        ctx = SelectionContext.from_inputs(call.operation, call.inputs, **call.kwargs)
        explanation = orchestrator.explain(call.operation, ctx)
        if kernels:
            cands = requested_candidates(kernels, call.operation, explanation.context, explanation.chosen,
                                         registry, backends)
        else:
            cands = candidates_from_explanation(explanation, registry)
        ref = registry.reference_for(call.operation)
        plans.append((call, with_reference(cands, ref), ref))
    total = sum(len(c) for _, c, _ in plans)
    bar = _progress_bar(total, desc) if progress else None
    rows: list[dict[str, Any]] = []
    try:
        for call, cands, ref in plans:
            def tick(kid: str, call: Call = call) -> None:
                if bar is not None:
                    bar.set_postfix_str(f"{call.operation}: {kid}", refresh=False)
                    bar.update(1)

            rows.extend(measure_call(call.operation, call.inputs, call.kwargs, cands, ref, warmup=warmup,
                                     repeats=repeats, calls=call.calls, on_kernel=tick))
    finally:
        if bar is not None:
            bar.close()
    return rows


def _progress_bar(total: int, desc: str) -> Any:
    """A bar that appears only if the run lasts more than two seconds (quiet for quick runs)."""
    from layerzero.tuning.progress import progress_bar

    return progress_bar(total, desc, "kernel", delay=2.0, leave=False)
