"""Decode A/B: the LayerZero-patched model vs HF sdpa, alternating in rounds on one model instance.

``benchmarks/e2e.py`` measures each variant once, one after the other; on a shared host two such runs of the
same code disagreed on HF sdpa's decode by 2x (24 vs 46 ms/step for Gemma2-2B) while the patched model's
time held. Here the variants alternate — sdpa, patched, sdpa, patched, ... — so a slow stretch of the host
hits both alike, and the result is the median of per-round ratios. Patching is per instance and reversible,
so both variants use the same weights.

``--cache static``: the static-cache decode, which Transformers compiles (CUDA graphs on a GPU). A compiled
forward belongs to one model instance, so there each variant is its own instance (the same weights) compiled
once, and the rounds alternate between them; ``--profile`` then adds the device time of one decode per
variant by kernel kind (a CUDA-graph replay's kernels appear one by one under the profiler).

    python benchmarks/decode_ab.py --arch gemma2-2b --rounds 5 --json out.json --md out.md
    python benchmarks/decode_ab.py --arch llama-1b --cache static --rounds 7 --profile
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import ARCHS, bench_setup, build_model, decode_ms, profile_decode, profile_markdown, versions  # noqa: E402
from result_files import write_result  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="gemma2-2b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--profile", action="store_true", help="also profile one decode run per variant (host side)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test on a tiny config")
    ap.add_argument("--cache", choices=("dynamic", "static"), default="dynamic")
    ap.add_argument("--without-residual-norm", action="store_true",
                    help="also measure LayerZero without the residual_norm kind, alternating with the rest")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    import layerzero_hf

    device, dtype, config_class, cfg = bench_setup(args.arch, args.quick)
    if args.quick:
        args.prompt, args.steps, args.batch, args.rounds = 8, 4, 2, min(args.rounds, 2)
    model = build_model(cfg, dtype, device, "sdpa", config_class=config_class)
    vocab = cfg["vocab_size"]
    from layerzero.dispatch import DispatchConfig

    variants = {  # name -> patch keywords; sampled verification is on by default, off in the third
        "layerzero": {},
        "layerzero_unsampled": {"dispatch_config": DispatchConfig(verify_sample_every=0)},
    }
    if args.without_residual_norm:  # the default kinds but the fused residual norm
        variants["layerzero_no_residual_norm"] = {
            "only": [k for k in layerzero_hf.default_patch_kinds() if k != "residual_norm"]}
    cache = None if args.cache == "dynamic" else "static"
    if cache:  # one compiled instance per variant, patched for good; the unsampled variant is a dynamic-cache question
        variants.pop("layerzero_unsampled")
        instances = {name: build_model(cfg, dtype, device, "sdpa", model.state_dict(), config_class=config_class)
                     for name in variants}
        for name, keywords in variants.items():
            layerzero_hf.patch(instances[name], attention=True, **keywords)
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        row: dict[str, Any] = {"hf_sdpa": decode_ms(model, device, vocab, args.prompt, args.steps, cache, 1, args.batch)}
        for name, keywords in variants.items():
            if cache:
                row[name] = decode_ms(instances[name], device, vocab, args.prompt, args.steps, cache, 1, args.batch)
                row[f"{name}_kernels"] = _kernel_counts(layerzero_hf.model_telemetry(instances[name])["snapshot"])
            else:  # the telemetry is read while the patch is on: unpatching drops the model's orchestrator
                with layerzero_hf.patched(model, attention=True, **keywords):
                    row[name] = decode_ms(model, device, vocab, args.prompt, args.steps, None, 1, args.batch)
                    row[f"{name}_kernels"] = _kernel_counts(layerzero_hf.model_telemetry(model)["snapshot"])
            row[f"{name}_speedup"] = row["hf_sdpa"] / row[name]
        print(json.dumps(row), flush=True)
        rounds.append(row)
    if not args.profile:
        profile = None
    elif cache:
        profile = _device_profile({"hf_sdpa": model, **instances}, device, vocab, args)
    else:
        profile = _profile(model, device, vocab, args, layerzero_hf)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "arch": args.arch,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype).removeprefix("torch."),
        "decode": {"batch": args.batch, "prompt": args.prompt, "new_tokens": args.steps, "cache": args.cache},
        "versions": versions(), "rounds": rounds, "profile": profile,
        "median_ms": {v: statistics.median(r[v] for r in rounds) for v in ("hf_sdpa", *variants)},
        "median_speedup": {v: statistics.median(r[f"{v}_speedup"] for r in rounds) for v in variants},
    }
    v = result["versions"]
    md = "\n".join([
        f"# Decode A/B, {args.arch}: LayerZero vs HF sdpa, alternating ({result['date']})", "",
        f"{result['device']}; {result['dtype']}; torch {v['torch']}, transformers {v['transformers']}; commit {v['git']}. "
        f"{args.cache.capitalize()} cache{' (compiled by Transformers, one instance per variant)' if cache else ''}, batch {args.batch}, prompt {args.prompt}, {args.steps} new tokens; ms/step = median of steps 2..N.", "",
        "| round | HF sdpa ms/step | " + " | ".join(f"{_LABELS.get(n, n)} ms/step | speed-up" for n in variants)
        + " | kernel failures (" + " / ".join(_LABELS.get(n, n) for n in variants) + ") |",
        "|---|---|" + "---|---|" * len(variants) + "---|",
        *[f"| {i + 1} | {r['hf_sdpa']:.2f} | "
          + " | ".join(f"{r[n]:.2f} | {r[f'{n}_speedup']:.2f}x" for n in variants)
          + " | " + " / ".join(_failures(r[f"{n}_kernels"]) for n in variants) + " |"
          for i, r in enumerate(rounds)],
        "", "Median speed-up over rounds: **" + ", ".join(f"{v} {x:.2f}x" for v, x in result["median_speedup"].items())
        + "**; kernels (calls, last round): " + ", ".join(f"{k}: {c}" for k, (c, _) in
                                                         sorted(rounds[-1]["layerzero_kernels"].items())), ""])
    if profile and cache:
        md += "\n".join(_device_profile_markdown(profile)) + "\n"
    elif profile:
        md += "\n".join(line for name, prof in profile.items()
                        for line in profile_markdown(f"Host profile of one 8-step decode, {name}", prof, rows=12)) + "\n"
    write_result(result, md, args.json, args.md)
    print(md)
    return result


_LABELS = {"layerzero": "LayerZero", "layerzero_unsampled": "LayerZero, sampled checks off",
           "layerzero_no_residual_norm": "LayerZero without residual_norm"}


def _kernel_counts(snapshot: Any) -> dict[str, tuple[int, int]]:
    """kernel id -> (calls, failures) of one patched run (a failure is an exception or a failed check)."""
    return {k: (v.calls, v.failures) for k, v in snapshot.per_kernel.items() if v.calls or v.failures}


def _failures(kernels: dict[str, tuple[int, int]]) -> str:
    failed = {k: f for k, (_, f) in kernels.items() if f}
    return ", ".join(f"{k} {f}" for k, f in sorted(failed.items())) or "0"


def _profile(model: Any, device: str, vocab: int, args: argparse.Namespace, layerzero_hf: Any) -> dict[str, Any]:
    """Host-side cost of one 8-step decode per variant (:func:`e2e.profile_decode`), so a gap between the
    variants can be read op by op."""
    ids = torch.randint(3, vocab, (args.batch, args.prompt), device=device)
    out = {"hf_sdpa": profile_decode(model, ids)}
    with layerzero_hf.patched(model, attention=True):
        out["layerzero"] = profile_decode(model, ids)
    return out


def _device_profile(models: dict[str, Any], device: str, vocab: int, args: argparse.Namespace) -> dict[str, Any]:
    """Device time by kernel kind of one 8-step static-cache decode per variant (after the rounds warmed
    and compiled them): where a gap between the compiled variants sits on the GPU."""
    from prefill_profile import profile_call

    ids = torch.randint(3, vocab, (args.batch, args.prompt), device=device)
    out = {}
    for name, m in models.items():
        def run(m: Any = m) -> None:
            m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None,
                       cache_implementation="static")
        run()
        out[name] = profile_call(run, device)
    return out


def _device_profile_markdown(profile: dict[str, Any]) -> list[str]:
    kinds = sorted({k for p in profile.values() for k in p["by_kind_ms"]})
    lines = ["", "## Device time of one 8-step static-cache decode (prefill included), ms by kernel kind", "",
             "| variant | total | launches | GPU idle | " + " | ".join(kinds) + " |",
             "|---|---|---|---|" + "---|" * len(kinds)]
    for name, p in profile.items():
        lines.append(f"| {name} | {p['total_ms']:.2f} | {p['launches']} | {p.get('gpu_idle_ms', 0.0):.2f} | "
                     + " | ".join(f"{p['by_kind_ms'].get(k, 0.0):.2f}" for k in kinds) + " |")
    for name, p in profile.items():
        lines += ["", f"Top kernels, {name}: " + "; ".join(f"{t['name'][:60]} {t['ms']:.2f} ms ({t['calls']})"
                                                           for t in p["top"][:8])]
    return lines


if __name__ == "__main__":
    main()
