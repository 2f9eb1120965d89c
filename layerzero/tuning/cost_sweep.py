"""The cost sweep: time every eligible kernel at the calls the shipped architectures make, write a table.

    python -m layerzero.tuning.cost_sweep --out layerzero/data/costs/        # ~5 minutes on an H200
    python -m layerzero.tuning.cost_sweep --out /tmp/costs --quick           # seconds on a CPU (CI)

(also ``layerzero tune costs``). Buckets come from :mod:`layerzero.tuning.cost_shapes` in an order whose
every prefix spans all architectures and token counts, so ``--max-seconds`` cuts resolution, not coverage.
Each kernel is timed with the maintained harness (``triton.testing.do_bench`` on CUDA, with L2 flushes and
quantiles; ``torch.utils.benchmark`` on CPU) until it measures steadily
(:func:`~layerzero.tuning.measure.measure_stable`: a noisy one is re-measured; one that never holds still is
recorded flagged ``noisy`` with a note, and a ranking uses it only where the order does not depend on the noise).
A kernel whose output disagrees with the fp32 reference is not recorded. The result is merged over an
existing table of the same device class at ``--out`` and written as ``<device_class>.json`` with a
markdown summary ``<device_class>.md`` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from layerzero.tuning.cache import TuningCache, device_name, library_versions, put_costs
from layerzero.tuning.cost_bucket import as_in_a_step
from layerzero.tuning.cost_shapes import ARCH_DIMS, OPERATIONS, SweepCall, sweep_calls
from layerzero.tuning.cost_table import (
    CostBucket,
    CostTable,
    Measurement,
    device_class,
    load_table_file,
    write_table,
)
from layerzero.tuning.measure import Timer, eligible_kernels, fp32_reference, time_kernels, timer_name

QUICK = dict(archs=("llama",), tokens=(1, 16), decode_batches=(1,), decode_kv=(64,), prefill_batches=((2, 8),))
# Conformance is checked while the fp32 reference fits comfortably (scores of batch x heads x sq x sk).
MAX_REFERENCE_SCORES = 1 << 28


@dataclass
class SweepResult:
    table: CostTable
    json_path: Path | None
    summary_path: Path | None
    buckets_total: int
    buckets_done: int
    notes: list[str] = field(default_factory=list)


def measure_bucket(call: SweepCall, device: torch.device, *, timer: Timer | None = None, attempts: int = 3,
                   repeats: int = 10) -> tuple[dict[str, Measurement], list[str]]:
    """Steady, conforming times of every eligible kernel at one call; notes say what was left out."""
    specs, ref = eligible_kernels(call.operation, call.context(device))
    kwargs, sequence = call.sequence(device)
    inputs = sequence[0]
    small = call.batch * call.dims.heads * call.seq_q * call.seq_k <= MAX_REFERENCE_SCORES
    expected = fp32_reference(ref, inputs, kwargs) if small else None
    timings, notes = time_kernels(specs, inputs, kwargs, expected, timer=timer, attempts=attempts, repeats=repeats,
                                  sequence=sequence, keep_noisy=True)
    times = {k: Measurement(t.median_us, t.spread, "shipped", t.host_us, t.uncertain) for k, t in timings.items()}
    return times, [f"{k}: {v}" for k, v in sorted(notes.items())]


def _selected(names: Sequence[str] | None, known: Sequence[str], what: str) -> tuple[str, ...]:
    """The known names matching any pattern; a pattern list may also be comma-separated (``rms_norm,rope``)."""
    names = [n.strip() for item in names or () for n in item.split(",") if n.strip()]
    if not names:
        return tuple(known)
    out = [k for k in known if any(fnmatch.fnmatchcase(k, pat) for pat in names)]
    if not out:
        raise ValueError(f"{what}: {list(names)} match nothing; known: {', '.join(known)}")
    return tuple(out)


def run_sweep(
    out_dir: str | Path | None,
    *,
    device: str | torch.device | None = None,
    archs: Sequence[str] | None = None,
    operations: Sequence[str] | None = None,
    dtype: str | None = None,
    quick: bool = False,
    max_seconds: float = 300.0,
    max_tokens: int | None = None,
    into_cache: TuningCache | None = None,
    timer: Timer | None = None,
    on_bucket: Callable[[int, int, str], None] | None = None,
    only_missing: bool = False,
) -> SweepResult:
    """Measure, merge over any existing table at ``out_dir`` and write it (``out_dir=None``: no files).
    ``max_tokens`` keeps only buckets of at most that many tokens (re-measuring the host-bound decode-sized
    calls alone); ``into_cache`` also records the measurements as local ones in an autotune cache;
    ``only_missing`` skips the buckets the table at ``out_dir`` already holds (filling buckets added to the
    sweep since the table was made, without re-timing the rest)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cls = device_class(dev)
    dt = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    plan = dict(QUICK) if quick else {}
    arch_list = _selected(archs or plan.pop("archs", None), tuple(ARCH_DIMS), "--arch")
    plan.pop("archs", None)
    op_list = _selected(operations, OPERATIONS, "--operations")
    calls = sweep_calls(arch_list, op_list, dt, **plan)
    table = CostTable(cls, device_name(dev), library_versions(), _dt.datetime.now(_dt.timezone.utc).isoformat(
        timespec="seconds"), timer_name(dev))
    held = _existing_table(Path(out_dir), cls) if only_missing and out_dir is not None else None
    seen: set[CostBucket] = set(held.entries) if held is not None else set()
    todo = []
    for call in calls:
        bucket = call.bucket(dev)
        if bucket is not None and bucket not in seen and (max_tokens is None or bucket.tokens <= max_tokens):
            seen.add(bucket)
            todo.append((call, bucket))
    if dev.type == "cuda":
        _warm_up(dev)
    start = time.monotonic()
    done = 0
    with _many_shapes():
        for i, (call, bucket) in enumerate(todo):
            if time.monotonic() - start > max_seconds:
                table.notes.append(f"time budget {max_seconds:.0f}s spent: {done} of {len(todo)} buckets measured")
                break
            times, notes = measure_bucket(call, dev, timer=timer, attempts=2 if quick else 3)
            for kid, m in times.items():
                table.add(bucket, kid, m)
            table.notes.extend(f"{bucket.label()}: {n}" for n in notes)
            if into_cache is not None:
                steady = {k: m.cost_us for k, m in as_in_a_step(bucket, times).items()
                          if not m.noisy}  # the cache keeps no noise flag
                if steady:
                    put_costs(into_cache, cls, bucket.key(), steady, save=False)
            done += 1
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            if on_bucket is not None:
                on_bucket(i + 1, len(todo), bucket.label())
    if into_cache is not None:
        into_cache.save()
    result = SweepResult(table, None, None, len(todo), done)
    if out_dir is not None:
        _write(result, Path(out_dir))
    return result


def _existing_table(out_dir: Path, device_class_name: str) -> CostTable | None:
    """The table of ``device_class_name`` already at ``out_dir``, or None (no file, or one of another class)."""
    path = out_dir / f"{device_class_name}.json"
    old = load_table_file(path, "shipped") if path.exists() else None
    return old if old is not None and old.device_class == device_class_name else None


@contextlib.contextmanager
def _many_shapes() -> Iterator[None]:
    """torch._dynamo's recompile limit raised for the sweep. A model calls a compiled kernel (Flex) with a
    few shapes, and the limit (8 per entry point) guards against a model that recompiles every step; a
    sweep calls it with every architecture's shapes in one process and would hit the limit, after which
    Flex runs uncompiled and would be timed at a speed no model sees."""
    try:
        from torch._dynamo import config
    except ImportError:  # pragma: no cover - torch without dynamo
        yield
        return
    names = [k for k in ("recompile_limit", "accumulated_recompile_limit") if hasattr(config, k)]
    limits = {k: 1024 for k in names or [k for k in ("cache_size_limit",) if hasattr(config, k)]}
    with config.patch(**limits):
        yield


def _warm_up(device: torch.device, seconds: float = 1.0) -> None:
    """Run matrix products for about ``seconds`` so the first buckets are not timed at idle clocks (an idle
    H200 reads 345 MHz on its SMs, 1980 MHz under load)."""
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize(device)


def _write(result: SweepResult, out_dir: Path) -> None:
    """Merge over an existing table of the device class at ``out_dir`` and write both files."""
    cls = result.table.device_class
    table = result.table
    old = _existing_table(out_dir, cls)
    if old is not None:
        table = old.merged(result.table)
        table.device_name, table.versions, table.created, table.timer = (
            result.table.device_name, result.table.versions, result.table.created, result.table.timer)
        remeasured = tuple(f"{b.label()}: " for b in result.table.entries)
        kept = [n for n in old.notes if not n.startswith(remeasured) and not n.startswith("time budget")]
        table.notes = kept + result.table.notes  # an old note stays while its bucket was not measured again
    result.table = table
    result.json_path, result.summary_path = write_table(table, out_dir)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m layerzero.tuning.cost_sweep", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for <device_class>.json and .md")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when present)")
    p.add_argument("--arch", action="append", help=f"architectures (globs, repeatable): {', '.join(ARCH_DIMS)}")
    p.add_argument("--operations", action="append", help=f"operations (globs, repeatable): {', '.join(OPERATIONS)}")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop starting new buckets after this long")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="only buckets of at most this many tokens (e.g. 64: the host-bound decode-sized calls)")
    p.add_argument("--quick", action="store_true", help="one architecture, two token counts (CI, CPU)")
    p.add_argument("--into-cache", action="store_true", help="also record the times as local measurements")
    p.add_argument("--only-missing", action="store_true",
                   help="skip the buckets the table in --out already holds (fill new buckets only)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = run_sweep(args.out, device=args.device, archs=args.arch, operations=args.operations, dtype=args.dtype,
                       quick=args.quick, max_seconds=args.max_seconds, max_tokens=args.max_tokens,
                       into_cache=TuningCache() if args.into_cache else None, only_missing=args.only_missing,
                       on_bucket=lambda i, n, label: print(f"[{i}/{n}] {label}", flush=True))
    print(f"{result.buckets_done} of {result.buckets_total} buckets, {len(result.table)} measurements -> "
          f"{result.json_path} ({result.summary_path})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
