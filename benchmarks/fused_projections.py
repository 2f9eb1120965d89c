"""What fusing a decoder layer's sibling projections into one GEMM would save at prefill, per architecture.

Why: at batch prefill (8 x 1024, 32 x 512) the patched models, LayerZero's and Liger's alike, spend most of
their GPU time in cuBLAS GEMMs that every variant shares (measured on an H200 in
``benchmarks/results/2026-11-30-prefill-profile-h200-fc5eabe.md``), so being much faster than Liger there
needs fewer or better GEMMs. The one GEMM change that keeps the bf16 numerics is to fuse projections that
read the same input: q/k/v into one ``[q; k; v]`` GEMM and gate/up into one ``[gate; up]`` GEMM (what vLLM's
``QKVParallelLinear`` and ``MergedColumnParallelLinear`` do). This times both forms with
``triton.testing.do_bench`` (median, L2 flushed) at each architecture's shapes and token counts, and the
whole layer's GEMMs (with ``o_proj`` and ``down_proj``, unchanged) so the saving reads as a share of them.

    python benchmarks/fused_projections.py --json out.json --md out.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kernel_timing import measure_and_write, median_ms  # noqa: E402

# hidden, q out, k/v out (each), intermediate, layers
ARCHS = {
    "llama-1b": (2048, 2048, 512, 8192, 16),
    "qwen3-1.7b": (2048, 2048, 1024, 6144, 28),
    "gemma2-2b": (2304, 2048, 1024, 9216, 26),
}
TOKENS = (4096, 8192, 16384)  # 1 x 4096, 8 x 1024 / 16 x 512, 32 x 512


def measure() -> list[dict[str, Any]]:
    f = torch.nn.functional
    rows = []
    for arch, (hidden, q_out, kv_out, inter, layers) in ARCHS.items():
        def weight(out: int) -> torch.Tensor:
            return torch.randn(out, hidden, device="cuda", dtype=torch.bfloat16) * hidden ** -0.5

        wq, wk, wv, wg, wu = weight(q_out), weight(kv_out), weight(kv_out), weight(inter), weight(inter)
        wo = torch.randn(hidden, q_out, device="cuda", dtype=torch.bfloat16) * q_out ** -0.5
        wd = torch.randn(hidden, inter, device="cuda", dtype=torch.bfloat16) * inter ** -0.5
        wqkv, wgu = torch.cat([wq, wk, wv]), torch.cat([wg, wu])
        for tokens in TOKENS:
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
            a = torch.randn(tokens, q_out, device="cuda", dtype=torch.bfloat16)
            m = torch.randn(tokens, inter, device="cuda", dtype=torch.bfloat16)
            times = {
                "qkv_separate": median_ms(lambda: (f.linear(x, wq), f.linear(x, wk), f.linear(x, wv))),
                "qkv_fused": median_ms(lambda: f.linear(x, wqkv)),
                "gate_up_separate": median_ms(lambda: (f.linear(x, wg), f.linear(x, wu))),
                "gate_up_fused": median_ms(lambda: f.linear(x, wgu)),
                "o_proj": median_ms(lambda: f.linear(a, wo)),
                "down_proj": median_ms(lambda: f.linear(m, wd)),
            }
            separate = times["qkv_separate"] + times["gate_up_separate"] + times["o_proj"] + times["down_proj"]
            fused = times["qkv_fused"] + times["gate_up_fused"] + times["o_proj"] + times["down_proj"]
            # the fused GEMMs must give the separate ones' results (same kernels' math, rows concatenated)
            same = (torch.equal(f.linear(x, wqkv)[:, :q_out], f.linear(x, wq))
                    and torch.equal(f.linear(x, wgu)[:, inter:], f.linear(x, wu)))
            row = dict(arch=arch, tokens=tokens, layers=layers, **{k: round(v, 4) for k, v in times.items()},
                       layer_gemm_separate_ms=round(separate, 4), layer_gemm_fused_ms=round(fused, 4),
                       model_saving_ms=round((separate - fused) * layers, 3), bitwise_equal=bool(same))
            rows.append(row)
            print(f"  {arch:10s} {tokens:6d}  layer GEMMs {separate:.3f} -> {fused:.3f} ms "
                  f"({separate / fused:.3f}x), model -{row['model_saving_ms']:.2f} ms, equal={same}", flush=True)
    return rows


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Fused sibling projections at prefill: q/k/v and gate/up as one GEMM each",
        "",
        f"{meta['device']}, torch {meta['torch']}, bf16, `F.linear` (cuBLAS); median of triton.testing.do_bench; "
        f"commit {meta.get('commit') or '?'}. Per decoder layer, ms; `model saving` = layer saving x layers.",
        "",
        "| arch | tokens | q/k/v separate | q/k/v fused | gate/up separate | gate/up fused | o + down | "
        "layer GEMMs separate -> fused | speed-up | model saving ms | fused == separate |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['tokens']} | {r['qkv_separate']:.3f} | {r['qkv_fused']:.3f} | "
            f"{r['gate_up_separate']:.3f} | {r['gate_up_fused']:.3f} | {r['o_proj'] + r['down_proj']:.3f} | "
            f"{r['layer_gemm_separate_ms']:.3f} -> {r['layer_gemm_fused_ms']:.3f} | "
            f"{r['layer_gemm_separate_ms'] / r['layer_gemm_fused_ms']:.3f}x | {r['model_saving_ms']:.2f} | "
            f"{'bitwise' if r['bitwise_equal'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the rows and metadata as JSON here")
    ap.add_argument("--md", type=Path, help="write a markdown table here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("fused_projections: no CUDA device (torch.cuda.is_available() is False); nothing to measure")
        return 0
    measure_and_write(measure, markdown, args.json, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
