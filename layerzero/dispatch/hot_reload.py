"""Hot reload: the dispatcher fed by a policy file that can change while the process runs.

A :class:`HotReloadDispatcher` is the ordinary dispatcher (DYNAMIC: policy + ranking) that counts its
in-flight calls, plus a :class:`~layerzero.dispatch.policy_source.PolicyFileSource` that loads, validates
and watches the file and publishes each good content through the dispatcher's ``set_policy``. Reload
rules (settle period, last good policy keeps serving, rollback, grace period) are the source's; see that
module.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Callable

from layerzero.dispatch.dispatcher import Dispatcher
from layerzero.dispatch.policy_source import PolicyFileSource
from layerzero.dispatch.reload_types import ConfigVersion, ReloadStats
from layerzero.dispatch.types import DispatchConfig, DispatchMode

if TYPE_CHECKING:
    from layerzero.dispatch.circuit import CircuitBreakerManager
    from layerzero.dispatch.config_watch import ConfigWatcher
    from layerzero.policy import Policy
    from layerzero.registry import BackendRegistry, KernelRegistry
    from layerzero.telemetry import DispatchTelemetry

__all__ = ["ConfigVersion", "HotReloadDispatcher", "ReloadStats", "create_hot_reload_dispatcher"]


class HotReloadDispatcher(Dispatcher):
    """A dispatcher whose policy comes from ``config.config_path`` and can be reloaded, watched and rolled
    back. Construction loads the file; an invalid initial file raises :class:`ConfigValidationError`
    (there is no last good policy to keep serving). The methods below are the source's."""

    mode = DispatchMode.HOT_RELOAD

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
        from layerzero.registry import get_global_kernel_registry

        kernels = kernel_registry or get_global_kernel_registry()
        self.source = PolicyFileSource(config, kernels, history_size, clock)
        super().__init__(config, kernels, backend_registry, self.source.initial_policy, circuits, telemetry,
                         track_in_flight=True)
        self.source.attach(self.make_engine, functools.partial(Dispatcher.set_policy, self), self.engine)

    # ------------------------------------------------------------------ the source's controls
    def reload(self, validate: bool | None = None, grace_period_seconds: float = 0.0,
               force: bool = False) -> ConfigVersion:
        return self.source.reload(validate, grace_period_seconds, force)

    def rollback(self, grace_period_seconds: float = 0.0) -> ConfigVersion:
        return self.source.rollback(grace_period_seconds)

    def set_policy(self, policy: "Policy", grace_period_seconds: float = 0.0) -> ConfigVersion:  # type: ignore[override]
        """Serve an in-memory policy as a new version (the file is not changed)."""
        return self.source.set_policy(policy, grace_period_seconds)

    def on_reload(self, callback: Callable[[ConfigVersion], Any]) -> Callable[[ConfigVersion], Any]:
        return self.source.on_reload(callback)

    def on_error(self, callback: Callable[[BaseException], Any]) -> Callable[[BaseException], Any]:
        return self.source.on_error(callback)

    def watch(self, interval_seconds: float | None = None, settle_seconds: float | None = None) -> None:
        self.source.watch(interval_seconds, settle_seconds)

    def stop(self) -> None:
        self.source.stop()

    def poll(self) -> bool:
        return self.source.poll()

    def __enter__(self) -> "HotReloadDispatcher":
        self.watch()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection
    @property
    def path(self) -> str:
        return self.source.path

    @property
    def watcher(self) -> "ConfigWatcher | None":
        return self.source.watcher

    @property
    def watching(self) -> bool:
        return self.source.watching

    @property
    def stats(self) -> ReloadStats:
        return self.source.stats

    @property
    def current_version(self) -> ConfigVersion:
        return self.source.current_version

    @property
    def versions(self) -> list[ConfigVersion]:
        return self.source.versions

    @property
    def seen_file_hash(self) -> str | None:
        return self.source.seen_file_hash

    @property
    def dispatcher(self) -> "HotReloadDispatcher":
        """Itself (every version is served by this one dispatcher)."""
        return self

    def __repr__(self) -> str:
        v, s = self.current_version, self.stats
        return (f"HotReloadDispatcher({self.path!r}, v{v.version}, watching={self.watching}, "
                f"reloads={s.total_reloads}, failed={s.failed_reloads})")


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
