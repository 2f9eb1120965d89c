"""Compile, in parallel, every FlashInfer kernel configuration the GPU tier and the benchmarks use.

FlashInfer JIT-compiles each kernel configuration (head dim, dtype, causal, sliding window, softcap,
single vs batch) on first use: 45-170 s each on an H200 host, mostly single-threaded nvcc. Run serially
inside the tests they blow any time limit; run side by side on a many-core host they take about as long as
the slowest one. The compiled modules land in FlashInfer's cache (``FLASHINFER_WORKSPACE_BASE``); later
calls on the same machine run with ``FLASHINFER_DISABLE_JIT=1`` so a configuration missing here fails
loudly instead of compiling for minutes.

Jobs (each a child process, ``--jobs`` at a time):
* ``conformance:<family>`` - FlashInfer's GPU conformance tests (``tests/kernels/test_gpu_conformance.py``);
* ``replay:<arch>`` - the in-context replay of one architecture (every recorded call on every eligible
  kernel: FlashInfer, Triton and Flex compiles of the verify call land in the caches);
* ``models`` - the attention, RoPE, RMSNorm and SwiGLU configurations of the end-to-end model shapes
  (Llama-3.2-1B, Qwen3-1.7B, Gemma2-2B) through LayerZero's FlashInfer adapters.

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

# (name, heads, kv heads, head_dim, hidden, softcap, sliding window) of the end-to-end model shapes
MODEL_SHAPES = (
    ("llama-1b", 32, 8, 64, 2048, None, None),
    ("qwen3-1.7b", 16, 8, 128, 2048, None, None),
    ("gemma2-2b", 8, 4, 256, 2304, 50.0, 4096),
)


def model_configs() -> int:
    """Run each FlashInfer adapter once per configuration of the model shapes; returns how many ran."""
    import torch

    sys.path.insert(0, str(ROOT))
    from layerzero.kernels import flashinfer as fi

    dev, dt = "cuda", torch.bfloat16
    n = 0
    for _, h, hkv, d, hidden, cap, window in MODEL_SHAPES:
        windows = (None,) if window is None else (None, window)  # Gemma-2 alternates global / sliding layers
        for w in windows:
            for b, sq, sk in ((1, 64, 64), (2, 64, 64)):  # single-request and batch (ragged) prefill
                q = torch.randn(b, sq, h, d, device=dev, dtype=dt)
                k = torch.randn(b, sk, hkv, d, device=dev, dtype=dt)
                fi.flashinfer_prefill_attention(q, k, k, is_causal=True, sliding_window=w, softcap=cap)
                n += 1
            for b in (1, 8):  # single and batch decode
                q = torch.randn(b, 1, h, d, device=dev, dtype=dt)
                k = torch.randn(b, 80, hkv, d, device=dev, dtype=dt)
                fi.flashinfer_decode_attention(q, k, k, sliding_window=w, softcap=cap)
                n += 1
        q = torch.randn(2, h, 16, d, device=dev, dtype=dt)
        k = torch.randn(2, hkv, 16, d, device=dev, dtype=dt)
        cos, sin = torch.randn(2, 16, d, device=dev, dtype=dt), torch.randn(2, 16, d, device=dev, dtype=dt)
        fi.flashinfer_rope(q, k, cos, sin)
        x = torch.randn(4, hidden, device=dev, dtype=dt)
        fi.flashinfer_rms_norm(x, torch.ones(hidden, device=dev, dtype=dt))
        fi.flashinfer_rms_norm(x, torch.ones(hidden, device=dev, dtype=dt), offset=1.0)
        fi.flashinfer_swiglu(x, x)
        n += 4
    torch.cuda.synchronize()
    return n


def jobs() -> list[tuple[str, list[str]]]:
    from_root = [sys.executable]
    out = [(f"conformance:{f}", from_root + ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                                            "tests/kernels/test_gpu_conformance.py", "-k", f"flashinfer_{f}"])
           for f in FAMILIES]
    out.append(("models", from_root + [__file__, "--models-only"]))
    sys.path.insert(0, str(ROOT))
    from layerzero_hf.conformance.archs import ARCHS

    out += [(f"replay:{a}", from_root + ["benchmarks/in_context_replay.py", "--archs", a]) for a in ARCHS]
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
    p.add_argument("--models-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.models_only:
        print(f"{model_configs()} model-shape FlashInfer configurations ran")
        return 0
    os.environ.pop("FLASHINFER_DISABLE_JIT", None)  # this is the call that compiles
    t0 = time.perf_counter()
    todo = jobs()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda j: run_job(*j), todo))
    summary = {"seconds": round(time.perf_counter() - t0, 1), "jobs": results}
    print(f"all {len(results)} jobs in {summary['seconds']} s; failed: "
          f"{[r['job'] for r in results if r['rc'] not in (0, 5)] or 'none'}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
