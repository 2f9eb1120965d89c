"""FlexAttention's Triton kernel options for Gemma-2's soft-capped causal prefill on this GPU.

Why: Gemma-2 soft-caps its attention scores, which SDPA cannot do, so LayerZero runs its prefill attention
in FlexAttention, and measured on an H200 that is where the patched Gemma2-2B loses to the Liger-patched
model at 8 x 1024 (Transformers' sdpa path, and with it Liger's model, drops the softcap and runs cuDNN).
Flex picks its block sizes, warps and pipeline stages from a small built-in table; this sweeps them for the
call LayerZero makes (B x S tokens, softcap 50, causal block mask, bf16, (B, H, S, D) views of (B, S, H, D)
tensors; Gemma2-2B's 8 query / 4 KV heads at head_dim 256 by default, ``--head-dim 128 --heads 16/8`` for
the head size of Gemma2-27B and of the 1-2B-class shape ``prefill_archs.py`` measures) and times each with ``triton.testing.do_bench`` (median),
beside Flex with its defaults and SDPA *without* the softcap (the yardstick: what the peers run; not a
correct Gemma-2 call). The best option sets are re-timed with ``USE_TMA`` (Hopper's tensor memory
accelerator, off by default on CUDA), and where FlashInfer is installed its prefill kernel (softcap in its
own kernel: what LayerZero runs instead of Flex when it is there) is timed beside them. Every variant is
checked against the fp32 reference of the soft-capped call.

    python benchmarks/flex_options.py --json out.json --md out.md
    python benchmarks/flex_options.py --head-dim 128 --heads 16/8 --json out.json --md out.md
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kernel_timing import flashinfer_prefill, measure_and_write, median_ms, module_version, timed_row  # noqa: E402

SOFTCAP = 50.0
SHAPES = ((8, 1024), (1, 4096), (32, 512))  # (batch, sequence): the e2e prefill shapes
# per head_dim: at 256 a 128-wide key block does not fit in shared memory; at 128 it may be the fastest
GRIDS = {256: dict(BLOCK_M=(64, 128), BLOCK_N=(32, 64), num_warps=(4, 8), num_stages=(2, 3)),
         128: dict(BLOCK_M=(64, 128), BLOCK_N=(64, 128), num_warps=(4, 8), num_stages=(2, 3))}
TOP = 4  # option sets re-measured at the other shapes


def _inputs(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, seq, heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(batch, seq, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(batch, seq, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _grid(head_dim: int) -> list[dict[str, int]]:
    grid = GRIDS.get(head_dim, GRIDS[128])
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def measure(shapes: tuple[tuple[int, int], ...] = SHAPES, heads: int = 8, kv_heads: int = 4,
            head_dim: int = 256) -> list[dict[str, Any]]:
    from torch.nn.attention.flex_attention import flex_attention

    from layerzero.kernels import reference
    from layerzero.kernels.torch_flex import _block_mask, _softcap_mod

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)
    compiled = torch.compile(flex_attention, dynamic=False)
    score_mod = _softcap_mod(SOFTCAP)
    rows: list[dict[str, Any]] = []
    ranked: list[dict[str, int] | None] = []
    flashinfer_call = flashinfer_prefill()
    for shape_index, (batch, seq) in enumerate(shapes):
        q, k, v = _inputs(batch, seq, heads, kv_heads, head_dim)
        block_mask = _block_mask(seq, seq, True, None, "cuda")
        expected = reference.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                       softcap=SOFTCAP).float()
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
        rows.append(dict(batch=batch, seq=seq, variant="sdpa, no softcap", median_ms=median_ms(sdpa)))

        def flex(options: dict[str, Any] | None) -> None:
            call = lambda: compiled(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True,  # noqa: E731
                                    kernel_options=options)
            rows.append(timed_row(dict(batch=batch, seq=seq, variant="flex", options=options), call, expected,
                                  lambda out: out.transpose(1, 2)))

        if shape_index == 0:
            for options in (None, *_grid(head_dim)):
                flex(options)
            timed = sorted((r for r in rows if r.get("variant") == "flex" and "median_ms" in r and r["options"]),
                           key=lambda r: r["median_ms"])
            ranked = [None, *(r["options"] for r in timed[:TOP])]
            # Hopper's tensor memory accelerator for the loads (off by default on CUDA), on the best sets
            with_tma = [{**(options or {}), "USE_TMA": True} for options in ranked]
            for options in with_tma:
                flex(options)
        else:
            for options in (*ranked, *with_tma):
                flex(options)
        if flashinfer_call is not None:  # what LayerZero runs for this call when FlashInfer is installed
            qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))  # the (B, S, H, D) tensors the views came from
            call = lambda: flashinfer_call(qs, ks, vs, is_causal=True, softcap=SOFTCAP, enable_gqa=True)  # noqa: E731
            rows.append(timed_row(dict(batch=batch, seq=seq, variant="flashinfer", options=None), call, expected))
    return rows


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# FlexAttention kernel options: soft-capped causal prefill, head_dim {meta['head_dim']}",
        "",
        f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}; {meta['heads']}/{meta['kv_heads']} "
        f"heads, head_dim {meta['head_dim']}, "
        f"softcap {SOFTCAP}, causal, bf16. Median of triton.testing.do_bench; commit {meta.get('commit') or '?'}. "
        "`defaults` = Flex's own choice (what LayerZero passed before this sweep); `flashinfer` = LayerZero's "
        f"FlashInfer adapter ({meta.get('flashinfer') or 'not installed: not run'}).",
        "",
        "| B x S | variant | options | median ms | / sdpa without softcap | / Flex defaults | max abs err |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (batch, seq), group in itertools.groupby(rows, key=lambda r: (r["batch"], r["seq"])):
        group = list(group)
        sdpa = next(r["median_ms"] for r in group if r["variant"] != "flex")
        default = next((r.get("median_ms") for r in group if r["variant"] == "flex" and r["options"] is None), None)
        for r in sorted(group, key=lambda r: r.get("median_ms", float("inf"))):
            options = "-" if r["variant"] != "flex" else ("defaults" if r["options"] is None else
                      ", ".join(f"{k}={v}" for k, v in r["options"].items()))
            if "error" in r:
                lines.append(f"| {batch}x{seq} | {r['variant']} | {options} | failed: {r['error'][:60]} | | | |")
                continue
            vs_default = f"{r['median_ms'] / default:.2f}x" if default and r["variant"] == "flex" else "-"
            err = f"{r['max_abs_err']:.3g}" if "max_abs_err" in r else "-"
            lines.append(f"| {batch}x{seq} | {r['variant']} | {options} | {r['median_ms']:.3f} | "
                         f"{r['median_ms'] / sdpa:.2f}x | {vs_default} | {err} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the rows and metadata as JSON here")
    ap.add_argument("--md", type=Path, help="write a markdown table here")
    ap.add_argument("--head-dim", type=int, default=256, choices=sorted(GRIDS))
    ap.add_argument("--heads", default="8/4", help="query/KV heads (Gemma2-2B: 8/4)")
    args = ap.parse_args(argv)
    heads, kv_heads = (int(n) for n in args.heads.split("/"))
    if not torch.cuda.is_available():
        print("flex_options: no CUDA device (torch.cuda.is_available() is False); nothing to measure")
        return 0
    import triton

    measure_and_write(lambda: measure(heads=heads, kv_heads=kv_heads, head_dim=args.head_dim), markdown,
                      args.json, args.md, triton=triton.__version__, heads=heads, kv_heads=kv_heads,
                      head_dim=args.head_dim, flashinfer=module_version("flashinfer"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
