"""A policy file as a source of policies for a dispatcher: load, validate, publish, watch, roll back.

Each good content of the file becomes a numbered :class:`ConfigVersion`, published by calling the
dispatcher's ``set_policy`` (one reference swap: a call runs entirely under one version; breakers and
telemetry belong to the dispatcher, so they survive reloads). Calls that started before a swap finish on
the old version; ``grace_period_seconds`` makes ``reload`` wait (bounded) until they have.

Safety rules:

* An invalid content never replaces the last good policy. It is reported (``on_error`` callbacks,
  ``stats.failed_reloads``, a warning on the ``layerzero.hot_reload`` logger) once per distinct content
  hash; the watcher simply tries again when the file changes (a half-written file becomes valid).
* The watcher parses exactly the bytes it hashed (see :mod:`layerzero.dispatch.config_watch`), so a
  version's hash always describes the policy that serves it.
* A changed file is applied only after its content has stayed the same for
  ``config.reload_settle_seconds`` (1 s by default), so a writer stalled mid-file never gets a
  valid-looking prefix served. ``reload()`` is the explicit "the file is complete, load it now".
* ``rollback`` re-activates the previous good version; the file on disk is not touched, and the watcher
  loads the file again only when its content changes.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from layerzero.dispatch.config_watch import ConfigWatcher, read_config_bytes
from layerzero.dispatch.reload_types import (
    ConfigVersion,
    ReloadStats,
    log,
    parse_policy_bytes,
    problem_error,
    validate_policy,
)
from layerzero.dispatch.types import DispatchConfig
from layerzero.errors import ConfigValidationError, LayerZeroError

if TYPE_CHECKING:
    from layerzero.dispatch.dispatcher import SelectionState
    from layerzero.policy import Policy
    from layerzero.registry import KernelRegistry
    from layerzero.selection.engine import SelectionEngine

__all__ = ["PolicyFileSource"]

# publish(policy, version, engine) -> the replaced selection state (its in-flight calls are waited for)
Publish = Callable[["Policy", ConfigVersion, "SelectionEngine"], "SelectionState"]


class PolicyFileSource:
    """Reads ``config.config_path`` (or ``policy_path``). Construction reads and parses the file: an
    invalid initial file raises :class:`ConfigValidationError` (there is no last good policy to keep
    serving). ``attach`` connects it to the dispatcher it feeds and publishes the initial version."""

    def __init__(self, config: DispatchConfig, kernel_registry: "KernelRegistry", history_size: int = 16,
                 clock: Callable[[], float] = time.time) -> None:
        path = config.config_path or config.policy_path
        if not path:
            raise problem_error(
                None, "config_path", path,
                "HOT_RELOAD needs a policy file to watch; fix: DispatchConfig(config_path='config/kernels.yaml')",
            )
        if history_size < 2:
            raise ValueError(f"history_size: expected >= 2 (rollback needs a previous version), got {history_size!r}")
        self.config = config
        self.path = str(path)
        self.kernel_registry = kernel_registry
        self._clock = clock
        self._reload_lock = threading.RLock()
        self._cb_lock = threading.Lock()
        self._reload_callbacks: list[Callable[[ConfigVersion], Any]] = []
        self._error_callbacks: list[Callable[[BaseException], Any]] = []
        self._history: collections.deque[ConfigVersion] = collections.deque(maxlen=history_size)
        self._failed_digests: dict[str, ConfigValidationError | LayerZeroError] = {}
        self._next_version = 1
        self._stats = ReloadStats()
        self.watcher: ConfigWatcher | None = None
        # Reload/error events are queued under the reload lock and delivered outside it, in order, by
        # whichever thread gets the notify lock first (callbacks never run under the reload lock).
        self._events: collections.deque[tuple[str, Any]] = collections.deque()
        self._notify_lock = threading.RLock()
        data, digest, error = read_config_bytes(self.path)
        #: The policy of the file as first read (what the dispatcher starts with).
        self.initial_policy = parse_policy_bytes(self.path, data, error, kernel_registry)  # raises
        self._digest: str | None = digest  # the content serving now (None after rollback / set_policy)
        self._seen_digest: str | None = digest  # the last file content handled (loaded or rejected)
        self._handled_digest: str | None = digest  # the same, published once its callbacks have run
        self._publish: Publish | None = None
        self._make_engine: Callable[["Policy"], "SelectionEngine"] | None = None
        self._current: ConfigVersion | None = None

    def attach(self, make_engine: Callable[["Policy"], "SelectionEngine"], publish: Publish,
               engine: "SelectionEngine") -> ConfigVersion:
        """Feed a dispatcher: ``engine`` already serves ``initial_policy``; it becomes version 1."""
        self._make_engine, self._publish = make_engine, publish
        policy = self.initial_policy
        version = replace(self._new_version(policy, "file"), warnings=validate_policy(self.path, engine, policy))
        publish(policy, version, engine)
        self._current = version
        self._history.append(version)
        self._stats = replace(self._stats, current_version=version.version)
        return version

    # ------------------------------------------------------------------ reload
    def reload(
        self, validate: bool | None = None, grace_period_seconds: float = 0.0, force: bool = False
    ) -> ConfigVersion:
        """Load the file now. Returns the active version (unchanged when the content is the same, unless
        ``force``). Raises :class:`ConfigValidationError` naming the field when the content is invalid;
        the previous version keeps serving. ``grace_period_seconds`` bounds the wait for calls that
        started under the previous version.

        Schema validation (fields, kernel names against the registry) always runs: a policy that does not
        parse cannot be served. ``validate`` (default ``config.validate_on_reload``) adds a dry-run
        selection of every locked or chained operation on this machine before the swap: one that raises
        rejects the content, and locks that cannot take effect here become ``ConfigVersion.warnings``."""
        data, digest, error = read_config_bytes(self.path)
        return self._reload_content(
            data, digest, error,
            validate=self.config.validate_on_reload if validate is None else validate,
            grace_period_seconds=grace_period_seconds, force=force, raise_errors=True,
        )

    def _reload_content(self, data: bytes | None, digest: str, error: OSError | None, validate: bool,
                        grace_period_seconds: float, force: bool, raise_errors: bool) -> ConfigVersion:
        t0 = time.perf_counter()
        with self._reload_lock:
            self._seen_digest = digest
            if self.watcher is not None:
                self.watcher.mark_seen(digest)
            current = self.current_version
            if digest == self._digest and not force:
                self._handled_digest = digest
                return current
            known = self._failed_digests.get(digest)
            if known is not None and not force:
                # Reported once already; a manual reload still tells its caller.
                self._handled_digest = digest
                if raise_errors:
                    raise known
                return current
            try:
                policy = parse_policy_bytes(self.path, data, error, self.kernel_registry)
                engine = self._make_engine(policy)  # type: ignore[misc]
                warnings = validate_policy(self.path, engine, policy) if validate else ()
            except LayerZeroError as exc:
                failure: BaseException | None = exc
            except Exception as exc:  # noqa: BLE001 - a broken build must not take the dispatcher down
                failure = LayerZeroError(f"reload of {self.path} failed while building its selection: "
                                         f"{type(exc).__name__}: {exc}")
                failure.__cause__ = exc
            else:
                failure = None
                version = replace(self._new_version(policy, "file"), warnings=warnings)
                old = self._swap(version, engine, digest, t0, rollback=False)
            if failure is not None:
                self._record_failure(digest, failure, t0)
        self._deliver_events()
        self._handled_digest = digest
        if failure is not None:
            if raise_errors:
                raise failure
            return self.current_version
        self._grace(old, grace_period_seconds)
        return version

    def rollback(self, grace_period_seconds: float = 0.0) -> ConfigVersion:
        """Re-activate the version before the active one. Raises :class:`LayerZeroError` naming why when
        there is none. The file is not changed: the watcher loads it again when its content changes."""
        t0 = time.perf_counter()
        with self._reload_lock:
            current = self.current_version
            history = list(self._history)
            idx = next((i for i, v in enumerate(history) if v is current), None)
            if idx is None or idx == 0:
                only = ", ".join(f"v{v.version}" for v in history) or "none"
                raise LayerZeroError(
                    f"cannot roll back {self.path}: no configuration version before v{current.version} is kept "
                    f"(history: {only}); fix: write a good config to the file, or call reload()"
                )
            target = history[idx - 1]
            # Forget the rolled-back version, so a second rollback goes further back.
            self._history = collections.deque(history[:idx], maxlen=self._history.maxlen)
            old = self._swap(target, self._make_engine(target.policy), None, t0, rollback=True)  # type: ignore[misc]
        self._deliver_events()
        self._grace(old, grace_period_seconds)
        return target

    def set_policy(self, policy: "Policy", grace_period_seconds: float = 0.0) -> ConfigVersion:
        """Serve an in-memory policy as a new version (the orchestrator's ``set_policy``). The file is
        not changed: the watcher loads it again when its content changes."""
        t0 = time.perf_counter()
        with self._reload_lock:
            new = self._new_version(policy, "set_policy")
            old = self._swap(new, self._make_engine(policy), None, t0, rollback=False)  # type: ignore[misc]
        self._deliver_events()
        self._grace(old, grace_period_seconds)
        return new

    # ------------------------------------------------------------------ reload internals
    def _new_version(self, policy: "Policy", origin: str) -> ConfigVersion:
        n = self._next_version
        self._next_version += 1
        return ConfigVersion(n, policy.config_hash, self._clock(), policy.source or self.path, policy, (), origin)

    def _swap(self, version: ConfigVersion, engine: "SelectionEngine", digest: str | None, t0: float,
              rollback: bool) -> "SelectionState":
        old = self._publish(version.policy, version, engine)  # type: ignore[misc]  # the one reference swap
        self._current, self._digest = version, digest
        if not rollback:
            self._history.append(version)
        self._failed_digests.clear()  # a bad content written again later is a new event
        s = self._stats
        self._stats = replace(
            s,
            total_reloads=s.total_reloads + 1,
            rollbacks=s.rollbacks + (1 if rollback else 0),
            last_reload_time_ms=(time.perf_counter() - t0) * 1000.0,
            current_version=version.version,
            in_flight_at_last_swap=len(old.inflight or ()),
        )
        self._events.append(("reload", version))
        return old

    def _grace(self, old: "SelectionState", grace_period_seconds: float) -> None:
        if grace_period_seconds and grace_period_seconds > 0:
            waited = _drain(old, grace_period_seconds)
            with self._reload_lock:
                self._stats = replace(self._stats, last_grace_wait_ms=waited * 1000.0)

    def _deliver_events(self) -> None:
        """Run callbacks for queued events, in the order they happened, outside the reload lock."""
        if not self._events:
            return
        with self._notify_lock:
            while True:
                try:
                    kind, payload = self._events.popleft()
                except IndexError:
                    return
                with self._cb_lock:
                    callbacks = list(self._reload_callbacks if kind == "reload" else self._error_callbacks)
                if kind == "reload":
                    v: ConfigVersion = payload
                    log.info(
                        "config %s: v%d active (%s)", self.path, v.version, v.origin,
                        extra={"config_version": v.version, "config_hash": v.config_hash,
                               "config_source": v.source, "config_origin": v.origin,
                               "config_warnings": list(v.warnings)},
                    )
                for cb in callbacks:
                    try:
                        cb(payload)
                    except Exception:  # noqa: BLE001 - an observer must not break reloads
                        log.exception("%s callback %r failed", "on_reload" if kind == "reload" else "on_error", cb)

    def _record_failure(self, digest: str, exc: BaseException, t0: float) -> None:
        # The rejected content's sha256 travels with the error, so on_error callbacks (and alerts) can say
        # which write was rejected even when several arrive in quick succession.
        try:
            exc.config_hash = digest  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__: leave it as it is
            pass
        self._failed_digests[digest] = exc  # type: ignore[assignment]
        if len(self._failed_digests) > 256:  # bounded: forget the oldest
            self._failed_digests.pop(next(iter(self._failed_digests)))
        s = self._stats
        self._stats = replace(s, failed_reloads=s.failed_reloads + 1, last_error=str(exc),
                              last_reload_time_ms=(time.perf_counter() - t0) * 1000.0)
        self._events.append(("error", exc))
        problems = getattr(exc, "problems", ())
        log.warning(
            "config %s rejected; v%d keeps serving: %s", self.path, self.current_version.version, exc,
            extra={"config_source": self.path,
                   "config_problems": [{"field": p.field, "value": repr(p.value), "message": p.message}
                                       for p in problems]},
        )

    # ------------------------------------------------------------------ callbacks
    def on_reload(self, callback: Callable[[ConfigVersion], Any]) -> Callable[[ConfigVersion], Any]:
        """Call ``callback(version)`` after each swap (reload, rollback, set_policy). Usable as a decorator."""
        with self._cb_lock:
            self._reload_callbacks.append(callback)
        return callback

    def on_error(self, callback: Callable[[BaseException], Any]) -> Callable[[BaseException], Any]:
        """Call ``callback(error)`` once per rejected content (a ConfigValidationError naming the field)."""
        with self._cb_lock:
            self._error_callbacks.append(callback)
        return callback

    # ------------------------------------------------------------------ watching
    def _make_watcher(self, interval: float, settle: float) -> ConfigWatcher:
        # The thread holds only a weak reference: a source nobody uses any more (its dispatcher dropped) is
        # collected and its watcher stops, even if stop() was never called (example scripts often don't).
        ref = weakref.ref(self)
        box: list[ConfigWatcher] = []

        def on_change(data: bytes | None, digest: str, error: OSError | None) -> None:
            me = ref()
            if me is None:
                box[0].stop()
                return
            me._reload_content(data, digest, error, validate=me.config.validate_on_reload,
                               grace_period_seconds=0.0, force=False, raise_errors=False)

        watcher = ConfigWatcher(self.path, on_change, interval, initial_digest=self._seen_digest,
                                settle_seconds=settle)
        box.append(watcher)
        return watcher

    def watch(self, interval_seconds: float | None = None, settle_seconds: float | None = None) -> None:
        """Start the polling thread (daemon) at ``watch_interval_seconds``; a change is applied once it has
        read the same for ``settle_seconds`` (default ``config.reload_settle_seconds``). Idempotent; stop
        it with :meth:`stop`."""
        interval = self.config.watch_interval_seconds if interval_seconds is None else interval_seconds
        settle = self.config.reload_settle_seconds if settle_seconds is None else settle_seconds
        with self._reload_lock:
            watcher = self.watcher
            if watcher is None:
                watcher = self.watcher = self._make_watcher(interval, settle)
            elif watcher.running:
                return
            else:
                fresh = self._make_watcher(interval, settle)  # validates both values
                watcher.interval_seconds, watcher.settle_seconds = fresh.interval_seconds, fresh.settle_seconds
        watcher.start()

    def stop(self) -> None:
        """Stop the polling thread (the active version keeps serving)."""
        if self.watcher is not None:
            self.watcher.stop()

    @property
    def watching(self) -> bool:
        return self.watcher is not None and self.watcher.running

    def poll(self) -> bool:
        """Run one watcher check now, in this thread (whether or not the watch thread runs); True when
        a new content was handled (loaded or rejected). A new content is handled only by a check after it
        has read the same for ``config.reload_settle_seconds``; call :meth:`reload` to load it at once."""
        with self._reload_lock:
            if self.watcher is None:
                self.watcher = self._make_watcher(self.config.watch_interval_seconds,
                                                  self.config.reload_settle_seconds)
            watcher = self.watcher
        return watcher.poll_once()

    # ------------------------------------------------------------------ inspection
    @property
    def stats(self) -> ReloadStats:
        return self._stats

    @property
    def current_version(self) -> ConfigVersion:
        return self._current  # type: ignore[return-value]

    @property
    def versions(self) -> list[ConfigVersion]:
        """Kept good versions, oldest first (bounded by ``history_size``)."""
        return list(self._history)

    @property
    def seen_file_hash(self) -> str | None:
        """sha256 of the file content handled last (loaded or rejected, and its on_reload / on_error
        callbacks run), so a deploy script can tell when what it wrote has been processed."""
        return self._handled_digest


def _drain(old: "SelectionState", timeout: float) -> float:
    """Wait until no call runs under ``old`` (or ``timeout``); returns the seconds waited."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    delay = 0.0005
    inflight = old.inflight or ()
    while inflight:
        now = time.monotonic()
        if now >= deadline:
            log.warning("grace period of %.3fs ended with %d call(s) still on the previous config",
                        timeout, len(inflight))
            break
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.01)
    return time.monotonic() - t0
