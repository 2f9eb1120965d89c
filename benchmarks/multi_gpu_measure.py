"""Measurement and parity of benchmarks/multi_gpu.py: prefill and decode timing (alternating unpatched and
patched rounds on one model), logits parity against HF's own noise floor, the fp32 deterministic check and
the decode profile. Imported by multi_gpu.py (also inside its tensor-parallel ranks)."""

from __future__ import annotations

import argparse
import gc
import os
import statistics
from typing import Any, Callable

import torch

from e2e import StepClock, profile_decode, time_fn


FP32_TOL = 1e-4


# The deterministic check on GPUs: the same weights upcast to fp32, TF32 off. Two correct fp32 paths then
# differ by accumulation order only (~1e-5 of the logits' scale after a few dozen layers), so a wrong kernel
# or a misplaced tensor shows up orders of magnitude above this bound, where bf16's noise floor hides it.
FP32_GPU_REL_TOL = 1e-3


# ---------------------------------------------------------------------------------------------- helpers
def _sync(device_type: str) -> None:
    """Every GPU for a device map (the model finishes on the last one); only its own GPU for a tensor-parallel
    rank (touching the other GPU would create a second CUDA context in each rank)."""
    if device_type != "cuda":
        return
    if "RANK" in os.environ:
        torch.cuda.synchronize()
        return
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def _median_seconds(fn: Callable[[], Any], device_type: str, warmup: int, repeats: int) -> float:
    return time_fn(fn, device_type, warmup, repeats, sync=lambda: _sync(device_type))


def _ids(shape: tuple[int, int], vocab: int, device: Any, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, shape, generator=g).to(device)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids, use_cache=False).logits
    if hasattr(out, "full_tensor"):  # a DTensor output under tensor parallel
        out = out.full_tensor()
    return out.float().cpu()


def _greedy(model, ids: torch.Tensor, n: int) -> list[list[int]]:
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[:, ids.shape[1]:].tolist()


def measure(model, args: argparse.Namespace, input_device: Any, device_type: str, vocab: int) -> dict[str, Any]:
    """Prefill tokens/s per shape (``use_cache=False``, ``logits_to_keep=1`` so the vocab head does not
    dominate) and decode ms/step of greedy ``generate`` with a dynamic cache (steps 2..N)."""
    from transformers import LogitsProcessorList

    entry: dict[str, Any] = {"prefill_tokens_per_s": {}, "decode_ms_per_step": None}
    for b, s in args.prefill_shapes:
        ids = _ids((b, s), vocab, input_device, seed=b * 1000 + s)

        def run():
            with torch.no_grad():
                model(ids, use_cache=False, logits_to_keep=1)

        try:
            entry["prefill_tokens_per_s"][f"{b}x{s}"] = b * s / _median_seconds(run, device_type, args.warmup,
                                                                               args.repeats)
        except torch.OutOfMemoryError as exc:
            entry["prefill_tokens_per_s"][f"{b}x{s}"] = None
            entry.setdefault("errors", []).append(f"prefill {b}x{s}: out of memory: {str(exc).splitlines()[0]}")
            gc.collect()
            torch.cuda.empty_cache()
    prompt = _ids((1, args.prompt), vocab, input_device, seed=11)
    per_step: list[float] = []
    for i in range(args.repeats + 1):  # the first run warms up
        clock = StepClock(device_type, sync=lambda: _sync(device_type))
        model.generate(prompt, max_new_tokens=args.steps, min_new_tokens=args.steps, do_sample=False, pad_token_id=0,
                       eos_token_id=None, logits_processor=LogitsProcessorList([clock]))
        if i:
            per_step += [b - a for a, b in zip(clock.stamps[1:], clock.stamps[2:])]
    entry["decode_ms_per_step"] = statistics.median(per_step) * 1e3 if per_step else None
    return entry


def compare(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    diff = (other - reference).abs()
    return {"max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
            "top1_agreement": (other.argmax(-1) == reference.argmax(-1)).float().mean().item()}


def verdict(parity: dict[str, float], floor: dict[str, float], dtype: torch.dtype) -> tuple[bool, str]:
    """fp32: within 1e-4. bf16/fp16: within twice the disagreement of HF's own eager and sdpa paths."""
    diff = parity["max_abs_diff"]
    if dtype == torch.float32:
        return diff <= FP32_TOL, f"max abs diff {diff:.3g} vs fp32 tolerance {FP32_TOL:g}"
    bound = 2 * floor["max_abs_diff"]
    return diff <= bound, f"max abs diff {diff:.3g} vs 2 x noise floor (HF eager vs sdpa) {bound:.3g}"


def run_variants(model, args: argparse.Namespace, input_device: Any, device_type: str, vocab: int,
                 dtype: torch.dtype) -> dict[str, Any]:
    """Unpatched (HF sdpa), the noise floor (HF eager), then patched; the model is unpatched on return."""
    import layerzero_hf

    parity_ids = _ids((1, args.parity_len), vocab, input_device, seed=7)
    greedy_ids = _ids((1, args.prompt), vocab, input_device, seed=13)
    out: dict[str, Any] = {}

    model.set_attn_implementation("sdpa")
    reference = _logits(model, parity_ids)
    ref_tokens = _greedy(model, greedy_ids, args.greedy)

    model.set_attn_implementation("eager")
    out["noise_floor_eager_vs_sdpa"] = compare(reference, _logits(model, parity_ids))
    model.set_attn_implementation("sdpa")

    if args.profile:
        out["profile_unpatched"] = profile_decode(model, greedy_ids)
    report = layerzero_hf.patch(model, attention=True)
    try:
        patched_logits = _logits(model, parity_ids)
        tokens = _greedy(model, greedy_ids, args.greedy)
        if args.profile:
            out["profile_patched"] = profile_decode(model, greedy_ids)
        snap = layerzero_hf.model_telemetry(model)["snapshot"]
        orch = layerzero_hf.orchestrator_of(model)
        circuits = getattr(orch, "circuits", None)
        out["patch"] = {
            "patched": report.counts(),
            "skipped": _skip_summary(report),
            "attn_implementation": report.attn_implementation,
            "kernels": {k: v.calls for k, v in sorted(snap.per_kernel.items()) if v.calls},
            "operations": dict(snap.per_operation),
            "failures": snap.failure_count,
            "fallbacks": snap.fallback_count,
            "circuit_keys": sorted(circuits.get_all_stats()) if circuits is not None else [],
        }
    finally:
        layerzero_hf.unpatch(model)
    out.update(timed_rounds(model, args, input_device, device_type, vocab))
    parity = compare(reference, patched_logits)
    same = sum(1 for a, b in zip(ref_tokens[0], tokens[0]) if a == b)
    leading = next((i for i, (a, b) in enumerate(zip(ref_tokens[0], tokens[0])) if a != b), len(tokens[0]))
    parity.update(greedy_tokens=len(tokens[0]), greedy_equal=same, greedy_equal_prefix=leading)
    ok, why = verdict(parity, out["noise_floor_eager_vs_sdpa"], dtype)
    parity.update(passed=ok, criterion=why)
    out["parity_patched_vs_unpatched"] = parity
    if dtype != torch.float32 and args.fp32_check:
        out["fp32_check"] = fp32_check(model, parity_ids, greedy_ids, args.greedy)
    return out


def timed_rounds(model, args: argparse.Namespace, input_device: Any, device_type: str, vocab: int) -> dict[str, Any]:
    """Unpatched and patched timings alternating over ``args.rounds`` rounds (patching is per instance and
    reversible, so both use the same weights and placement): a slow stretch of the host or a GPU clock
    change hits both alike. Speed-ups are the median of the per-round ratios; the variants' own numbers
    are medians over rounds."""
    import layerzero_hf

    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        base = measure(model, args, input_device, device_type, vocab)
        layerzero_hf.patch(model, attention=True)
        try:
            new = measure(model, args, input_device, device_type, vocab)
        finally:
            layerzero_hf.unpatch(model)
        rounds.append({"unpatched": base, "patched": new, "speedup": _speedups(base, new)})

    def med(values: list[Any]) -> Any:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def combine(entries: list[dict[str, Any]]) -> dict[str, Any]:
        keys = entries[0]["prefill_tokens_per_s"]
        return {"prefill_tokens_per_s": {k: med([e["prefill_tokens_per_s"].get(k) for e in entries]) for k in keys},
                "decode_ms_per_step": med([e["decode_ms_per_step"] for e in entries])}

    speedups = [r["speedup"] for r in rounds]
    return {
        "unpatched": combine([r["unpatched"] for r in rounds]),
        "patched": combine([r["patched"] for r in rounds]),
        "speedup": {"prefill": {k: med([sp["prefill"].get(k) for sp in speedups]) for k in speedups[0]["prefill"]},
                    "decode": med([sp["decode"] for sp in speedups])},
        "rounds": speedups,
    }


def fp32_check(model, parity_ids: torch.Tensor, greedy_ids: torch.Tensor, greedy: int) -> dict[str, Any]:
    """The deterministic parity check: the model's weights upcast to fp32 in place (placement and sharding
    kept), TF32 off, logits and greedy tokens unpatched vs patched. With bf16's noise floor at top-1 0.8 a
    greedy comparison says little; in fp32 the two paths must agree to ``FP32_GPU_REL_TOL`` of the logits'
    scale and token for token."""
    import layerzero_hf

    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model.float()
        model.set_attn_implementation("sdpa")
        reference = _logits(model, parity_ids)
        ref_tokens = _greedy(model, greedy_ids, greedy)
        layerzero_hf.patch(model, attention=True)
        try:
            patched = _logits(model, parity_ids)
            tokens = _greedy(model, greedy_ids, greedy)
        finally:
            layerzero_hf.unpatch(model)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    parity = compare(reference, patched)
    scale = reference.abs().max().item()
    bound = FP32_GPU_REL_TOL * max(scale, 1e-6)
    same = sum(1 for a, b in zip(ref_tokens[0], tokens[0]) if a == b)
    parity.update(logit_scale=scale, bound=bound, greedy_tokens=len(tokens[0]), greedy_equal=same,
                  passed=parity["max_abs_diff"] <= bound and same == len(tokens[0]),
                  criterion=f"fp32, TF32 off: max abs diff <= {FP32_GPU_REL_TOL:g} x max |logit| and every "
                            "greedy token equal")
    return parity


def _skip_summary(report) -> dict[str, Any]:
    """Skipped modules grouped by reason (a device map skips dozens for the same one)."""
    by_reason: dict[str, list[str]] = {}
    for s in report.skipped:
        by_reason.setdefault(s.reason, []).append(s.path)
    return {why: {"count": len(paths), "examples": paths[:3]} for why, paths in by_reason.items()}


def _speedups(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    pre = {k: (v / base["prefill_tokens_per_s"][k]) if v and base["prefill_tokens_per_s"].get(k) else None
           for k, v in new["prefill_tokens_per_s"].items()}
    dec = (base["decode_ms_per_step"] / new["decode_ms_per_step"]
           if base.get("decode_ms_per_step") and new.get("decode_ms_per_step") else None)
    return {"prefill": pre, "decode": dec}
