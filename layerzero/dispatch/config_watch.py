"""Poll a config file and report each new content, by hash.

Why content hashes and not mtimes or inotify: the ways configs really change defeat the other two.
Editors save by writing a temp file and renaming it over the original (new inode, mtime may not move);
Kubernetes ConfigMaps swap a ``..data`` symlink to a fresh timestamped directory (the watched path's own
inode and mtime never change); ``echo > file`` truncates then writes, so a poll can catch it half-written.
Opening the path follows every symlink to whatever it points at *now*, and hashing what was read ties
the reported content to the exact bytes that will be parsed (the callback gets the bytes; it never
re-reads the file, which could have changed again in between).

A content that differs from the last one seen is reported once, but only after it has **settled**: it
must read the same for ``settle_seconds`` (1 s by default, ``DispatchConfig.reload_settle_seconds``)
before it is reported. Why: an in-place rewrite (``echo > file``, a config tool writing in chunks) can
stall after a prefix that is itself a valid policy (``version: '2'`` followed by a comment); re-reading
until two reads agree cannot tell a paused writer from a finished one, so a prefix would be served as a
policy nobody wrote. Waiting for the content to stay put means a writer stalled mid-file for less than
the settle period never gets its prefix applied; the price is that every change takes effect
``settle_seconds`` after it is first seen. A read that overlaps a rewrite (old bytes, then new ones) is
never reported either: contents are read until two reads agree (:func:`read_config_bytes`). A missing or
unreadable file is a state like any content (settled, then reported once as ``data=None`` with the
error, and again only after a different state has been seen).

Files are read through :func:`layerzero.config_files.read_regular_file`: a path that is briefly a FIFO,
a socket or a device is an unreadable state, never a read that blocks the watcher thread (so ``stop()``
always returns promptly).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Callable

from layerzero.config_files import MAX_CONFIG_BYTES, read_regular_file

__all__ = ["ConfigWatcher", "read_config_bytes", "MAX_CONFIG_BYTES", "DEFAULT_SETTLE_SECONDS"]

_log = logging.getLogger("layerzero.hot_reload")

DEFAULT_SETTLE_SECONDS = 1.0

# callback(data, digest, error): data is the file's bytes (None when it could not be read, with error set).
ChangeCallback = Callable[["bytes | None", str, "OSError | None"], None]


def _read_once(path: str) -> tuple[bytes | None, str, OSError | None]:
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except (ValueError, TypeError) as e:  # an unusable path (embedded NUL): an unreadable state
        err = OSError(22, f"not a usable path ({e})", path)
        return None, f"<unreadable:{type(e).__name__}>", err
    except OSError as e:
        # Distinct error kinds are distinct states (missing, then unreadable, is two reports).
        return None, f"<unreadable:{type(e).__name__}:{e.errno}>", e
    return data, hashlib.sha256(data).hexdigest(), None


def read_config_bytes(path: str, max_reads: int = 8) -> tuple[bytes | None, str, OSError | None]:
    """The file's bytes and their sha256, or (None, a digest naming the error, the error).

    A read that overlaps an in-place rewrite (``echo > file``) can return the old bytes up to some offset
    and the new bytes after it: a content the file never held, which may even parse as a valid policy that
    nobody wrote. So the file is read until two consecutive reads agree (at most ``max_reads`` times):
    what is returned was the file's content at some moment. That moment may be mid-write (empty, or a
    prefix of the new file, possibly a valid policy on its own): two agreeing reads cannot tell a paused
    writer from a finished one, which is why :class:`ConfigWatcher` also waits for ``settle_seconds``."""
    prev = _read_once(path)
    for _ in range(max_reads - 1):
        cur = _read_once(path)
        if cur[1] == prev[1]:
            return cur
        prev = cur
    return prev


def _check_settle(settle_seconds: float) -> float:
    if isinstance(settle_seconds, bool) or not isinstance(settle_seconds, (int, float)) or not settle_seconds >= 0:
        raise ValueError(
            f"reload_settle_seconds: expected a number of seconds >= 0, got {settle_seconds!r}; fix: pass e.g. "
            f"{DEFAULT_SETTLE_SECONDS} (0 applies a change on the first poll that sees it, torn writes included)"
        )
    return float(settle_seconds)


class ConfigWatcher:
    """A daemon thread that calls ``callback(data, digest, error)`` whenever the content at ``path``
    differs from the last content it saw and has stayed the same for ``settle_seconds``. ``poll_once``
    runs one check in the caller's thread (tests, and callers that want to force a check); a new content
    it sees is only reported by a later check, once it has settled (at once when ``settle_seconds`` is 0)."""

    def __init__(
        self,
        path: str,
        callback: ChangeCallback,
        interval_seconds: float = 1.0,
        initial_digest: str | None = None,
        name: str = "layerzero-config-watch",
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(interval_seconds, bool) or not isinstance(interval_seconds, (int, float)) or not interval_seconds > 0:
            raise ValueError(
                f"watch_interval_seconds: expected a positive number of seconds, got {interval_seconds!r}"
            )
        self.path = path
        self.callback = callback
        self.interval_seconds = float(interval_seconds)
        self.settle_seconds = _check_settle(settle_seconds)
        self.name = name
        self._clock = clock
        self._pending: tuple[str, float] | None = None  # (digest, monotonic time first seen), not yet settled
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
        pending = self._pending
        if pending is not None and pending[0] == digest:
            self._pending = None

    @property
    def pending_digest(self) -> str | None:
        """The digest of a new content seen but not yet settled (None when there is none)."""
        pending = self._pending
        return pending[0] if pending is not None else None

    def poll_once(self) -> bool:
        """Check the file now; returns whether a new content was reported (it must have read the same
        for ``settle_seconds``, measured from the first check that saw it)."""
        with self._poll_lock:
            self.polls += 1
            # One read tells whether anything changed (the common case: nothing did); a change is then
            # read until two reads agree, and a transient mix of two writes that settles back to the old
            # content is no change at all.
            if _read_once(self.path)[1] == self._last_digest:
                self._pending = None
                return False
            data, digest, error = read_config_bytes(self.path)
            if digest == self._last_digest:
                self._pending = None
                return False
            if self.settle_seconds > 0:
                now = self._clock()
                pending = self._pending
                if pending is None or pending[0] != digest:
                    self._pending = (digest, now)  # new (or changed again): the settle period starts over
                    return False
                if now - pending[1] < self.settle_seconds:
                    return False
            self._pending = None
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
        """Stop the thread; returns as soon as it has finished its current check (reads never block)."""
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
            if stop.wait(self._next_wait()):
                return

    def _next_wait(self) -> float:
        """The poll interval, shortened while a change is settling so it is applied close to the moment
        its settle period ends (not up to a whole interval later)."""
        pending = self._pending
        if pending is None:
            return self.interval_seconds
        remaining = pending[1] + self.settle_seconds - self._clock()
        return min(self.interval_seconds, max(remaining, 0.0) + 0.001)
