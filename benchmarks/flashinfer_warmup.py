"""Compile, in parallel, every FlashInfer kernel configuration the GPU tier and the benchmarks use.

FlashInfer JIT-compiles each kernel configuration (head dim, dtype, causal, sliding window, softcap,
single vs batch) on first use: 45-170 s each on an H200 host, mostly single-threaded nvcc. Run serially
inside the tests they blow any time limit; run side by side on a many-core host they take about as long as
the slowest one. The compiled modules land in FlashInfer's cache (``FLASHINFER_WORKSPACE_BASE``); later
calls on the same machine load them from that workspace. (``FLASHINFER_DISABLE_JIT=1`` does not help
there: it limits FlashInfer to its ahead-of-time package and reports every workspace module missing.)

Jobs (each a child process, ``--jobs`` at a time):
* ``conformance:<family>`` - FlashInfer's GPU conformance tests (``tests/kernels/test_gpu_conformance.py``);
* ``configurations:<i>/<n>`` - a share of the attention (softcap and sliding window on/off, single and
  batch, prefill and decode), RoPE, RMSNorm and SwiGLU configurations of the end-to-end model shapes
  (Llama-3.2-1B, Qwen3-1.7B, Gemma2-2B) and of the small parity/replay shape, through LayerZero's
  FlashInfer adapters. Two processes needing one module wait on FlashInfer's file lock, not compile twice.

    python benchmarks/flashinfer_warmup.py --jobs 12 --out warmup.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("prefill", "decode", "rms_norm", "rope", "swiglu")

# (name, heads, kv heads, head_dim, hidden, softcap, sliding window): the end-to-end model shapes and the
# small shape of the parity matrix / in-context replay (head_dim 64, every architecture's options).
MODEL_SHAPES = (
    ("llama-1b", 32, 8, 64, 2048, None, None),
    ("qwen3-1.7b", 16, 8, 128, 2048, None, None),
    ("gemma2-2b", 8, 4, 256, 2304, 50.0, 4096),
    ("small", 4, 2, 64, 256, 5.0, 8),
    # Gemma-2 at the 1-2B-class width prefill_archs.py measures every architecture at (head_dim 128)
    ("gemma2-4l", 16, 8, 128, 2048, 50.0, 4096),
)


ATTENTION_KINDS = ("prefill-single", "prefill-batch", "decode-single", "decode-batch")


def configurations(shapes: tuple[str, ...] | None = None, kinds: tuple[str, ...] | None = None,
                   model_softcap_only: bool = False) -> list[tuple]:
    """One entry per FlashInfer module a run can load: attention per (kind, shape, softcap on/off, window
    on/off), and RoPE/RMSNorm/SwiGLU ("pointwise") per shape; ``shapes`` names the model shapes and
    ``kinds`` the kinds (default: all of each); ``model_softcap_only``: the softcap as the model has it, not
    also without it (a model benchmark, not the tests, which call both)."""
    out: list[tuple] = []
    for name, h, hkv, d, hidden, cap, window in MODEL_SHAPES:
        if shapes is not None and name not in shapes:
            continue
        for c in ((None,) if cap is None else ((cap,) if model_softcap_only else (None, cap))):
            for w in ((None,) if window is None else (None, window)):
                out += [(kind, h, hkv, d, c, w) for kind in ATTENTION_KINDS if kinds is None or kind in kinds]
        if kinds is None or "pointwise" in kinds:
            out.append(("pointwise", h, hkv, d, hidden))
    return out


def run_configurations(part: int, parts: int, shapes: tuple[str, ...] | None = None,
                       kinds: tuple[str, ...] | None = None, model_softcap_only: bool = False) -> int:
    """Run LayerZero's FlashInfer adapters once for every ``parts``-th configuration from ``part``."""
    import torch

    sys.path.insert(0, str(ROOT))
    from layerzero.kernels import flashinfer as fi

    dev, dt = "cuda", torch.bfloat16
    todo = configurations(shapes, kinds, model_softcap_only)[part::parts]
    for cfg in todo:
        kind = cfg[0]
        if kind == "pointwise":
            _, h, hkv, d, hidden = cfg
            q = torch.randn(2, h, 16, d, device=dev, dtype=dt)
            k = torch.randn(2, hkv, 16, d, device=dev, dtype=dt)
            cos, sin = torch.randn(2, 16, d, device=dev, dtype=dt), torch.randn(2, 16, d, device=dev, dtype=dt)
            fi.flashinfer_rope(q, k, cos, sin)
            x = torch.randn(4, hidden, device=dev, dtype=dt)
            fi.flashinfer_rms_norm(x, torch.ones(hidden, device=dev, dtype=dt), casting="gemma")
            fi.flashinfer_rms_norm(x, torch.ones(hidden, device=dev, dtype=dt), offset=1.0, casting="gemma")
            fi.flashinfer_swiglu(x, x)
            continue
        _, h, hkv, d, cap, w = cfg
        b = 1 if kind.endswith("single") else 8
        if kind.startswith("prefill"):
            q = torch.randn(b, 64, h, d, device=dev, dtype=dt)
            k = torch.randn(b, 64, hkv, d, device=dev, dtype=dt)
            fi.flashinfer_prefill_attention(q, k, k, is_causal=True, sliding_window=w, softcap=cap)
        else:
            q = torch.randn(b, 1, h, d, device=dev, dtype=dt)
            k = torch.randn(b, 80, hkv, d, device=dev, dtype=dt)
            fi.flashinfer_decode_attention(q, k, k, sliding_window=w, softcap=cap)
    torch.cuda.synchronize()
    return len(todo)


def jobs(parts: int, shapes: tuple[str, ...] | None = None, kinds: tuple[str, ...] | None = None,
         conformance: bool = True, model_softcap_only: bool = False) -> list[tuple[str, list[str]]]:
    from_root = [sys.executable]
    out = [(f"conformance:{f}", from_root + ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                                            "tests/kernels/test_gpu_conformance.py", "-k", f"flashinfer_{f}"])
           for f in FAMILIES] if conformance else []
    only = (["--shapes", ",".join(shapes)] if shapes else []) + (["--kinds", ",".join(kinds)] if kinds else []) \
        + (["--model-softcap-only"] if model_softcap_only else [])
    out += [(f"configurations:{i}/{parts}", from_root + [__file__, "--part", f"{i}/{parts}", *only])
            for i in range(parts)]
    return out


def run_job(name: str, cmd: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    result = {"job": name, "rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "tail": tail}
    print(f"{name:<24} rc={proc.returncode} {result['seconds']:7.1f}s  {tail[-1] if tail else ''}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 3))
    p.add_argument("--out", type=Path, help="write the per-job results as JSON here")
    p.add_argument("--shapes", help="model shapes to compile, comma-separated (default: all of "
                   + ", ".join(s[0] for s in MODEL_SHAPES) + "); the GPU tier needs only 'small'")
    p.add_argument("--kinds", help="configuration kinds to compile, comma-separated (default: all of "
                   + ", ".join((*ATTENTION_KINDS, "pointwise")) + "); a prefill benchmark needs the prefill kinds")
    p.add_argument("--no-conformance", action="store_true",
                   help="skip the jobs that compile FlashInfer's GPU conformance tests (a benchmark-only machine)")
    p.add_argument("--model-softcap-only", action="store_true",
                   help="attention with the softcap as each model has it, not also without (a model benchmark)")
    p.add_argument("--part", help=argparse.SUPPRESS)  # a child process: "i/n" of the configurations
    args = p.parse_args(argv)
    shapes = tuple(args.shapes.split(",")) if args.shapes else None
    kinds = tuple(args.kinds.split(",")) if args.kinds else None
    unknown = sorted(set(kinds or ()) - {*ATTENTION_KINDS, "pointwise"}) + sorted(
        set(shapes or ()) - {s[0] for s in MODEL_SHAPES})
    if unknown:
        p.error(f"unknown --kinds/--shapes value(s): {', '.join(unknown)}")
    if args.part:
        i, n = (int(x) for x in args.part.split("/"))
        print(f"{run_configurations(i, n, shapes, kinds, args.model_softcap_only)} FlashInfer configurations ran")
        return 0
    os.environ.pop("FLASHINFER_DISABLE_JIT", None)  # this is the call that compiles
    t0 = time.perf_counter()
    conformance = not args.no_conformance
    todo_configs = configurations(shapes, kinds, args.model_softcap_only)
    parts = max(1, min(args.jobs - (len(FAMILIES) if conformance else 0), len(todo_configs)))
    todo = jobs(parts, shapes, kinds, conformance, args.model_softcap_only)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda j: run_job(*j), todo))
    summary = {"seconds": round(time.perf_counter() - t0, 1), "jobs": results}
    failed = [r["job"] for r in results if r["rc"] not in (0, 5)]  # pytest's 5: nothing selected (backend absent)
    print(f"all {len(results)} jobs in {summary['seconds']} s; failed: {failed or 'none'}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
