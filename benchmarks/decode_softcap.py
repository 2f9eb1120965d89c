"""Soft-capped decode attention at the Gemma2-2B decode shape: triton_decode_attention against the kernels
selection could otherwise pick.

Why: SDPA cannot soft-cap, so a Gemma-2 decode step used to run torch_flex_attention, which compiles per
key length (every decode step is a new length). This measures one decode attention call — B=8, 8 query /
4 kv heads, head_dim 256, softcap 50, sliding window 4096, bf16, keys/values as Transformers' cache hands
them over (a transposed (B, Hkv, Sk, D) view) — for:

- ``triton_decode_attention`` (softcap; one compiled variant for every key length),
- ``torch_flex_attention`` (softcap; timed after warm-up at that length, i.e. its best case; on the CPU
  its uncompiled path),
- ``torch_eager_attention`` (softcap; a few ATen calls, K/V not repeated),
- ``reference_attention`` (softcap; fp32 math),
- ``torch_sdpa_attention`` *without* softcap (not a correct Gemma-2 call: the yardstick for scale).

Per call: the median of ``triton.testing.do_bench`` (device time of back-to-back calls; on the CPU,
``--device cpu``, of ``torch.utils.benchmark``'s blocked autorange, 2 threads), the max abs error
against the fp32 reference of the same call and, at the first Sk only (Flex compiles for seconds), the
wall time of the first call at a new key length Sk + 1: what every decode step pays when a kernel
recompiles per length.

    python benchmarks/decode_softcap.py --json out.json --md out.md
    python benchmarks/decode_softcap.py --device cpu --json cpu.json --md cpu.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

B, H, HKV, D = 8, 8, 4, 256
SOFTCAP, WINDOW = 50.0, 4096
SEQ_KS = (512, 4096)
KERNELS = ("triton_decode_attention", "torch_eager_attention", "torch_flex_attention", "reference_attention",
           "torch_sdpa_attention")
NO_SOFTCAP = {"torch_sdpa_attention"}


def _inputs(sk: int, seed: int = 0, device: str = "cuda") -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, 1, H, D, device=device, dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, HKV, sk, D, device=device, dtype=torch.bfloat16, generator=g).transpose(1, 2)
    v = torch.randn(B, HKV, sk, D, device=device, dtype=torch.bfloat16, generator=g).transpose(1, 2)
    return {"query": q, "key": k, "value": v}


def _options(kernel_id: str) -> dict[str, Any]:
    opts: dict[str, Any] = {"sliding_window": WINDOW, "is_causal": True}
    if kernel_id not in NO_SOFTCAP:
        opts["softcap"] = SOFTCAP
    return opts


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _first_call_ms(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def _median_ms(fn: Callable[[], Any], device: str) -> float:
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    from torch.utils.benchmark import Timer

    return Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=1.0).median * 1e3


def measure(device: str = "cuda") -> list[dict[str, Any]]:
    from layerzero.kernels import reference
    from layerzero.registry import get_global_kernel_registry

    reg = get_global_kernel_registry()
    kernels = [k for k in KERNELS if device == "cuda" or not k.startswith("triton_")]
    rows = []
    for sk in SEQ_KS:
        inputs = _inputs(sk, device=device)
        for kid in kernels:
            impl = reg.get(kid).impl
            opts = _options(kid)
            call = lambda: impl(**inputs, **opts)  # noqa: E731
            row: dict[str, Any] = dict(kernel=kid, seq_k=sk, softcap=kid not in NO_SOFTCAP)
            try:
                out = call()  # warm-up: compiles Flex for this length, builds the Triton kernels once
                row["max_abs_err"] = (out.float() - reference.attention(**inputs, **opts).float()).abs().max().item()
                row["median_ms"] = _median_ms(call, device)
                # One new length per kernel (Flex compiles for each: ~seconds, so only at the first Sk).
                if sk == SEQ_KS[0]:
                    longer = _inputs(sk + 1, seed=1, device=device)
                    row["new_length_first_call_ms"] = _first_call_ms(lambda: impl(**longer, **opts), device)
            except Exception as e:  # report and go on: one failing kernel must not hide the others
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            print(f"  {kid:26s} Sk={sk:5d}  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in row.items() if k not in ("kernel", "seq_k")),
                  flush=True)
    return rows


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Soft-capped decode attention, Gemma2-2B decode shape",
        "",
        f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}; B={B}, {H}/{HKV} heads, head_dim {D}, "
        f"softcap {SOFTCAP}, window {WINDOW}, bf16, strided cache view. Median of {meta['timer']}; commit "
        f"{meta.get('commit') or '?'}.",
        "",
        f"| kernel | softcap | Sk | median ms | time / {meta['baseline']} | first call at Sk+1 (ms) | max abs err |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["seq_k"]: r["median_ms"] for r in rows if r["kernel"] == meta["baseline"] and "median_ms" in r}

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['kernel']}` | {'yes' if r['softcap'] else 'no'} | {r['seq_k']} | failed: {r['error']} | | | |")
            continue
        ratio = r["median_ms"] / base[r["seq_k"]] if r["seq_k"] in base else None
        lines.append(
            f"| `{r['kernel']}` | {'yes' if r['softcap'] else 'no (scale only)'} | {r['seq_k']} | "
            f"{r['median_ms']:.4f} | {fmt(ratio, '.2f')}x | {fmt(r.get('new_length_first_call_ms'), '.2f')} | "
            f"{r['max_abs_err']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the rows and metadata as JSON here")
    ap.add_argument("--md", type=Path, help="write a markdown table here")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("decode_softcap: no CUDA device (torch.cuda.is_available() is False); nothing to measure "
              "(--device cpu measures the CPU kernels)")
        return 0
    if args.device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    from result_files import git_commit

    cuda = args.device == "cuda"
    meta = dict(device=torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()}, "
                f"{torch.get_num_threads()} threads)", torch=torch.__version__, triton=triton_version,
                python=platform.python_version(), commit=git_commit(),
                timer="triton.testing.do_bench" if cuda else "torch.utils.benchmark blocked_autorange",
                baseline="triton_decode_attention" if cuda else "torch_eager_attention")
    t0 = time.perf_counter()
    rows = measure(args.device)
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    table = markdown(meta, rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if args.md:
        args.md.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
