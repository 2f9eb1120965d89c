"""How much faster than a peer a patched prefill can be at all, from a profile of both (``prefill_profile.py``).

A prefill forward's GPU time is GEMMs (cuBLAS, the same kernels whatever patches the model), attention (the
same SDPA kernel unless a patch replaces it) and the memory-bound passes between them: norms, RoPE, the GLU
activation, residual adds. A patch that keeps the GEMMs and the attention kernel can at best run those passes
at the memory floor: every byte they must move read or written once at the device's peak bandwidth, with
every pass fused that can be without entering a GEMM (each residual add inside the next RMSNorm, the q/k norm
and RoPE in one pass over q and k, the activation reading gate and up once). So, while the GPU is the
bottleneck, no such patch beats a peer by more than

    peer GPU time / (peer GEMM time + peer attention time + floor)

Passing the peak bandwidth from the spec sheet (an upper bound on any achieved bandwidth) makes the floor a
lower bound on time, and so the quotient an upper bound on the speed-up. The table also shows how far the
patched model's own passes are above the floor. Host-bound runs (wall time well above GPU time) are outside
this bound: there what the host spends to issue the calls decides.

    python benchmarks/prefill_bound.py benchmarks/results/<profile>.json --peer liger --peak-gbs 4800
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

GEMM, ATTENTION = "gemm", "attention"


def floor_bytes_per_layer(cfg: dict[str, Any], tokens: int, dtype_bytes: int = 2) -> int:
    """Bytes a decoder layer's memory-bound passes must move at least, fused as far as no GEMM is entered (a
    per-head q/k norm, where the model has one, runs in RoPE's pass over q and k and adds nothing)."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    qk = (cfg["num_attention_heads"] + cfg["num_key_value_heads"]) * hd
    norms = 2 * 4 * tokens * h  # two RMSNorms, each taking a residual add: read x and residual, write both
    rope = 2 * tokens * qk  # q and k read and written once
    glu = 3 * tokens * inter  # gate and up read, the product written
    return (norms + rope + glu) * dtype_bytes


def _gemm_and_attention_ms(cell: dict[str, Any]) -> float:
    """The GPU time of a profiled cell that every patch keeping the GEMMs and the attention kernel keeps too."""
    return cell["by_kind_ms"].get(GEMM, 0.0) + cell["by_kind_ms"].get(ATTENTION, 0.0)


def bound(profile: dict[str, Any], peer: str, peak_gbs: float, patched: str = "layerzero") -> list[dict[str, Any]]:
    """One row per profiled shape: the peer's and the patched model's GPU time split, the floor, the bound."""
    cfg = profile["config"]
    rows = []
    for shape, p in profile["variants"][peer].items():
        b, s = (int(x) for x in shape.split("x"))
        floor_ms = cfg["num_hidden_layers"] * floor_bytes_per_layer(cfg, b * s) / (peak_gbs * 1e9) * 1e3
        fixed = _gemm_and_attention_ms(p)
        mine = profile["variants"].get(patched, {}).get(shape)
        row = {"shape": shape, "peer_gpu_ms": p["total_ms"], "peer_wall_ms": p["wall_ms"], "peer_gemm_attention_ms": fixed,
               "peer_rest_ms": p["total_ms"] - fixed, "floor_ms": floor_ms, "max_speedup_vs_peer": p["total_ms"] / (fixed + floor_ms)}
        if mine is not None:
            row.update({"patched_gpu_ms": mine["total_ms"], "patched_wall_ms": mine["wall_ms"],
                        "patched_rest_ms": mine["total_ms"] - _gemm_and_attention_ms(mine),
                        "gpu_speedup_vs_peer": p["total_ms"] / mine["total_ms"]})
        rows.append(row)
    return rows


def markdown(profile: dict[str, Any], rows: list[dict[str, Any]], peer: str, peak_gbs: float, source: str) -> str:
    v = profile["versions"]
    lines = [f"# Prefill speed-up bound vs {peer}: {profile['arch']} on {profile['device']}", "",
             f"From `{source}` (commit {v.get('git')}, torch {v.get('torch')}, transformers {v.get('transformers')}, "
             f"liger-kernel {v.get('liger_kernel')}); peak bandwidth {peak_gbs:.0f} GB/s (spec sheet, an upper bound). "
             "`python benchmarks/prefill_bound.py` computes it; see its docstring for the model.", "",
             f"| shape | {peer} GPU ms (wall) | of which GEMM + attention | rest | memory floor of the rest | "
             f"max speed-up of any patch keeping GEMMs and attention | patched GPU ms (wall), rest | "
             f"patched GPU time vs {peer} |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mine = (f"{r['patched_gpu_ms']:.2f} ({r['patched_wall_ms']:.2f}), {r['patched_rest_ms']:.2f}"
                if "patched_gpu_ms" in r else "-")
        ratio = f"{r['gpu_speedup_vs_peer']:.3f}x" if "gpu_speedup_vs_peer" in r else "-"
        lines.append(f"| {r['shape']} | {r['peer_gpu_ms']:.2f} ({r['peer_wall_ms']:.2f}) | {r['peer_gemm_attention_ms']:.2f} | "
                     f"{r['peer_rest_ms']:.2f} | {r['floor_ms']:.2f} | **{r['max_speedup_vs_peer']:.3f}x** | {mine} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path, help="a prefill_profile.py JSON with the peer's variant")
    ap.add_argument("--peer", default="liger")
    ap.add_argument("--peak-gbs", type=float, default=4800.0, help="the device's peak memory bandwidth (H200: 4800)")
    ap.add_argument("--md", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    profile = json.loads(args.profile.read_text())
    if args.peer not in profile["variants"]:
        raise SystemExit(f"--peer {args.peer!r}: the profile has {sorted(profile['variants'])}")
    rows = bound(profile, args.peer, args.peak_gbs)
    md = markdown(profile, rows, args.peer, args.peak_gbs, args.profile.name)
    if args.md:
        args.md.write_text(md)
    if args.json:
        args.json.write_text(json.dumps({"source": args.profile.name, "peer": args.peer, "peak_gbs": args.peak_gbs,
                                         "rows": rows}, indent=2))
    print(md)
    return rows


if __name__ == "__main__":
    main()
