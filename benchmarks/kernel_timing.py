"""Timing one kernel call on the GPU, shared by the kernel-level benchmarks (``flex_options.py``,
``fused_projections.py``, ``triton_prefill_attention.py``): the device-time median, a row that records a
variant's first-call time, error and median (or why it could not run), the optional FlashInfer adapter, and
writing the rows with the device, versions and commit they were measured at."""

from __future__ import annotations

import importlib.util
import time
from typing import Any, Callable

import torch


def median_ms(fn: Callable[[], Any], rep: int = 200) -> float:
    """Median device time of ``fn`` in ms: ``triton.testing.do_bench`` (L2 flushed between calls)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")


def timed_row(row: dict[str, Any], call: Callable[[], torch.Tensor], expected: torch.Tensor | None = None,
              to_expected: Callable[[torch.Tensor], torch.Tensor] = lambda out: out, rep: int = 200) -> dict[str, Any]:
    """Run ``call`` once (its compile or JIT: ``compile_s``; with ``expected``, the max abs error of
    ``to_expected(out)`` against it), then time it (``median_ms``). A variant that cannot run here (shared
    memory, registers, a missing JIT toolchain) is recorded with its error instead. Prints the row."""
    try:
        t0 = time.perf_counter()
        out = call()
        torch.cuda.synchronize()
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        if expected is not None:
            row["max_abs_err"] = (to_expected(out).float() - expected).abs().max().item()
        row["median_ms"] = median_ms(call, rep)
    except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a result, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}"[:200]
    print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
          flush=True)
    return row


def flashinfer_prefill() -> Callable[..., torch.Tensor] | None:
    """LayerZero's FlashInfer prefill adapter when FlashInfer is installed (it JIT-compiles each configuration
    on first use: the first call's time is the row's ``compile_s``), else None."""
    if importlib.util.find_spec("flashinfer") is None:
        return None
    from layerzero.kernels.flashinfer import flashinfer_prefill_attention

    return flashinfer_prefill_attention


def module_version(module: str) -> str | None:
    """``module.__version__`` ("?" without one), None when it is not installed."""
    try:
        return getattr(__import__(module), "__version__", "?")
    except ImportError:
        return None


def measure_and_write(measure: Callable[[], list[dict[str, Any]]], markdown: Callable[[dict, list], str],
                      json_path: Any, md_path: Any, **meta: Any) -> None:
    """Run ``measure`` and write its rows with ``meta`` (the device, torch, Python and commit added here, and
    how long it took) as JSON and as ``markdown(meta, rows)``, which is also printed."""
    import platform

    from result_files import git_commit, write_result

    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, python=platform.python_version(),
                commit=git_commit(), **meta)
    t0 = time.perf_counter()
    rows = measure()
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    table = markdown(meta, rows)
    print(table)
    write_result({"meta": meta, "rows": rows}, table, json_path, md_path)
