"""Prefill of every shipped architecture: the LayerZero-patched model vs HF sdpa and the Liger-patched model.

The end-to-end benchmark (``benchmarks/e2e.py``) measures three architectures at their full published
shapes. This one answers the question a user with another architecture asks — "is the patched model ever
slower than Liger's?" — for all nine (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3,
gpt_oss): a few decoder layers at a 1-2B-class width (hidden 2048, 16/8 heads, head_dim 128, each
architecture's own features on: sliding windows, softcaps, q/k norms, partial rotary, sinks, experts),
random weights shared by the three variants, bf16, prefill tokens/s at 1x4096, 8x1024 and 32x512
(``use_cache=False, logits_to_keep=1``). Liger is applied last per architecture (it rewrites the modeling
module's globals for the process); an architecture Liger does not support is reported as such.

"vs Liger" comes from rounds alternating the two live models (``e2e.prefill_alternating``, re-patching the
LayerZero model after Liger and checking the patch covers what it covered before): a 4-layer prefill takes
a few milliseconds, and one pass per variant measured minutes apart swung Liger's own speed-up between 0.67x
and 1.39x at the same shape across runs.

    python benchmarks/prefill_archs.py --json out.json --md out.md     # GPU
    python benchmarks/prefill_archs.py --quick                         # CPU smoke test (tiny shapes)
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from e2e import GPU_PREFILL, prefill_alternating, prefill_tps, versions  # noqa: E402
from result_files import write_result  # noqa: E402

SHAPES_QUICK = [(1, 32), (2, 16)]
# Transformers refuses sdpa for gpt-oss (attention sinks): its baseline (and Liger's model) is HF eager
BASELINE = {"gpt_oss": "eager"}


def arch_size(layers: int = 4) -> Any:
    """The 1-2B-class width every architecture is measured at (``prefill_profile.py`` profiles the same)."""
    from layerzero_hf.conformance.archs import ModelSize

    return ModelSize(hidden=2048, layers=layers, heads=16, kv_heads=8, head_dim=128, intermediate=6144,
                     vocab=32000, window=4096)


def measure_arch(arch: str, size: Any, dtype: torch.dtype, device: str, shapes: list[tuple[int, int]],
                 warmup: int, repeats: int, liger_rounds: int) -> dict[str, Any]:
    import layerzero_hf
    from layerzero_hf.conformance.archs import build_model

    impl = BASELINE.get(arch, "sdpa")
    model = build_model(arch, size, dtype=dtype, device=device, attn_implementation=impl)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    vocab = model.config.vocab_size
    row: dict[str, Any] = {"arch": arch, "baseline": f"hf_{impl}", "tokens_per_s": {}}

    def run(name: str, m: Any) -> None:
        row["tokens_per_s"][name] = {f"{b}x{s}": prefill_tps(m, device, b, s, vocab, warmup, repeats)
                                     for b, s in shapes}

    run("hf_sdpa", model)
    with layerzero_hf.patched(model, attention=True) as report:
        run("layerzero", model)
        snap = layerzero_hf.model_telemetry(model)["snapshot"]
        row["kernels"] = sorted(k for k, v in snap.per_kernel.items() if v.calls)
    expected_patch = report.counts()
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as exc:
        row["liger"] = f"not installed: {exc}"
    else:
        liger = build_model(arch, size, dtype=dtype, device=device, attn_implementation=impl, state_dict=state)
        try:
            _apply_liger_kernel_to_instance(model=liger, cross_entropy=False, fused_linear_cross_entropy=False)
        except Exception as exc:  # noqa: BLE001 - an architecture Liger does not support is a result
            row["liger"] = f"not applied: {type(exc).__name__}: {exc}"[:200]
        else:
            run("liger", liger)
            row["liger"] = "applied last"
            if liger_rounds:
                alt = prefill_alternating(model, liger, "liger", {"layerzero": None}, shapes, device, vocab, warmup,
                                          liger_rounds, {"layerzero": expected_patch})["layerzero"]
                row["vs_liger_alternating"] = alt
        del liger
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    base = row["tokens_per_s"]["hf_sdpa"]
    row["speedup_vs_sdpa"] = {v: {k: t / base[k] for k, t in tps.items()} for v, tps in row["tokens_per_s"].items()}
    if "vs_liger_alternating" in row:
        row["layerzero_vs_liger"] = {k: e["speedup_vs_liger"] for k, e in row["vs_liger_alternating"]["shapes"].items()}
    elif "liger" in row["tokens_per_s"]:  # --liger-rounds 0: one pass each, minutes apart
        lig = row["tokens_per_s"]["liger"]
        row["layerzero_vs_liger"] = {k: t / lig[k] for k, t in row["tokens_per_s"]["layerzero"].items()}
    print(json.dumps(row), flush=True)
    return row


def markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    shapes = list(result["rows"][0]["tokens_per_s"]["hf_sdpa"]) if result["rows"] else []
    from layerzero_hf.conformance.archs import ARCHS

    archs = [r["arch"] for r in result["rows"]]
    title = "the nine architectures" if set(archs) == set(ARCHS) else ", ".join(archs)
    out = [f"# Prefill of {title}: {m['device']} ({m['dtype']})", "",
           f"{m['date']}; torch {m['versions']['torch']}, transformers {m['versions']['transformers']}, "
           f"liger-kernel {m['versions']['liger_kernel']}, flashinfer {m['versions'].get('flashinfer') or 'not installed'}, commit {m['versions']['git']}. {m['size']}", "",
           "Cells: LayerZero speed-up vs HF sdpa / vs Liger (Liger's own speed-up vs HF sdpa). " + (
               f"vs Liger: median of {m['liger_rounds']} rounds alternating the two models (each 3 timed passes), "
               "with the range of the per-round ratios. " if m.get("liger_rounds") else
               "vs Liger: one pass per variant, minutes apart. ") +
           "gpt-oss: HF eager instead of sdpa (Transformers refuses sdpa with attention sinks), for the baseline "
           "and Liger's model. NO in the last column: LayerZero's patch after Liger covered other modules than "
           "before it.", "",
           "| arch | " + " | ".join(shapes) + " | LayerZero kernels |", "|---|" + "---|" * (len(shapes) + 1)]
    for r in result["rows"]:
        cells = []
        for s in shapes:
            lz = r["speedup_vs_sdpa"]["layerzero"][s]
            alt = r.get("vs_liger_alternating")
            if alt:
                ratios = alt["shapes"][s]["round_ratios"]
                cells.append(f"{lz:.2f}x / {r['layerzero_vs_liger'][s]:.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] "
                             f"({r['speedup_vs_sdpa']['liger'][s]:.2f}x)")
            elif "layerzero_vs_liger" in r:
                cells.append(f"{lz:.2f}x / {r['layerzero_vs_liger'][s]:.2f}x ({r['speedup_vs_sdpa']['liger'][s]:.2f}x)")
            else:
                cells.append(f"{lz:.2f}x / n/a")
        same = r.get("vs_liger_alternating", {}).get("same_patch_as_before", True)
        out.append(f"| {r['arch']} | " + " | ".join(cells) + f" | {', '.join(r.get('kernels', []))}"
                   + ("" if same else " (NO)") + " |")
    notes = [f"- {r['arch']}: Liger {r['liger']}" for r in result["rows"] if r.get("liger") != "applied last"]
    return "\n".join(out + ([""] + notes if notes else [])) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from layerzero_hf.conformance.archs import ARCHS, TINY

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke test on tiny shapes")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--liger-rounds", type=int, default=3, help="rounds alternating LayerZero and Liger per shape "
                    "(0: compare the one-pass tables)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    import layerzero_hf  # noqa: F401  (registers the "layerzero" attention implementation)

    device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    size = TINY if args.quick else arch_size(args.layers)
    shapes = SHAPES_QUICK if args.quick else GPU_PREFILL
    warmup, repeats = (1, 1) if args.quick else (args.warmup, args.repeats)
    rounds = min(args.liger_rounds, 2) if args.quick else args.liger_rounds
    rows = [measure_arch(a, size, dtype, device, shapes, warmup, repeats, rounds) for a in args.archs.split(",")]
    result = {"meta": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                       "dtype": str(dtype).removeprefix("torch."), "versions": versions(),
                       "liger_rounds": rounds,
                       "size": f"hidden {size.hidden}, {size.layers} layers, {size.heads}/{size.kv_heads} heads, "
                               f"head_dim {size.head_dim}, intermediate {size.intermediate}, window {size.window}"},
              "rows": rows}
    md = markdown(result)
    write_result(result, md, args.json, args.md)
    print(md)
    return result


if __name__ == "__main__":
    main()
