"""The orchestrator: one entry point over the dispatchers of each mode, sharing breakers and telemetry.

Every built-in mode is a :class:`~layerzero.dispatch.dispatcher.Dispatcher`; a custom one is anything
with ``dispatch`` (see :class:`~layerzero.dispatch.protocols.BaseDispatcher`). The orchestrator only
calls public methods of its dispatchers.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Mapping

from layerzero.dispatch.dispatcher import Dispatcher
from layerzero.dispatch.protocols import BaseDispatcher
from layerzero.dispatch.types import DispatchConfig, DispatchMode, DispatchResult

if TYPE_CHECKING:
    from layerzero.dispatch.bound import BoundCall, RoutedCall
    from layerzero.policy import Policy
    from layerzero.registry import BackendRegistry, KernelRegistry, KernelSpec
    from layerzero.context import SelectionContext
    from layerzero.selection.engine import Explanation
    from layerzero.telemetry import TelemetrySnapshot


class DispatchOrchestrator:
    """Routes each call to the dispatcher of its mode (``config.mode`` unless the call says otherwise).

    Dispatchers are created on first use and share one circuit-breaker manager and one telemetry
    recorder, so a kernel that fails under the dynamic dispatcher is also avoided by the static one."""

    def __init__(
        self,
        config: DispatchConfig | None = None,
        kernel_registry: "KernelRegistry | None" = None,
        backend_registry: "BackendRegistry | None" = None,
        policy: "Policy | None" = None,
    ):
        from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

        self.config = config or DispatchConfig()
        self.kernel_registry = kernel_registry or get_global_kernel_registry()
        self.backend_registry = backend_registry or get_global_backend_registry()
        self._policy = policy
        self.circuits = None
        if self.config.circuit_breaker_enabled:
            from layerzero.dispatch.circuit import CircuitBreakerManager

            self.circuits = CircuitBreakerManager.from_dispatch_config(self.config)
        from layerzero.telemetry import DispatchTelemetry

        self.telemetry = DispatchTelemetry(enabled=self.config.enable_telemetry)
        self._dispatchers: dict[DispatchMode, BaseDispatcher] = {}
        self._lock = threading.Lock()
        self._route: Any = None
        self._set_default(self.get_dispatcher(self.config.mode))

    # ------------------------------------------------------------------ dispatchers
    def register_dispatcher(self, mode: DispatchMode, dispatcher: BaseDispatcher) -> None:
        if not isinstance(dispatcher, BaseDispatcher) and not callable(getattr(dispatcher, "dispatch", None)):
            raise TypeError(f"register_dispatcher: {dispatcher!r} has no dispatch() method")
        with self._lock:
            self._dispatchers[mode] = dispatcher
            if mode == self.config.mode:
                self._set_default(dispatcher)

    def _set_default(self, dispatcher: BaseDispatcher) -> None:
        # ``execute`` (the built-in dispatcher's dict-of-kwargs entry) saves a frame and a **kwargs repack
        # on the hot path; the route is set before the dispatcher so a reader never pairs it with another.
        self._route = None
        #: The dispatcher of ``config.mode``, which ``dispatch``/``call``/``bind`` use (read-only).
        self.default = dispatcher
        self._route = dispatcher.execute if isinstance(dispatcher, Dispatcher) else None

    def get_dispatcher(self, mode: DispatchMode | None = None) -> BaseDispatcher:
        mode = self.config.mode if mode is None else mode
        d = self._dispatchers.get(mode)
        if d is None:
            with self._lock:
                d = self._dispatchers.get(mode)
                if d is None:
                    d = self._create(mode)
                    self._dispatchers[mode] = d
        return d

    def _create(self, mode: DispatchMode) -> BaseDispatcher:
        shared: dict[str, Any] = dict(
            kernel_registry=self.kernel_registry,
            backend_registry=self.backend_registry,
            circuits=self.circuits,
            telemetry=self.telemetry,
        )
        if mode is DispatchMode.STATIC:
            from layerzero.dispatch.static import StaticDispatcher

            return StaticDispatcher(self.config, **shared)
        if mode is DispatchMode.HOT_RELOAD:
            from layerzero.dispatch.hot_reload import HotReloadDispatcher

            # HOT_RELOAD means "follow the file": start watching it now (every watch_interval_seconds,
            # changes applied once settled). The watcher is a daemon thread; stop it with close().
            hot = HotReloadDispatcher(self.config, **shared)
            hot.watch()
            return hot
        if mode is DispatchMode.AUTOTUNE:
            from layerzero.dispatch.autotune import AutotuneDispatcher

            return AutotuneDispatcher(self.config, policy=self._policy, **shared)
        return Dispatcher(self.config, policy=self._policy, **shared)

    # ------------------------------------------------------------------ calls
    def dispatch(
        self,
        operation: str,
        inputs: Mapping[str, Any],
        context: "SelectionContext | None" = None,
        mode: DispatchMode | None = None,
        **kwargs: Any,
    ) -> DispatchResult:
        if mode is None:
            route = self._route
            if route is not None:
                return route(operation, inputs, context, kwargs, True)
            return self.default.dispatch(operation, inputs, context, **kwargs)
        return self.get_dispatcher(mode).dispatch(operation, inputs, context, **kwargs)

    def call(self, operation: str, inputs: Mapping[str, Any], kwargs: dict[str, Any] | None = None) -> Any:
        """Run ``operation`` and return its output only (used by ``layerzero.ops``)."""
        route = self._route
        if route is not None:
            return route(operation, inputs, None, kwargs if kwargs is not None else {}, False)
        d = self.default
        fast = getattr(d, "call", None)
        if fast is not None:
            return fast(operation, inputs, kwargs if kwargs is not None else {})
        return d.dispatch(operation, inputs, None, **(kwargs or {})).output

    def bind(self, operation: str) -> "BoundCall | RoutedCall":
        """The fast path for one call site of ``operation`` on the default dispatcher (see
        :class:`~layerzero.dispatch.bound.BoundCall`); a dispatcher that cannot be bound gets a call that
        routes through it every time. Bind again after ``register_dispatcher`` replaces the default
        (:class:`~layerzero.dispatch.callsite.CallSite` does)."""
        d = self.default
        bind = getattr(d, "bind", None)
        if bind is not None:
            return bind(operation)
        from layerzero.dispatch.bound import RoutedCall

        return RoutedCall(d, operation)

    def select(self, operation: str, inputs: Mapping[str, Any], mode: DispatchMode | None = None, **kwargs: Any) -> "KernelSpec":
        d = self.get_dispatcher(mode)
        return d.select(operation, inputs, **kwargs)  # type: ignore[attr-defined]

    def explain(
        self, operation: str, context: "SelectionContext | None" = None, mode: DispatchMode | None = None, **facts: Any
    ) -> "Explanation":
        d = self.get_dispatcher(mode)
        explain = getattr(d, "explain", None)
        if explain is None:
            raise TypeError(f"{type(d).__name__} cannot explain its choices")
        return explain(operation, context, **facts)

    @property
    def policy(self) -> "Policy | None":
        return getattr(self.get_dispatcher(DispatchMode.DYNAMIC), "policy", None)

    def set_policy(self, policy: "Policy") -> None:
        """Swap the policy of the policy-driven dispatchers (dynamic, autotune, hot reload) atomically."""
        self._policy = policy
        for d in list(self._dispatchers.values()):
            setter = getattr(d, "set_policy", None)
            if setter is not None and getattr(d, "follows_policy", True):
                setter(policy)

    def refresh(self) -> None:
        """Re-read the kernel catalogue (after registering kernels at run time)."""
        for d in list(self._dispatchers.values()):
            refresh = getattr(d, "refresh", None)
            if refresh is not None:
                refresh()

    def get_telemetry(self) -> "TelemetrySnapshot":
        return self.telemetry.snapshot()

    def close(self) -> None:
        """Stop background work: the HOT_RELOAD dispatcher's file watcher (its current policy keeps
        serving). Dispatching still works after close; the orchestrator is also a context manager."""
        for d in list(self._dispatchers.values()):
            stop = getattr(d, "stop", None)
            if callable(stop):
                stop()

    def __enter__(self) -> "DispatchOrchestrator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def create_orchestrator(
    config: DispatchConfig | None = None,
    kernel_registry: "KernelRegistry | None" = None,
    backend_registry: "BackendRegistry | None" = None,
    policy: "Policy | None" = None,
) -> DispatchOrchestrator:
    """An orchestrator for ``config``. In ``DispatchMode.HOT_RELOAD`` it watches ``config.config_path``
    from the start; call ``close()`` (or use it in a ``with`` block) to stop the watcher."""
    return DispatchOrchestrator(config, kernel_registry, backend_registry, policy)
