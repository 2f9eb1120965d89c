"""Model-level tuning: measure every eligible kernel at the calls a model really makes, keep the times.

A shipped cost table is measured on synthetic tensors of typical sizes; a model's own calls can differ
(a transposed projection view, half-width RoPE tables, its exact token count). ``tune`` runs the patched
model once on the example inputs (:func:`layerzero_hf.conformance.recording.record_calls` records each
distinct dispatched call with its tensors exactly as passed), times every eligible kernel on those very
arguments (steady measurements only; a kernel whose output disagrees with the fp32 reference is left
out) and stores the times in the local autotune cache under the model's config hash and the device
class. :func:`tuned_ranking` returns the measured ranking that puts them on top of the general tables,
so the next ``patch()`` of a model with the same config on the same kind of device runs the kernels
that measured fastest for it::

    result = layerzero_hf.tune(model, input_ids)
    print(result)                                   # per call: kernels and times, the fastest first
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from layerzero.context.call_context import SelectionContext
from layerzero_hf.model_key import model_key
from layerzero.selection.measured_ranking import MeasuredRanking, measured_ranking_for_device, reset_measured_rankings
from layerzero.tuning.cache import TuningCache, put_costs
from layerzero.tuning.cost_bucket import bucket_cost
from layerzero.tuning.cost_table import CostBucket, bucket_for, device_class
from layerzero.tuning.measure import Timer, eligible_kernels, fp32_reference, time_kernels

__all__ = ["TuneResult", "TunedCall", "model_key", "tune", "tuned_ranking"]

# Config fields that do not change which calls a model makes: names, paths, versions, loader state.


@dataclass
class TunedCall:
    """One distinct call of the model: its bucket and each eligible kernel's time (or why it has none)."""

    operation: str
    bucket: CostBucket
    times_us: dict[str, float]
    notes: dict[str, str] = field(default_factory=dict)
    count: int = 1

    @property
    def fastest(self) -> str | None:
        return min(sorted(self.times_us), key=self.times_us.__getitem__) if self.times_us else None


@dataclass
class TuneResult:
    model_key: str
    device_class: str
    calls: list[TunedCall]
    cache_path: str

    def __str__(self) -> str:
        lines = [f"tuned {self.model_key} on {self.device_class} ({len(self.calls)} calls) -> {self.cache_path}"]
        for c in self.calls:
            ranked = sorted(c.times_us.items(), key=lambda kv: (kv[1], kv[0]))
            times = ", ".join(f"{k} {v:.1f}us" for k, v in ranked) or "no steady measurement"
            lines.append(f"  {c.bucket.label()} x{c.count}: {times}")
            lines.extend(f"    - {k}: {v}" for k, v in sorted(c.notes.items()))
        return "\n".join(lines)


def _split_inputs(example_inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs, None
    if isinstance(example_inputs, Mapping) and isinstance(example_inputs.get("input_ids"), torch.Tensor):
        return example_inputs["input_ids"], example_inputs.get("attention_mask")
    raise TypeError("tune: example_inputs must be input_ids (a tensor) or a mapping with 'input_ids' "
                    f"(and optionally 'attention_mask'), got {type(example_inputs).__name__}")


def tune(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    decode_steps: int = 1,
    cache: TuningCache | str | None = None,
    attempts: int = 3,
    timer: Timer | None = None,
    **patch_kwargs: Any,
) -> TuneResult:
    """Record ``model``'s calls on ``example_inputs`` (input_ids, or ``{"input_ids", "attention_mask"}``)
    through a prefill and ``decode_steps`` decode steps, time every eligible kernel at each distinct call
    on its real arguments, and save the times in the local autotune cache (``cache``: a TuningCache or a
    file path; default: the per-user cache) under :func:`model_key` and the device class. ``timer``
    replaces the timing harness (tests); ``patch_kwargs`` go to the temporary patch while recording."""
    from layerzero_hf.conformance.recording import record_calls

    input_ids, mask = _split_inputs(example_inputs)
    store = cache if isinstance(cache, TuningCache) else TuningCache(cache)
    device = next(model.parameters()).device
    cls, key = device_class(device), model_key(model)
    recorded = record_calls(model, input_ids.to(device), attention_mask=None if mask is None else mask.to(device),
                            decode_steps=decode_steps, keep=1, **patch_kwargs)
    tuned: dict[CostBucket, TunedCall] = {}
    for call in recorded:
        ctx = SelectionContext.from_inputs(call.operation, call.inputs, **call.options)
        bucket = bucket_for(call.operation, ctx)
        if bucket is None:
            continue
        if bucket in tuned:
            tuned[bucket].count += call.count
            continue
        specs, ref = eligible_kernels(call.operation, ctx)
        expected = fp32_reference(ref, call.inputs, call.options)
        timings, notes = time_kernels(specs, call.inputs, call.options, expected, timer=timer, attempts=attempts)
        # device time, or issue time where host-bound (never in a long prefill: bucket_cost)
        times = {k: bucket_cost(bucket, t.median_us, t.host_us) for k, t in timings.items()}
        tuned[bucket] = TunedCall(call.operation, bucket, times, notes, call.count)
        put_costs(store, cls, bucket.key(), times, scope=key, rejected=notes, save=False)
    store.save()
    reset_measured_rankings()  # rankings already built reload their tables and see the new times
    return TuneResult(key, cls, list(tuned.values()), str(store.path))


def tuned_ranking(model: Any, device: Any = None) -> MeasuredRanking:
    """The measured ranking for ``model`` (or its config): the general tables with the model's own tuned
    times on top. ``device`` defaults to the model's parameters' device (CPU for a bare config)."""
    if device is None and isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
        device = param.device if param is not None else None
    return measured_ranking_for_device(device, scope=model_key(model))
