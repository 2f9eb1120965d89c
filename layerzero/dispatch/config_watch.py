"""Poll a config file and report each new content, by hash.

Why content hashes and not mtimes or inotify: the ways configs really change defeat the other two.
Editors save by writing a temp file and renaming it over the original (new inode, mtime may not move);
Kubernetes ConfigMaps swap a ``..data`` symlink to a fresh timestamped directory (the watched path's own
inode and mtime never change); ``echo > file`` truncates then writes, so a poll can catch it half-written.
Opening the path follows every symlink to whatever it points at *now*, and hashing what was read ties
the reported content to the exact bytes that will be parsed (the callback gets the bytes; it never
re-reads the file, which could have changed again in between).

A content that differs from the last one seen is reported once; the consumer decides whether it is
valid. A half-written file is simply a content that fails to parse: the next poll sees the finished
file (a new hash) and reports that. A read that overlaps a rewrite (old bytes, then new ones) is never
reported: contents are read until two reads agree (:func:`read_config_bytes`). A missing or unreadable file is reported once as ``data=None`` with
the error, and again only after a different state has been seen.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Callable

__all__ = ["ConfigWatcher", "read_config_bytes", "MAX_CONFIG_BYTES"]

_log = logging.getLogger("layerzero.hot_reload")

MAX_CONFIG_BYTES = 4 * 1024 * 1024

# callback(data, digest, error): data is the file's bytes (None when it could not be read, with error set).
ChangeCallback = Callable[["bytes | None", str, "OSError | None"], None]


def _read_once(path: str) -> tuple[bytes | None, str, OSError | None]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        # Distinct error kinds are distinct states (missing, then unreadable, is two reports).
        return None, f"<unreadable:{type(e).__name__}:{e.errno}>", e
    return data, hashlib.sha256(data).hexdigest(), None


def read_config_bytes(path: str, max_reads: int = 8) -> tuple[bytes | None, str, OSError | None]:
    """The file's bytes and their sha256, or (None, a digest naming the error, the error).

    A read that overlaps an in-place rewrite (``echo > file``) can return the old bytes up to some offset
    and the new bytes after it: a content the file never held, which may even parse as a valid policy that
    nobody wrote. So the file is read until two consecutive reads agree (at most ``max_reads`` times):
    what is returned was the file's content at some moment (empty, or a prefix while a writer is still
    writing, which fails to parse as a whole)."""
    prev = _read_once(path)
    for _ in range(max_reads - 1):
        cur = _read_once(path)
        if cur[1] == prev[1]:
            return cur
        prev = cur
    return prev


class ConfigWatcher:
    """A daemon thread that calls ``callback(data, digest, error)`` whenever the content at ``path``
    differs from the last content it saw. ``poll_once`` runs one check in the caller's thread (tests,
    and callers that want to force a check)."""

    def __init__(
        self,
        path: str,
        callback: ChangeCallback,
        interval_seconds: float = 1.0,
        initial_digest: str | None = None,
        name: str = "layerzero-config-watch",
    ) -> None:
        if not isinstance(interval_seconds, (int, float)) or not interval_seconds > 0:
            raise ValueError(
                f"watch_interval_seconds: expected a positive number of seconds, got {interval_seconds!r}"
            )
        self.path = path
        self.callback = callback
        self.interval_seconds = float(interval_seconds)
        self.name = name
        self._last_digest = initial_digest
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self.changes = 0

    @property
    def last_digest(self) -> str | None:
        return self._last_digest

    def mark_seen(self, digest: str) -> None:
        """Tell the watcher a content was handled elsewhere (a manual reload), so it is not reported.
        Lock-free on purpose: the consumer calls it under its own lock, from inside the callback too."""
        self._last_digest = digest

    def poll_once(self) -> bool:
        """Check the file now; returns whether a new content was reported."""
        with self._poll_lock:
            self.polls += 1
            # One read tells whether anything changed (the common case: nothing did); a change is then
            # read settled, and a transient mix of two writes that settles back to the old content is
            # no change at all.
            if _read_once(self.path)[1] == self._last_digest:
                return False
            data, digest, error = read_config_bytes(self.path)
            if digest == self._last_digest:
                return False
            self._last_digest = digest
            self.changes += 1
            try:
                self.callback(data, digest, error)
            except Exception:  # noqa: BLE001 - the watcher must survive whatever the consumer does
                _log.exception("config watch callback failed for %s", self.path)
            return True

    # ------------------------------------------------------------------ thread
    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._thread = None

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - e.g. a MemoryError reading; keep watching
                _log.exception("config watch poll failed for %s", self.path)
            if stop.wait(self.interval_seconds):
                return
