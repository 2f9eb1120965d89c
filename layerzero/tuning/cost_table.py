"""Cost tables: measured kernel times per call bucket, for one device class and one set of library versions.

A hand-set priority says which kernel *should* be fastest; a cost table says which one *was*, on this kind
of device. The measured ranking (:mod:`layerzero.selection.measured_ranking`) reads these tables.

What is measured — a call's :class:`~layerzero.tuning.cost_bucket.CostBucket` and a kernel's
:class:`~layerzero.tuning.cost_bucket.Measurement` in it — is defined in :mod:`layerzero.tuning.cost_bucket`
(its names are importable from here too).

Where tables come from, lowest precedence first (a later source's time for the same kernel and bucket
replaces an earlier one):

1. shipped: package data ``layerzero/data/costs/<device_class>.json`` (found by :func:`layerzero.data_files.packaged_data_file`);
2. user: ``$LAYERZERO_COST_TABLE`` (a JSON file, or a directory holding ``<device_class>.json``), or an
   explicit path;
3. local: measurements made on this very machine, kept in the autotune cache
   (:class:`~layerzero.tuning.cache.TuningCache`, see :func:`layerzero.tuning.cache.cost_entries`).

A table is schema-checked on load; a bad one is ignored with ONE warning naming the field, never an error
on the dispatch path.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from layerzero.config_files import read_regular_file
from layerzero.data_files import packaged_data_file
from layerzero.context.call_context import dtype_name
from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.tuning.cost_bucket import (
    DEVICE_BOUND_ELEMENTS,
    CostBucket,
    Measurement,
    as_in_a_step,
    bucket_for,
    call_cost,
    context_device_class,
    device_class,
    pow2_ceil,
)

__all__ = [
    "COST_TABLE_ENV", "MAX_LOG2_DISTANCE", "SCHEMA", "CostBucket", "CostTable", "CostTableSource", "CostTableWarning",
    "Measurement", "bucket_for", "call_cost", "context_device_class", "device_class", "load_table_file",
    "pow2_ceil", "shipped_table", "summary_markdown", "table_from_json", "user_table", "write_table",
]

SCHEMA = 1
COST_TABLE_ENV = "LAYERZERO_COST_TABLE"
MAX_TABLE_BYTES = 32 * 1024 * 1024
# Nearest-bucket lookup: at most this far in log2 units (tokens + KV length together), i.e. a call 4x
# longer than any measured bucket has no measurement rather than a misleading one.
MAX_LOG2_DISTANCE = 2.0

class CostTableWarning(RuntimeWarning):
    """A cost table could not be used (it is ignored; ranking falls back to priorities)."""


@dataclass
class CostTable:
    """Measured times per bucket and kernel for one device class under one set of versions."""

    device_class: str
    device_name: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    timer: str = ""
    entries: dict[CostBucket, dict[str, Measurement]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _families: dict[tuple, list[CostBucket]] | None = field(default=None, init=False, repr=False, compare=False)

    def add(self, bucket: CostBucket, kernel_id: str, measurement: Measurement) -> None:
        self.entries.setdefault(bucket, {})[kernel_id] = measurement
        self._families = None

    def merged(self, other: "CostTable | None") -> "CostTable":
        """A new table: this one with ``other``'s measurements on top (same kernel and bucket: other wins)."""
        out = CostTable(self.device_class, self.device_name, dict(self.versions), self.created, self.timer,
                        {b: dict(k) for b, k in self.entries.items()}, list(self.notes))
        if other is not None:
            for bucket, kernels in other.entries.items():
                out.entries.setdefault(bucket, {}).update(kernels)
            out.notes.extend(other.notes)
        return out

    def lookup(self, bucket: CostBucket) -> tuple[CostBucket, dict[str, Measurement]] | None:
        """The measurements of ``bucket``, or of the nearest measured bucket of the same family (log2
        distance in tokens plus KV length, at most :data:`MAX_LOG2_DISTANCE`; ties go to the smaller
        bucket), or None. They come as a model step sees a call of ``bucket``: without issue times where
        those cannot decide (:func:`~layerzero.tuning.cost_bucket.issue_time_counts`)."""
        found = self._measured_near(bucket)
        return None if found is None else (found[0], as_in_a_step(bucket, found[1]))

    def _measured_near(self, bucket: CostBucket) -> tuple[CostBucket, dict[str, Measurement]] | None:
        exact = self.entries.get(bucket)
        if exact:
            return bucket, exact
        if self._families is None:
            families: dict[tuple, list[CostBucket]] = {}
            for b in sorted(self.entries, key=_sort_key):
                families.setdefault(b.family, []).append(b)
            self._families = families
        best: tuple[float, int, int, CostBucket] | None = None
        for b in self._families.get(bucket.family, ()):
            d = _log2_distance(bucket, b)
            if d <= MAX_LOG2_DISTANCE:
                cand = (d, b.tokens, b.kv_len or 0, b)
                if best is None or cand[:3] < best[:3]:
                    best = cand
        return (best[3], self.entries[best[3]]) if best is not None else None

    def __len__(self) -> int:
        return sum(len(k) for k in self.entries.values())

    def as_json(self) -> dict[str, Any]:
        rows = []
        for bucket in sorted(self.entries, key=_sort_key):
            for kid, m in sorted(self.entries[bucket].items()):
                row = {**bucket.as_json(), "kernel_id": kid, "median_us": round(m.median_us, 4),
                       "spread": round(m.spread, 4)}
                if m.host_us is not None:
                    row["host_us"] = round(m.host_us, 4)
                if m.noisy:
                    row["noisy"] = True
                rows.append(row)
        return {"schema": SCHEMA, "device_class": self.device_class, "device_name": self.device_name,
                "versions": dict(sorted(self.versions.items())), "created": self.created, "timer": self.timer,
                "notes": list(self.notes), "entries": rows}


def _sort_key(bucket: CostBucket) -> tuple:
    return bucket.sort_key


def _log2_distance(a: CostBucket, b: CostBucket) -> float:
    d = abs(math.log2(a.tokens) - math.log2(b.tokens))
    if a.kv_len is not None and b.kv_len is not None:
        d += abs(math.log2(a.kv_len) - math.log2(b.kv_len))
    return d


# ---------------------------------------------------------------------- validation
def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _time(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _option_value(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _entry(raw: Any, where: str, problems: list[ValidationProblem], source: str
           ) -> tuple[CostBucket, str, Measurement] | None:
    if not isinstance(raw, Mapping):
        problems.append(ValidationProblem(where, raw, "an entry is a mapping with operation, dtype, dims, tokens, "
                                          "kernel_id and median_us"))
        return None
    before = len(problems)
    allowed = {"operation", "dtype", "dims", "tokens", "kv_len", "options", "kernel_id", "median_us", "spread",
               "host_us", "noisy"}
    for key in raw:
        if key not in allowed:
            problems.append(ValidationProblem(f"{where}.{key}", raw[key], f"unknown field; use {sorted(allowed)}"))
    for key in ("operation", "dtype", "kernel_id"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            problems.append(ValidationProblem(f"{where}.{key}", raw.get(key), "expected a non-empty string"))
    dims = raw.get("dims")
    if not isinstance(dims, Mapping) or not dims or not all(
            isinstance(k, str) and _positive_int(v) for k, v in dims.items()):
        problems.append(ValidationProblem(f"{where}.dims", dims, "expected a mapping of dimension names to "
                                          "positive integers"))
    tokens, kv = raw.get("tokens"), raw.get("kv_len")
    for key, value in (("tokens", tokens), ("kv_len", kv)):
        if (key == "tokens" or value is not None) and not (_positive_int(value) and pow2_ceil(value) == value):
            problems.append(ValidationProblem(f"{where}.{key}", value, "expected a power of two >= 1"))
    options = raw.get("options", {})
    if not isinstance(options, Mapping) or not all(isinstance(k, str) and _option_value(v)
                                                   for k, v in options.items()):
        problems.append(ValidationProblem(f"{where}.options", options, "expected a mapping of option names to "
                                          "null, booleans, numbers or strings"))
    if not _time(raw.get("median_us")) or not raw.get("median_us"):
        problems.append(ValidationProblem(f"{where}.median_us", raw.get("median_us"),
                                          "expected a positive finite number of microseconds"))
    if "spread" in raw and not _time(raw["spread"]):
        problems.append(ValidationProblem(f"{where}.spread", raw["spread"], "expected a finite number >= 0"))
    if "noisy" in raw and not isinstance(raw["noisy"], bool):
        problems.append(ValidationProblem(f"{where}.noisy", raw["noisy"], "expected true or false"))
    if raw.get("host_us") is not None and not _time(raw["host_us"]):
        problems.append(ValidationProblem(f"{where}.host_us", raw["host_us"],
                                          "expected a finite number of microseconds >= 0, or null"))
    if len(problems) != before:
        return None
    bucket = CostBucket(raw["operation"], dtype_name(raw["dtype"]), tuple(sorted(dims.items())), tokens, kv,
                        tuple(sorted(options.items())))
    host = raw.get("host_us")
    return bucket, raw["kernel_id"], Measurement(float(raw["median_us"]), float(raw.get("spread", 0.0)), source,
                                                 None if host is None else float(host), bool(raw.get("noisy", False)))


def table_from_json(data: Any, source: str = "shipped", origin: str | None = None) -> CostTable:
    """A :class:`CostTable` from its JSON form. Raises ConfigValidationError listing every problem, each
    with its field path (``entries[3].median_us: expected a positive ...``)."""
    problems: list[ValidationProblem] = []
    if not isinstance(data, Mapping):
        raise ConfigValidationError([ValidationProblem("<document>", type(data).__name__,
                                                       "a cost table is a JSON object", origin)], source=origin)
    if data.get("schema") != SCHEMA:
        problems.append(ValidationProblem("schema", data.get("schema"), f"expected {SCHEMA}"))
    cls = data.get("device_class")
    if not isinstance(cls, str) or not cls:
        problems.append(ValidationProblem("device_class", cls, "expected a device class such as 'sm90' or 'cpu'"))
    versions = data.get("versions", {})
    if not isinstance(versions, Mapping) or not all(isinstance(v, str) for v in versions.values()):
        problems.append(ValidationProblem("versions", versions, "expected a mapping of library names to versions"))
    for key in ("device_name", "created", "timer"):
        if not isinstance(data.get(key, ""), str):
            problems.append(ValidationProblem(key, data.get(key), "expected a string"))
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        problems.append(ValidationProblem("notes", notes, "expected a list of strings"))
    rows = data.get("entries")
    if not isinstance(rows, list):
        problems.append(ValidationProblem("entries", rows, "expected a list of measurements"))
        rows = []
    table = CostTable(cls if isinstance(cls, str) else "", str(data.get("device_name", "")),
                      dict(versions) if isinstance(versions, Mapping) else {}, str(data.get("created", "")),
                      str(data.get("timer", "")), notes=list(notes) if isinstance(notes, list) else [])
    for i, raw in enumerate(rows):
        parsed = _entry(raw, f"entries[{i}]", problems, source)
        if parsed is not None:
            table.add(*parsed)
    if problems:
        raise ConfigValidationError([ValidationProblem(p.field, p.value, p.message, origin) for p in problems],
                                    source=origin)
    return table


# ---------------------------------------------------------------------- loading
def _warn_ignored(origin: str, why: str) -> None:
    warnings.warn(f"cost table {origin} is ignored ({why}); kernels are ranked without it", CostTableWarning,
                  stacklevel=4)


def _parse(raw: bytes, source: str, origin: str) -> CostTable | None:
    try:
        return table_from_json(json.loads(raw.decode("utf-8")), source, origin)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        first = e.problems[0] if isinstance(e, ConfigValidationError) and e.problems else e
        _warn_ignored(origin, str(first))
        return None


def load_table_file(path: str | os.PathLike, source: str = "user") -> CostTable | None:
    """A table from a file; None with one warning when it is missing, unreadable or invalid."""
    try:
        raw = read_regular_file(Path(path), MAX_TABLE_BYTES)
    except (OSError, ValueError) as e:
        _warn_ignored(str(path), f"{type(e).__name__}: {e}")
        return None
    return _parse(raw, source, str(path))


def shipped_table(device_cls: str) -> CostTable | None:
    """The table shipped as package data for ``device_cls``, or None when there is none."""
    path = packaged_data_file(f"costs/{device_cls}.json")
    if path is None:
        return None
    try:
        raw = path.read_bytes()
    except OSError as e:
        _warn_ignored(str(path), f"{type(e).__name__}: {e}")
        return None
    return _parse(raw, "shipped", f"layerzero/data/costs/{device_cls}.json")


def user_table(device_cls: str, path: str | os.PathLike | None = None) -> CostTable | None:
    """The user's table: ``path`` or ``$LAYERZERO_COST_TABLE`` (a file, or a directory holding
    ``<device_class>.json``); a table for another device class is ignored."""
    chosen = path if path is not None else os.environ.get(COST_TABLE_ENV, "").strip() or None
    if chosen is None:
        return None
    p = Path(chosen)
    if p.is_dir():
        p = p / f"{device_cls}.json"
        if not p.exists():
            return None
    table = load_table_file(p, "user")
    if table is not None and table.device_class != device_cls:
        return None
    return table


class CostTableSource:
    """Merged tables per device class (shipped < user < local cache), loaded once and kept: a ranking asks
    on every selection-cache miss and must not read files there. :meth:`invalidate` forgets them (after a
    tuning pass wrote new local measurements)."""

    def __init__(self, user_path: str | os.PathLike | None = None, cache: Any = None, use_local: bool = True,
                 scopes: Iterable[str] = ()):
        self.user_path = user_path
        self._cache = cache
        self.use_local = use_local
        self.scopes = tuple(scopes)
        self._tables: dict[str, CostTable | None] = {}
        self._lock = threading.Lock()

    def __call__(self, device_cls: str) -> CostTable | None:
        table = self._tables.get(device_cls, _MISSING)
        if table is _MISSING:
            with self._lock:
                table = self._tables.get(device_cls, _MISSING)
                if table is _MISSING:
                    table = self._tables[device_cls] = self._load(device_cls)
        return table  # type: ignore[return-value]

    def _load(self, device_cls: str) -> CostTable | None:
        merged = CostTable(device_cls)
        layers = [shipped_table(device_cls), user_table(device_cls, self.user_path)]
        if self.use_local:
            layers.extend(self._local(device_cls))
        found = False
        for layer in layers:
            if layer is not None and layer.entries:
                merged = merged.merged(layer)
                found = True
        return merged if found else None

    def _local(self, device_cls: str) -> list[CostTable]:
        from layerzero.tuning.cache import TuningCache, cost_entries

        cache = self._cache if self._cache is not None else TuningCache()
        out = []
        for scope in (None, *self.scopes):  # general local measurements, then each scope's (a model's) on top
            table = CostTable(device_cls)
            for key, kernels in cost_entries(cache, device_cls, scope).items():
                bucket = CostBucket.from_key(key)
                for kid, us in kernels.items() if bucket is not None else ():
                    table.add(bucket, kid, Measurement(us, 0.0, "local" if scope is None else "model"))
            out.append(table)
        return out

    def invalidate(self) -> None:
        with self._lock:
            self._tables.clear()


_MISSING: Any = object()

def summary_markdown(table: CostTable) -> str:
    """One row per bucket: the cheapest kernel, its cost, and every other kernel's cost relative to it. A
    cost is the device time, or the host issue time where that is larger and can decide (marked "host")."""
    lines = [f"# Cost table `{table.device_class}`", "",
             f"Device: {table.device_name or '?'}; measured {table.created or '?'} with {table.timer or '?'}; "
             f"versions: {', '.join(f'{k} {v}' for k, v in sorted(table.versions.items())) or '?'}.", "",
             "Cost = device time, or the host time to issue the call where that is larger (\"host\": the call "
             f"is host-bound; never in buckets of 2**{DEVICE_BOUND_ELEMENTS.bit_length() - 1} elements or more on "
             "the token side, whose model steps keep the GPU busy); \"noisy\": a device time that never held "
             "still, ranked only where decisive.", "",
             "| bucket | cheapest | µs | others (x costlier) |", "| --- | --- | ---: | --- |"]

    def marks(m: Measurement) -> str:
        return (" host" if m.host_us is not None and m.host_us > m.median_us else "") + (" noisy" if m.noisy else "")

    for bucket in sorted(table.entries, key=_sort_key):
        (best_id, best), *rest = sorted(as_in_a_step(bucket, table.entries[bucket]).items(),
                                        key=lambda kv: (kv[1].cost_us, kv[0]))
        others = ", ".join(f"{k} {m.cost_us / best.cost_us:.2f}{marks(m)}" for k, m in rest)
        lines.append(f"| {bucket.label()} | {best_id}{marks(best)} | {best.cost_us:.1f} | {others or '-'} |")
    return "\n".join(lines + (["", "## Notes", ""] + [f"- {n}" for n in table.notes] if table.notes else [])) + "\n"


def write_table(table: CostTable, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<device_class>.json`` and its markdown summary ``<device_class>.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, summary = out / f"{table.device_class}.json", out / f"{table.device_class}.md"
    path.write_text(json.dumps(table.as_json(), indent=1) + "\n")
    summary.write_text(summary_markdown(table))
    return path, summary


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m layerzero.tuning.cost_table merge DIR... --out DIR``: merge the tables of several sweeps
    (e.g. one per GPU and operation group) per device class; a later directory wins for the same kernel
    and bucket."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m layerzero.tuning.cost_table")
    p.add_argument("command", choices=["merge"])
    p.add_argument("inputs", nargs="+", type=Path, help="directories (or files) of cost tables")
    p.add_argument("--out", type=Path, required=True, help="directory for the merged <device_class>.json/.md")
    args = p.parse_args(list(argv) if argv is not None else None)
    merged: dict[str, CostTable] = {}
    for item in args.inputs:
        for f in sorted(item.glob("*.json")) if item.is_dir() else [item]:
            table = load_table_file(f, "shipped")
            if table is not None:
                cls = table.device_class
                merged[cls] = merged[cls].merged(table) if cls in merged else table
    for table in merged.values():
        print(f"{len(table)} measurements -> {write_table(table, args.out)[0]}")
    return 0 if merged else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
