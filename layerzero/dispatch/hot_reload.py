"""Hot reload: serve dispatches under a policy file that can change while the process runs.

Each good content of the file becomes a numbered :class:`ConfigVersion` with its own dynamic dispatcher
(its own selection cache; circuit breakers and telemetry are shared by all versions, so they survive
reloads). The active version is one reference: ``dispatch`` reads it once, so a call runs entirely under
one version, and a reload publishes the next version with a single assignment. Calls that started
before the swap finish on the old version; ``grace_period_seconds`` makes ``reload`` wait (bounded) until
they have.

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

In-flight tracking costs two ``deque`` operations per dispatch (atomic in CPython), no lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

from layerzero.dispatch.config_watch import ConfigWatcher, read_config_bytes
from layerzero.dispatch.protocols import BaseDispatcher
from layerzero.dispatch.types import DispatchConfig, DispatchMode, DispatchResult
from layerzero.errors import ConfigValidationError, LayerZeroError, ValidationProblem

if TYPE_CHECKING:
    from layerzero.dispatch.circuit import CircuitBreakerManager
    from layerzero.dispatch.dynamic import DynamicDispatcher
    from layerzero.policy import Policy
    from layerzero.registry import BackendRegistry, KernelRegistry, KernelSpec
    from layerzero.context.call_context import SelectionContext
    from layerzero.selection.engine import Explanation, SelectionEngine
    from layerzero.telemetry import DispatchTelemetry

__all__ = ["ConfigVersion", "HotReloadDispatcher", "ReloadStats", "create_hot_reload_dispatcher"]

_log = logging.getLogger("layerzero.hot_reload")

_DOCUMENT = "<document>"  # the policy loader's name for "the whole file" in problems


@dataclass(frozen=True)
class ConfigVersion:
    """One good content of the config file. ``version`` counts up from 1 (the initial load);
    ``config_hash`` is the policy's sha256; ``warnings`` are facts found by the pre-swap validation
    that did not block it (e.g. a lock to a kernel that cannot run on this machine)."""

    version: int
    config_hash: str
    loaded_at: float
    source: str | None
    policy: "Policy" = field(repr=False)
    warnings: tuple[str, ...] = ()
    origin: str = "file"  # "file", "rollback", "set_policy"


@dataclass(frozen=True)
class ReloadStats:
    """``total_reloads`` counts successful reloads after the initial load (rollbacks included);
    ``failed_reloads`` counts rejected contents, once per distinct content."""

    total_reloads: int = 0
    failed_reloads: int = 0
    last_reload_time_ms: float | None = None
    current_version: int = 0
    rollbacks: int = 0
    last_error: str | None = None
    last_grace_wait_ms: float | None = None
    in_flight_at_last_swap: int = 0


class _Active:
    """The published state: a version, its dispatcher, and the calls running under it."""

    __slots__ = ("version", "dispatcher", "inflight", "digest")

    def __init__(self, version: ConfigVersion, dispatcher: "DynamicDispatcher", digest: str | None):
        self.version = version
        self.dispatcher = dispatcher
        self.inflight: collections.deque[None] = collections.deque()
        self.digest = digest


def _default_device() -> str:
    """The device the dry run checks locks against: where this process most likely runs kernels."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "cpu"


def _problem_error(source: str | None, field_name: str, value: Any, message: str) -> ConfigValidationError:
    return ConfigValidationError([ValidationProblem(field_name, value, message, source)], source=source)


class HotReloadDispatcher(BaseDispatcher):
    """A dynamic dispatcher whose policy comes from ``config.config_path`` and can be reloaded, watched
    and rolled back. Construction loads the file; an invalid initial file raises
    :class:`ConfigValidationError` (there is no last good policy to keep serving)."""

    def __init__(
        self,
        config: DispatchConfig,
        kernel_registry: "KernelRegistry | None" = None,
        backend_registry: "BackendRegistry | None" = None,
        circuits: "CircuitBreakerManager | None" = None,
        telemetry: "DispatchTelemetry | None" = None,
        history_size: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

        path = config.config_path or getattr(config, "policy_path", None)
        if not path:
            raise _problem_error(
                None, "config_path", path,
                "HOT_RELOAD needs a policy file to watch; fix: DispatchConfig(config_path='config/kernels.yaml')",
            )
        if history_size < 2:
            raise ValueError(f"history_size: expected >= 2 (rollback needs a previous version), got {history_size!r}")
        self.config = config
        self.path = str(path)
        self.kernel_registry = kernel_registry or get_global_kernel_registry()
        self.backend_registry = backend_registry or get_global_backend_registry()
        self._clock = clock
        self._reload_lock = threading.RLock()
        self._cb_lock = threading.Lock()
        self._reload_callbacks: list[Callable[[ConfigVersion], Any]] = []
        self._error_callbacks: list[Callable[[BaseException], Any]] = []
        self._history: collections.deque[ConfigVersion] = collections.deque(maxlen=history_size)
        self._failed_digests: dict[str, ConfigValidationError | LayerZeroError] = {}
        self._next_version = 1
        self._stats = ReloadStats()
        self._watcher: ConfigWatcher | None = None
        # Reload/error events are queued under the reload lock and delivered outside it, in order, by
        # whichever thread gets the notify lock first (callbacks never run under the reload lock).
        self._events: collections.deque[tuple[str, Any]] = collections.deque()
        self._notify_lock = threading.RLock()
        self._seen_digest: str | None = None  # the last file content handled (loaded or rejected)
        self._handled_digest: str | None = None  # the same, published once its callbacks have run

        data, digest, error = read_config_bytes(self.path)
        policy = self._parse(data, error)  # raises: nothing to fall back on yet
        version = self._new_version(policy, origin="file")
        first = self._build_dispatcher(policy, circuits, telemetry)
        self.circuits = first.circuits
        self.telemetry = first.telemetry
        version = replace(version, warnings=self._validate(first, policy))
        self._active = _Active(version, first, digest)
        self._seen_digest = self._handled_digest = digest
        self._history.append(version)
        self._stats = replace(self._stats, current_version=version.version)

    # ------------------------------------------------------------------ hot path
    def dispatch(
        self,
        operation: str,
        inputs: Mapping[str, Any],
        context: "SelectionContext | None" = None,
        **kwargs: Any,
    ) -> DispatchResult:
        # Register under the active version, then confirm it is still active: a swap between the read and
        # the registration would otherwise let this call run on the old version unseen by the grace wait.
        # The whole call then runs under this one version.
        while True:
            active = self._active
            inflight = active.inflight
            inflight.append(None)
            if self._active is active:
                break
            inflight.pop()
        try:
            return active.dispatcher.dispatch(operation, inputs, context, **kwargs)
        finally:
            inflight.pop()

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

    def _reload_content(
        self,
        data: bytes | None,
        digest: str,
        error: OSError | None,
        validate: bool,
        grace_period_seconds: float,
        force: bool,
        raise_errors: bool,
    ) -> ConfigVersion:
        t0 = time.perf_counter()
        with self._reload_lock:
            self._seen_digest = digest
            watcher = self._watcher
            if watcher is not None:
                watcher.mark_seen(digest)
            current = self._active
            if digest == current.digest and not force:
                self._handled_digest = digest
                return current.version
            known = self._failed_digests.get(digest)
            if known is not None and not force:
                # Reported once already; a manual reload still tells its caller.
                self._handled_digest = digest
                if raise_errors:
                    raise known
                return current.version
            try:
                policy = self._parse(data, error)
                dispatcher = self._build_dispatcher(policy, self.circuits, self.telemetry)
                warnings = self._validate(dispatcher, policy) if validate else ()
            except LayerZeroError as exc:
                failure: BaseException | None = exc
            except Exception as exc:  # noqa: BLE001 - a broken build must not take the dispatcher down
                failure = LayerZeroError(f"reload of {self.path} failed while building its dispatcher: "
                                         f"{type(exc).__name__}: {exc}")
                failure.__cause__ = exc
            else:
                failure = None
                version = replace(self._new_version(policy, origin="file"), warnings=warnings)
                old = self._swap(_Active(version, dispatcher, digest), t0, rollback=False)
            if failure is not None:
                self._record_failure(digest, failure, t0)
        self._deliver_events()
        self._handled_digest = digest
        if failure is not None:
            if raise_errors:
                raise failure
            return self._active.version
        self._grace(old, grace_period_seconds)
        return version

    def rollback(self, grace_period_seconds: float = 0.0) -> ConfigVersion:
        """Re-activate the version before the active one. Raises :class:`LayerZeroError` naming why when
        there is none. The file is not changed: the watcher loads it again when its content changes."""
        t0 = time.perf_counter()
        with self._reload_lock:
            current = self._active.version
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
            dispatcher = self._build_dispatcher(target.policy, self.circuits, self.telemetry)
            old = self._swap(_Active(target, dispatcher, None), t0, rollback=True)
        self._deliver_events()
        self._grace(old, grace_period_seconds)
        return target

    def set_policy(self, policy: "Policy", grace_period_seconds: float = 0.0) -> ConfigVersion:
        """Serve an in-memory policy as a new version (the orchestrator's ``set_policy``). The file is
        not changed: the watcher loads it again when its content changes."""
        t0 = time.perf_counter()
        with self._reload_lock:
            dispatcher = self._build_dispatcher(policy, self.circuits, self.telemetry)
            new = self._new_version(policy, origin="set_policy")
            old = self._swap(_Active(new, dispatcher, None), t0, rollback=False)
        self._deliver_events()
        self._grace(old, grace_period_seconds)
        return new

    # ------------------------------------------------------------------ reload internals
    def _parse(self, data: bytes | None, error: OSError | None) -> "Policy":
        from layerzero.policy import parse_policy_text

        if data is None:
            what = "file not found" if isinstance(error, FileNotFoundError) else f"cannot read it ({error})"
            raise _problem_error(self.path, _DOCUMENT, self.path,
                                 f"{what}; fix: check config_path (the last good policy keeps serving)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise _problem_error(self.path, _DOCUMENT, f"byte {e.start}",
                                 "the file is not UTF-8 text; fix: save the policy as UTF-8 YAML") from None
        return parse_policy_text(text, source=self.path, registry=self.kernel_registry)

    def _build_dispatcher(
        self, policy: "Policy", circuits: "CircuitBreakerManager | None", telemetry: "DispatchTelemetry | None"
    ) -> "DynamicDispatcher":
        from layerzero.dispatch.dynamic import DynamicDispatcher

        return DynamicDispatcher(
            self.config, self.kernel_registry, self.backend_registry, policy=policy,
            circuits=circuits, telemetry=telemetry,
        )

    def _validate(self, dispatcher: "DynamicDispatcher", policy: "Policy") -> tuple[str, ...]:
        """Dry-run selection (on this machine's default device) for every operation the policy locks or
        chains, before it serves traffic.
        A selection that raises rejects the policy; notes (a lock that cannot take effect here) become
        the version's warnings."""
        from layerzero.operations import expand
        from layerzero.context.call_context import SelectionContext

        ops: list[str] = []
        for pattern in (*policy.locks, *policy.fallback_chains):
            for op in expand(pattern):
                if op not in ops:
                    ops.append(op)
        warnings: list[str] = []
        device = _default_device()
        for op in ops:
            try:
                exp = dispatcher.explain(op, SelectionContext(operation=op, device=device))
            except LayerZeroError:
                raise
            except Exception as e:  # noqa: BLE001
                raise _problem_error(self.path, _DOCUMENT, op, f"selection for {op!r} fails under this policy: "
                                     f"{type(e).__name__}: {e}; fix: check its locks and chains") from e
            for note in getattr(exp, "notes", ()):
                warnings.append(f"{op}: {note}")
            if exp.chosen is None:
                warnings.append(f"{op}: no kernel can run it on this machine under this policy")
        return tuple(warnings)

    def _new_version(self, policy: "Policy", origin: str) -> ConfigVersion:
        n = self._next_version
        self._next_version += 1
        return ConfigVersion(n, policy.config_hash, self._clock(), policy.source or self.path, policy, (), origin)

    def _swap(self, new: _Active, t0: float, rollback: bool) -> _Active:
        old = self._active
        self._active = new  # the swap: one reference assignment
        if not rollback:
            self._history.append(new.version)
        self._failed_digests.clear()  # a bad content written again later is a new event
        s = self._stats
        self._stats = replace(
            s,
            total_reloads=s.total_reloads + 1,
            rollbacks=s.rollbacks + (1 if rollback else 0),
            last_reload_time_ms=(time.perf_counter() - t0) * 1000.0,
            current_version=new.version.version,
            in_flight_at_last_swap=len(old.inflight),
        )
        self._events.append(("reload", new.version))
        return old

    def _grace(self, old: _Active, grace_period_seconds: float) -> None:
        if grace_period_seconds and grace_period_seconds > 0:
            waited = self._drain(old, grace_period_seconds)
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
                    _log.info(
                        "config %s: v%d active (%s)", self.path, v.version, v.origin,
                        extra={"config_version": v.version, "config_hash": v.config_hash,
                               "config_source": v.source, "config_origin": v.origin,
                               "config_warnings": list(v.warnings)},
                    )
                for cb in callbacks:
                    try:
                        cb(payload)
                    except Exception:  # noqa: BLE001 - an observer must not break reloads
                        _log.exception("%s callback %r failed", "on_reload" if kind == "reload" else "on_error", cb)

    @staticmethod
    def _drain(old: _Active, timeout: float) -> float:
        """Wait until no call runs under ``old`` (or ``timeout``); returns the seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        delay = 0.0005
        while old.inflight:
            now = time.monotonic()
            if now >= deadline:
                _log.warning("grace period of %.3fs ended with %d call(s) still on the previous config",
                             timeout, len(old.inflight))
                break
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.01)
        return time.monotonic() - t0

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
        self._stats = replace(
            s,
            failed_reloads=s.failed_reloads + 1,
            last_error=str(exc),
            last_reload_time_ms=(time.perf_counter() - t0) * 1000.0,
        )
        self._events.append(("error", exc))
        problems = getattr(exc, "problems", ())
        _log.warning(
            "config %s rejected; v%d keeps serving: %s", self.path, self._active.version.version, exc,
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
        # The thread holds only a weak reference: a dispatcher nobody uses any more is collected and its
        # watcher stops, even if stop() was never called (example scripts often never call it).
        ref = weakref.ref(self)
        stop_event: list[threading.Event] = []

        def on_change(data: bytes | None, digest: str, error: OSError | None) -> None:
            me = ref()
            if me is None:
                stop_event[0].set()
                return
            me._reload_content(
                data, digest, error, validate=me.config.validate_on_reload,
                grace_period_seconds=0.0, force=False, raise_errors=False,
            )

        watcher = ConfigWatcher(self.path, on_change, interval, initial_digest=self._seen_digest,
                                settle_seconds=settle)
        stop_event.append(watcher._stop)
        return watcher

    def watch(self, interval_seconds: float | None = None, settle_seconds: float | None = None) -> None:
        """Start the polling thread (daemon) at ``watch_interval_seconds``; a change is applied once it has
        read the same for ``settle_seconds`` (default ``config.reload_settle_seconds``). Idempotent; stop
        it with :meth:`stop` (or use the dispatcher as a context manager)."""
        interval = self.config.watch_interval_seconds if interval_seconds is None else interval_seconds
        settle = self.config.reload_settle_seconds if settle_seconds is None else settle_seconds
        with self._reload_lock:
            watcher = self._watcher
            if watcher is None:
                watcher = self._watcher = self._make_watcher(interval, settle)
            elif watcher.running:
                return
            else:
                fresh = self._make_watcher(interval, settle)  # validates both values
                watcher.interval_seconds, watcher.settle_seconds = fresh.interval_seconds, fresh.settle_seconds
        watcher.start()

    def stop(self) -> None:
        """Stop the polling thread (the active version keeps serving)."""
        watcher = self._watcher
        if watcher is not None:
            watcher.stop()

    close = stop

    @property
    def watching(self) -> bool:
        return self._watcher is not None and self._watcher.running

    def poll(self) -> bool:
        """Run one watcher check now, in this thread (whether or not the watch thread runs); True when
        a new content was handled (loaded or rejected). A new content is handled only by a check after it
        has read the same for ``config.reload_settle_seconds``; call :meth:`reload` to load it at once."""
        with self._reload_lock:
            if self._watcher is None:
                self._watcher = self._make_watcher(self.config.watch_interval_seconds,
                                                   self.config.reload_settle_seconds)
            watcher = self._watcher
        return watcher.poll_once()

    def __enter__(self) -> "HotReloadDispatcher":
        self.watch()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection
    @property
    def mode(self) -> DispatchMode:
        return DispatchMode.HOT_RELOAD

    @property
    def stats(self) -> ReloadStats:
        return self._stats

    @property
    def current_version(self) -> ConfigVersion:
        return self._active.version

    @property
    def versions(self) -> list[ConfigVersion]:
        """Kept good versions, oldest first (bounded by ``history_size``)."""
        return list(self._history)

    @property
    def policy(self) -> "Policy":
        return self._active.version.policy

    @property
    def dispatcher(self) -> "DynamicDispatcher":
        """The dynamic dispatcher of the active version."""
        return self._active.dispatcher

    @property
    def engine(self) -> "SelectionEngine":
        return self._active.dispatcher.engine

    @property
    def seen_file_hash(self) -> str | None:
        """sha256 of the file content handled last (loaded or rejected, and its on_reload / on_error
        callbacks run), so a deploy script can tell when what it wrote has been processed."""
        return self._handled_digest

    def in_flight(self) -> int:
        """Calls running under the active version now."""
        return len(self._active.inflight)

    def explain(self, operation: str, context: "SelectionContext | None" = None, **facts: Any) -> "Explanation":
        return self._active.dispatcher.explain(operation, context, **facts)

    def select(self, operation: str, inputs: Mapping[str, Any], **kwargs: Any) -> "KernelSpec":
        return self._active.dispatcher.select(operation, inputs, **kwargs)

    def get_kernel_for_operation(self, operation: str, context: "SelectionContext") -> "KernelSpec":
        return self._active.dispatcher.get_kernel_for_operation(operation, context)

    def refresh(self) -> None:
        """Rebuild selection of the active version after the kernel catalogue changed."""
        self._active.dispatcher.refresh()

    def __repr__(self) -> str:
        v = self._active.version
        return (f"HotReloadDispatcher({self.path!r}, v{v.version}, watching={self.watching}, "
                f"reloads={self._stats.total_reloads}, failed={self._stats.failed_reloads})")


def create_hot_reload_dispatcher(
    config_path: str,
    validate_on_reload: bool = True,
    watch_interval_seconds: float = 1.0,
    start_watching: bool = True,
    kernel_registry: "KernelRegistry | None" = None,
    backend_registry: "BackendRegistry | None" = None,
    **config_overrides: Any,
) -> HotReloadDispatcher:
    """Build a :class:`HotReloadDispatcher` for ``config_path`` (and start watching it by default).
    ``config_overrides`` are other :class:`DispatchConfig` fields (``circuit_breaker_enabled=False``...)."""
    config = DispatchConfig(
        mode=DispatchMode.HOT_RELOAD,
        config_path=str(config_path),
        validate_on_reload=validate_on_reload,
        watch_interval_seconds=watch_interval_seconds,
        **config_overrides,
    )
    dispatcher = HotReloadDispatcher(config, kernel_registry=kernel_registry, backend_registry=backend_registry)
    if start_watching:
        dispatcher.watch()
    return dispatcher
