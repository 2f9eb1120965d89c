"""Dispatch telemetry: exact counts, bounded latency samples, selection-change logs.

``record`` runs on every dispatch, so it takes no lock and allocates almost nothing:

* Counts are per thread (a ``threading.local`` row per (operation, kernel)), so they are exact under any
  number of threads without a lock every call contends on; ``snapshot`` sums the rows. Counters of
  threads that have exited are folded into one "retired" table, so memory follows the live threads.
* Latencies go into one bounded ring per kernel and one for all calls (``max_samples`` each, a
  ``deque(maxlen=...)``: one C-level append per sample, atomic under the GIL): percentiles describe the
  most recent calls, and memory is bounded whatever the traffic.
* A caller that records the same (operation, kernel) pair call after call (a bound call site's cache
  hits) takes a recorder for it (``hit_recorder``) that has the row and the ring at hand.

Failures (``record_failure``) and selection changes (``record_selection``) are rare and take a lock.
A selection change emits one structured record on the ``layerzero.selection`` logger (``extra`` carries
``operation``, ``old_kernel``, ``new_kernel`` and ``context``), so a server can see when and why the
kernel serving an operation changed without logging anything on the hot path.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from layerzero.errors import describe_failure

__all__ = ["DispatchTelemetry", "KernelStats", "OperationStats", "TelemetrySnapshot"]

selection_log = logging.getLogger("layerzero.selection")


@dataclass(frozen=True)
class KernelStats:
    """One kernel's share of the traffic. Latencies are microseconds over its recent samples."""

    kernel_id: str
    calls: int = 0
    failures: int = 0
    fallback_calls: int = 0  # calls this kernel served as a fallback
    cache_hits: int = 0
    mean_us: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class OperationStats:
    operation: str
    calls: int = 0
    fallbacks: int = 0
    failures: int = 0
    kernels: dict[str, int] = field(default_factory=dict)  # kernel_id -> calls served


@dataclass(frozen=True)
class TelemetrySnapshot:
    """A consistent-enough picture for dashboards: counts are exact as of the moment each thread's row
    was read; latency percentiles come from the most recent ``max_samples`` calls."""

    dispatch_count: int
    cache_hits: int
    cache_hit_rate: float
    fallback_count: int
    failure_count: int
    mean_latency_us: float | None
    p50_latency_us: float | None
    p99_latency_us: float | None
    per_kernel: dict[str, KernelStats]
    per_operation: dict[str, int]
    operations: dict[str, OperationStats]
    selection_changes: int
    uptime_seconds: float
    enabled: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Ring(deque):
    """A kernel's (or all calls') most recent latency samples, in ns: a ``deque`` bounded to
    ``max_samples``, so a sample costs one C-level append and the oldest falls out."""

    def __init__(self, n: int):
        super().__init__((), n)

    def samples(self) -> list[int]:
        return list(self)  # one C-level copy: no recording thread can interleave with it


class _ThreadRows:
    """One thread's counters: (operation, kernel_id) -> [calls, cache_hits, fallbacks, total_ns] for
    ``record``, and -> [calls, total_ns] for hit recorders, whose every call is a cache hit and none a
    fallback (two increments a call where a full row takes three)."""

    __slots__ = ("rows", "hits", "thread")

    def __init__(self, thread: threading.Thread):
        self.rows: dict[tuple[str, str], list[int]] = {}
        self.hits: dict[tuple[str, str], list[int]] = {}
        self.thread = thread

    def counted(self) -> list[tuple[tuple[str, str], list[int]]]:
        """Both tables as full rows (copies; a row read while its thread writes is a moment's count)."""
        out = [(key, list(row)) for key, row in list(self.rows.items())]
        for key, (n, total_ns) in list(self.hits.items()):
            out.append((key, [n, n, 0, total_ns]))
        return out

    def zero(self) -> None:
        for table in (self.rows, self.hits):
            for row in table.values():
                row[:] = [0] * len(row)


def _percentile(sorted_samples: list[int], q: float) -> float | None:
    """Nearest-rank percentile in microseconds (a value that was actually observed)."""
    n = len(sorted_samples)
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    return sorted_samples[rank - 1] / 1000.0


def _snapshot_field(name: str, kind: Any) -> property:
    """A read-only attribute returning ``snapshot().<name>`` (of type ``kind``)."""

    def read(self: "DispatchTelemetry") -> Any:
        return getattr(self.snapshot(), name)

    read.__annotations__["return"] = kind
    return property(read, doc=f"``snapshot().{name}``.")


def _context_fields(context: Any) -> Any:
    """The informative fields of a SelectionContext (defaults dropped) for structured logs."""
    as_dict = getattr(context, "as_dict", None)
    if as_dict is None:
        return context
    return {k: v for k, v in as_dict().items() if v not in (None, False, (), 0.0) or k == "is_causal"}


class DispatchTelemetry:
    """Counters and latency samples of a dispatcher. Shared by every dispatcher of an orchestrator (and
    by every config version of a hot-reload dispatcher), so totals survive policy swaps."""

    def __init__(self, enabled: bool = True, max_samples: int = 2048, clock=time.monotonic):
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"DispatchTelemetry.max_samples: expected an integer >= 1, got {max_samples!r}")
        self.enabled = bool(enabled)
        self.max_samples = max_samples
        self._clock = clock
        self._lock = threading.Lock()
        # Threads' rows and the sample rings live as long as this object: ``reset`` zeroes and clears them
        # in place, so what a hit recorder holds stays the live row and ring.
        self._local = threading.local()
        self._threads: list[_ThreadRows] = []
        self._rings: dict[str, _Ring] = {}
        self._all = _Ring(max_samples)
        self._init_state()

    def _init_state(self) -> None:
        self._retired: dict[tuple[str, str], list[int]] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._last_error: dict[str, str | None] = {}
        self._selected: dict[str, str] = {}
        self._selection_changes = 0
        self._started = self._clock()

    # ------------------------------------------------------------------ hot path
    def record(
        self,
        operation: str,
        kernel_id: str,
        total_ns: int,
        cache_hit: bool = False,
        was_fallback: bool = False,
        failed: Iterable[str] = (),
    ) -> None:
        """One completed dispatch. ``failed`` names the kernels the call fell through (informational:
        their failures are counted by ``record_failure``, which the executor calls for each)."""
        if not self.enabled:
            return
        try:
            rows = self._local.rows
        except AttributeError:
            rows = self._register().rows
        key = (operation, kernel_id)
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0, 0, 0, 0]
        row[0] += 1
        if cache_hit:
            row[1] += 1
        if was_fallback:
            row[2] += 1
        row[3] += total_ns
        ring = self._rings.get(kernel_id)
        if ring is None:
            ring = self._ring_for(kernel_id)
        ring.append(total_ns)
        self._all.append(total_ns)

    def hit_recorder(self, operation: str, kernel_id: str) -> Callable[[int], None]:
        """``fn(total_ns)``, the same as ``record(operation, kernel_id, total_ns, cache_hit=True)``, for a
        caller that records this one pair call after call (a bound call site's hits): the calling thread's
        row is kept in a thread-local of its own and the rings' appends are bound once, so a call costs
        the increments and two appends. Counts stay exact per thread; ``enabled`` is read every call."""
        key = (operation, kernel_id)
        ring = self._rings.get(kernel_id)
        if ring is None:
            ring = self._ring_for(kernel_id)
        to_kernel, to_all = ring.append, self._all.append
        mine = threading.local()  # .row: this thread's [calls, total_ns] for ``key``
        row_for = self._hit_row

        def record_hit(total_ns: int) -> None:
            if not self.enabled:
                return
            try:
                row = mine.row
            except AttributeError:
                row = mine.row = row_for(key)
            row[0] += 1
            row[1] += total_ns
            to_kernel(total_ns)
            to_all(total_ns)

        return record_hit

    def _hit_row(self, key: tuple[str, str]) -> list[int]:
        """The calling thread's hit row for ``key`` (created, with the thread's tables, on first use)."""
        try:
            hits = self._local.hits
        except AttributeError:
            hits = self._register().hits
        row = hits.get(key)
        if row is None:
            row = hits[key] = [0, 0]
        return row

    def _register(self) -> _ThreadRows:
        t = _ThreadRows(threading.current_thread())
        with self._lock:
            self._threads.append(t)
            if len(self._threads) % 64 == 0:
                self._retire_dead_locked()
        self._local.rows = t.rows
        self._local.hits = t.hits
        return t

    def _ring_for(self, kernel_id: str) -> _Ring:
        with self._lock:
            r = self._rings.get(kernel_id)
            if r is None:
                r = self._rings[kernel_id] = _Ring(self.max_samples)
        return r

    def _retire_dead_locked(self) -> None:
        alive = []
        for t in self._threads:
            if t.thread.is_alive():
                alive.append(t)
                continue
            for key, row in t.counted():
                acc = self._retired.get(key)
                if acc is None:
                    self._retired[key] = list(row)
                else:
                    for i, v in enumerate(row):
                        acc[i] += v
        self._threads = alive

    # ------------------------------------------------------------------ slow paths
    def record_failure(self, operation: str, kernel_id: str | None, exc: BaseException | str | None = None) -> None:
        """One failed kernel attempt (it raised, or its output failed the check)."""
        if not self.enabled:
            return
        kid = kernel_id or "<none>"
        with self._lock:
            key = (operation, kid)
            self._failures[key] = self._failures.get(key, 0) + 1
            self._last_error[kid] = describe_failure(exc)

    def record_selection(self, operation: str, kernel_id: str, context: Any = None) -> bool:
        """Note the kernel chosen for ``operation``; log one structured record when it differs from the
        previous choice. Returns whether it changed."""
        if not self.enabled or self._selected.get(operation) == kernel_id:
            return False
        with self._lock:
            old = self._selected.get(operation)
            if old == kernel_id:
                return False
            self._selected[operation] = kernel_id
            self._selection_changes += 1
        if selection_log.isEnabledFor(logging.INFO):
            ctx = _context_fields(context)
            selection_log.info(
                "kernel for %s: %s -> %s",
                operation,
                old,
                kernel_id,
                extra={"operation": operation, "old_kernel": old, "new_kernel": kernel_id, "context": ctx},
            )
        return True

    def selected_kernels(self) -> dict[str, str]:
        """The last kernel chosen per operation."""
        return dict(self._selected)

    def reset(self) -> None:
        """Forget everything. Calls recorded concurrently with a reset may land before or after it.

        Rows and rings are zeroed and cleared in place (not replaced): recorders holding them keep
        counting into the live tables, and a row left at zero calls is not reported."""
        with self._lock:
            self._init_state()
            for t in self._threads:
                t.zero()
            for ring in (*self._rings.values(), self._all):
                ring.clear()

    # ------------------------------------------------------------------ reading
    def _merged_rows(self) -> dict[tuple[str, str], list[int]]:
        with self._lock:
            self._retire_dead_locked()
            threads = list(self._threads)
            merged = {k: list(v) for k, v in self._retired.items()}
        for t in threads:
            for key, vals in t.counted():
                acc = merged.get(key)
                if acc is None:
                    merged[key] = vals
                else:
                    for i, v in enumerate(vals):
                        acc[i] += v
        return merged

    def snapshot(self) -> TelemetrySnapshot:
        rows = self._merged_rows()
        with self._lock:
            failures = dict(self._failures)
            last_error = dict(self._last_error)
            rings = dict(self._rings)
            changes = self._selection_changes
            started = self._started
        calls = hits = fallbacks = total_ns = 0
        by_kernel: dict[str, list[int]] = {}
        ops: dict[str, dict[str, Any]] = {}
        for (op, kid), (c, h, f, ns) in rows.items():
            if not c:  # zeroed by a reset, not called since
                continue
            calls += c
            hits += h
            fallbacks += f
            total_ns += ns
            k = by_kernel.setdefault(kid, [0, 0, 0, 0])
            k[0] += c
            k[1] += h
            k[2] += f
            k[3] += ns
            o = ops.setdefault(op, {"calls": 0, "fallbacks": 0, "failures": 0, "kernels": {}})
            o["calls"] += c
            o["fallbacks"] += f
            o["kernels"][kid] = o["kernels"].get(kid, 0) + c
        kernel_failures: dict[str, int] = {}
        for (op, kid), n in failures.items():
            kernel_failures[kid] = kernel_failures.get(kid, 0) + n
            o = ops.setdefault(op, {"calls": 0, "fallbacks": 0, "failures": 0, "kernels": {}})
            o["failures"] += n
        per_kernel: dict[str, KernelStats] = {}
        for kid in sorted(set(by_kernel) | set(kernel_failures)):
            c, h, f, ns = by_kernel.get(kid, (0, 0, 0, 0))
            ring = rings.get(kid)
            samples = sorted(ring.samples()) if ring is not None else []
            per_kernel[kid] = KernelStats(
                kernel_id=kid,
                calls=c,
                failures=kernel_failures.get(kid, 0),
                fallback_calls=f,
                cache_hits=h,
                mean_us=(ns / c / 1000.0) if c else None,
                p50_us=_percentile(samples, 0.50),
                p99_us=_percentile(samples, 0.99),
                last_error=last_error.get(kid),
            )
        all_samples = sorted(self._all.samples())
        return TelemetrySnapshot(
            dispatch_count=calls,
            cache_hits=hits,
            cache_hit_rate=hits / calls if calls else 0.0,
            fallback_count=fallbacks,
            failure_count=sum(failures.values()),
            mean_latency_us=(total_ns / calls / 1000.0) if calls else None,
            p50_latency_us=_percentile(all_samples, 0.50),
            p99_latency_us=_percentile(all_samples, 0.99),
            per_kernel=per_kernel,
            per_operation={op: o["calls"] for op, o in sorted(ops.items())},
            operations={
                op: OperationStats(op, o["calls"], o["fallbacks"], o["failures"], dict(o["kernels"]))
                for op, o in sorted(ops.items())
            },
            selection_changes=changes,
            uptime_seconds=self._clock() - started,
            enabled=self.enabled,
        )

    # Attribute-style access for code that reads telemetry as attributes (``telemetry.cache_hit_rate``):
    # each reads a fresh snapshot, as the same field of :meth:`snapshot` would.
    dispatch_count = _snapshot_field("dispatch_count", int)
    cache_hit_rate = _snapshot_field("cache_hit_rate", float)
    fallback_count = _snapshot_field("fallback_count", int)
    failure_count = _snapshot_field("failure_count", int)
    p50_latency_us = _snapshot_field("p50_latency_us", float | None)
    p99_latency_us = _snapshot_field("p99_latency_us", float | None)

    def __repr__(self) -> str:
        s = self.snapshot()
        return (
            f"DispatchTelemetry(dispatches={s.dispatch_count}, hit_rate={s.cache_hit_rate:.1%}, "
            f"fallbacks={s.fallback_count}, failures={s.failure_count})"
        )
