"""The persistent autotune cache: which kernel measured fastest for an operation and shape bucket.

Entries are keyed by device name, a fingerprint of every library version that can change a kernel's
speed, the operation and the bucket. A cache written under other versions is ignored on load (and
rewritten on the next save), so upgrading torch or FlashInfer never keeps a stale choice.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = 1
CACHE_ENV = "LAYERZERO_TUNE_CACHE"
_TRACKED = ("layerzero", "torch", "triton", "flash-attn", "flash_attn_3", "flashinfer-python", "xformers", "liger-kernel")


def default_cache_path() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "layerzero" / "autotune.json"


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


class TuningCache:
    """JSON file of tuned choices for one (device, versions) fingerprint; thread-safe; atomic writes."""

    def __init__(self, path: str | os.PathLike | None = None, versions: dict[str, str] | None = None):
        self.path = Path(path) if path is not None else default_cache_path()
        self.versions = versions if versions is not None else library_versions()
        self.fingerprint = json.dumps(self.versions, sort_keys=True)
        self._entries: dict[str, TuneEntry] = {}
        self._lock = threading.Lock()
        self.invalidated = 0
        self.load()

    @staticmethod
    def key(device: str, operation: str, bucket: Any) -> str:
        return f"{device}|{operation}|{bucket!r}"

    def load(self) -> None:
        """Read the file; entries from other library versions are dropped (counted in ``invalidated``)."""
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, OSError, UnicodeDecodeError):
            return
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            return
        entries = data.get("entries", {})
        if data.get("fingerprint") != self.fingerprint:
            self.invalidated = len(entries) if isinstance(entries, dict) else 0
            return
        loaded = {}
        for k, v in (entries or {}).items():
            try:
                loaded[k] = TuneEntry(**v)
            except TypeError:
                continue
        with self._lock:
            self._entries = loaded

    def get(self, key: str) -> TuneEntry | None:
        return self._entries.get(key)

    def put(self, key: str, entry: TuneEntry, save: bool = True) -> None:
        with self._lock:
            self._entries[key] = entry
        if save:
            self.save()

    def save(self) -> None:
        with self._lock:
            payload = {
                "schema": SCHEMA,
                "fingerprint": self.fingerprint,
                "versions": self.versions,
                "entries": {k: asdict(v) for k, v in self._entries.items()},
            }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".autotune-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> dict[str, TuneEntry]:
        return dict(self._entries)
