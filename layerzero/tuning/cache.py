"""The persistent autotune cache: which kernel measured fastest for an operation and shape bucket.

Entries are keyed by device name, a fingerprint of every library version that can change a kernel's
speed, the operation and the bucket. A cache written under other versions is ignored on load (and
rewritten on the next save), so upgrading torch or FlashInfer never keeps a stale choice.

The file is an optimisation, never a reason to fail a dispatch:

* It lives in the per-user cache directory (``platformdirs``: ``$XDG_CACHE_HOME/layerzero`` or
  ``~/.cache/layerzero`` on Linux, the platform's equivalent elsewhere), never the current directory,
  unless ``$LAYERZERO_TUNE_CACHE`` or ``DispatchConfig.autotune_cache_path`` names a file.
* Writes take a cross-process lock (``filelock``), merge what other processes wrote meanwhile, and
  replace the file atomically (temp file + ``os.replace``): torchrun ranks or vLLM workers tuning at
  once keep each other's entries, and a reader never sees half a file.
* Entries are schema-checked on load; bad ones are dropped with a warning.
* Any fault (unwritable directory, a directory or FIFO at the path, a lock that cannot be taken)
  turns the cache into an in-memory one for the rest of the process, with ONE warning.

Besides the autotune dispatcher's choices (keyed by its dispatch buckets), the file keeps local cost
measurements per cost bucket (:func:`cost_key`, :func:`put_costs`, :func:`cost_entries`; a bucket is
named by its canonical JSON, ``CostBucket.key()`` in :mod:`layerzero.tuning.cost_table`): the measured
ranking merges them over the shipped cost tables, so what was measured on this machine wins. A ``scope``
(a model's config hash) keeps a model's own measurements apart.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from layerzero.config_files import read_regular_file

SCHEMA = 1
CACHE_ENV = "LAYERZERO_TUNE_CACHE"
LOCK_TIMEOUT_SECONDS = 10.0
MAX_CACHE_BYTES = 64 * 1024 * 1024
COST_PREFIX = "cost|"
_TRACKED = ("layerzero-dispatch", "torch", "triton", "flash-attn", "flash_attn_3", "flashinfer-python", "xformers", "liger-kernel")


class AutotuneCacheWarning(RuntimeWarning):
    """The autotune cache file could not be used as it is (tuning goes on; see the message)."""


def default_cache_path() -> Path:
    """``$LAYERZERO_TUNE_CACHE`` when set (and not empty), else ``autotune.json`` in the per-user cache
    directory (platformdirs; an empty or relative ``$XDG_CACHE_HOME`` falls back to ``~/.cache``)."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env)
    import platformdirs

    base = Path(platformdirs.user_cache_dir("layerzero", appauthor=False))
    if not base.is_absolute():  # a relative XDG_CACHE_HOME is invalid per the spec: never the cwd
        base = Path.home() / ".cache" / "layerzero"
    return base / "autotune.json"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose kernels we time (metadata only: nothing is imported)."""
    out = {}
    for dist in _TRACKED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        out["cuda"] = str(torch.version.cuda)
    except Exception:  # pragma: no cover - torch is a hard dependency
        pass
    return out


def device_name(device: Any) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    import platform

    return f"{dev.type}:{platform.processor() or platform.machine()}"


@dataclass
class TuneEntry:
    kernel_id: str
    times_us: dict[str, float]
    rejected: dict[str, str] = field(default_factory=dict)
    measured_at: float = field(default_factory=time.time)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def entry_from_json(raw: Any) -> TuneEntry | None:
    """A :class:`TuneEntry` from its JSON form, or None when any field has the wrong shape (a hand-edited
    or foreign file must not reach the dispatcher as, say, a list where a kernel id belongs)."""
    if not isinstance(raw, dict) or not set(raw) <= {"kernel_id", "times_us", "rejected", "measured_at"}:
        return None
    kernel_id, times, rejected = raw.get("kernel_id"), raw.get("times_us"), raw.get("rejected", {})
    measured_at = raw.get("measured_at", 0.0)
    if not isinstance(kernel_id, str) or not kernel_id or not isinstance(times, dict) or kernel_id not in times:
        return None
    if not all(isinstance(k, str) and _number(v) for k, v in times.items()):
        return None
    if not isinstance(rejected, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rejected.items()):
        return None
    if not _number(measured_at):
        return None
    return TuneEntry(kernel_id, dict(times), dict(rejected), float(measured_at))


class TuningCache:
    """JSON file of tuned choices for one (device, versions) fingerprint; thread-safe; cross-process
    locked, merged and atomic writes. ``persistent`` turns False (with one warning) after the first file
    fault; ``fault`` then says what went wrong, and tuning carries on in memory."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        versions: dict[str, str] | None = None,
        lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
    ):
        self.path = Path(path) if path is not None else default_cache_path()
        self.versions = versions if versions is not None else library_versions()
        self.fingerprint = json.dumps(self.versions, sort_keys=True)
        self.lock_timeout_seconds = lock_timeout_seconds
        self._entries: dict[str, TuneEntry] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.invalidated = 0
        self.dropped = 0
        self.persistent = True
        self.fault: str | None = None
        self.load()

    @staticmethod
    def key(device: str, operation: str, bucket: Any) -> str:
        return f"{device}|{operation}|{bucket!r}"

    # ------------------------------------------------------------------ faults
    def _degrade(self, action: str, exc: BaseException) -> None:
        """Stop using the file for the rest of the process; warn once."""
        with self._lock:
            if not self.persistent:
                return
            self.persistent = False
            self.fault = f"cannot {action} {self.path} ({type(exc).__name__}: {exc})"
        warnings.warn(
            f"autotune cache: {self.fault}; tuning continues in memory for this process (choices are not "
            f"saved); fix: set ${CACHE_ENV} or DispatchConfig.autotune_cache_path to a writable file path",
            AutotuneCacheWarning, stacklevel=3,
        )

    # ------------------------------------------------------------------ reading
    def _read_disk(self, report: bool) -> dict[str, TuneEntry]:
        """Valid entries of the file for this fingerprint ({} when missing, corrupt or foreign). Raises
        OSError for a path that cannot be read at all (a directory, a FIFO, no permission)."""
        try:
            raw = read_regular_file(self.path, MAX_CACHE_BYTES)
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            if report and raw.strip():
                warnings.warn(f"autotune cache {self.path} is not valid JSON; it is ignored and rewritten on the "
                              "next save", AutotuneCacheWarning, stacklevel=3)
            return {}
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            return {}
        entries = data.get("entries")
        if data.get("fingerprint") != self.fingerprint:
            if report:
                self.invalidated = len(entries) if isinstance(entries, dict) else 0
            return {}
        if not isinstance(entries, dict):
            entries = {"<entries>": entries} if entries is not None else {}
        loaded: dict[str, TuneEntry] = {}
        bad: list[str] = []
        for k, v in entries.items():
            entry = entry_from_json(v) if isinstance(k, str) else None
            if entry is None:
                bad.append(str(k)[:80])
            else:
                loaded[k] = entry
        if bad and report:
            self.dropped += len(bad)
            warnings.warn(f"autotune cache {self.path}: dropped {len(bad)} malformed entr"
                          f"{'y' if len(bad) == 1 else 'ies'} (first: {bad[0]!r}); they are re-measured when needed",
                          AutotuneCacheWarning, stacklevel=3)
        return loaded

    def load(self) -> None:
        """Read the file; entries from other library versions are dropped (counted in ``invalidated``),
        malformed ones too (counted in ``dropped``, one warning). A path that cannot be read at all makes
        the cache in-memory (one warning)."""
        if not self.persistent:
            return
        try:
            loaded = self._read_disk(report=True)
        except (OSError, ValueError) as e:
            self._degrade("read", e)
            return
        with self._lock:
            self._entries = loaded

    # ------------------------------------------------------------------ access
    def get(self, key: str) -> TuneEntry | None:
        return self._entries.get(key)

    def put(self, key: str, entry: TuneEntry, save: bool = True) -> None:
        """Record a choice (and save it, unless ``save`` is False). Never raises for file faults."""
        with self._lock:
            self._entries[key] = entry
        if save:
            self.save()

    def save(self) -> None:
        """Merge with what other processes wrote and replace the file atomically, under a cross-process
        lock. A fault makes the cache in-memory from now on (one warning); it never raises."""
        if not self.persistent:
            return
        from filelock import FileLock, Timeout

        try:
            with self._write_lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with FileLock(f"{self.path}.lock", timeout=self.lock_timeout_seconds):
                    disk = self._read_disk(report=False)
                    with self._lock:
                        disk.update(self._entries)  # ours win over older ones on disk
                        self._entries = disk
                        payload = {
                            "schema": SCHEMA,
                            "fingerprint": self.fingerprint,
                            "versions": self.versions,
                            "entries": {k: asdict(v) for k, v in disk.items()},
                        }
                    self._write_atomic(payload)
        except (OSError, ValueError, Timeout) as e:
            self._degrade("write", e)

    def _write_atomic(self, payload: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".autotune-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> dict[str, TuneEntry]:
        return dict(self._entries)


def cost_key(device_cls: str, bucket_key: str, scope: str | None = None) -> str:
    """The cache key of local cost measurements: ``cost|<device class>|<scope or *>|<bucket key>``."""
    return f"{COST_PREFIX}{device_cls}|{scope or '*'}|{bucket_key}"


def put_costs(cache: TuningCache, device_cls: str, bucket_key: str, times_us: Mapping[str, float],
              scope: str | None = None, rejected: Mapping[str, str] | None = None, save: bool = True) -> None:
    """Record the measured times of every kernel of one bucket (the fastest is the entry's kernel_id)."""
    if not times_us:
        return
    best = min(sorted(times_us), key=times_us.__getitem__)
    cache.put(cost_key(device_cls, bucket_key, scope), TuneEntry(best, dict(times_us), dict(rejected or {})),
              save=save)


def cost_entries(cache: TuningCache, device_cls: str, scope: str | None = None) -> dict[str, dict[str, float]]:
    """Local cost measurements of one device class and scope: bucket key -> {kernel id: median us}."""
    prefix = f"{COST_PREFIX}{device_cls}|{scope or '*'}|"
    return {key[len(prefix):]: dict(entry.times_us) for key, entry in cache.entries().items()
            if key.startswith(prefix)}
