"""Dispatch: run an operation with the kernel chosen for the call, with fallbacks and telemetry.

One :class:`Dispatcher` class serves every mode (its ranking is the strategy point); ``bind`` gives a
call site its fast path (:class:`~layerzero.dispatch.bound.BoundCall`)."""

from __future__ import annotations

from typing import Any

from layerzero.dispatch.api import dispatch, get_global_dispatcher, get_global_orchestrator, set_global_orchestrator
from layerzero.dispatch.dispatcher import Dispatcher
from layerzero.dispatch.dynamic import DynamicDispatcher
from layerzero.dispatch.orchestrator import DispatchOrchestrator, create_orchestrator
from layerzero.dispatch.overrides import use_kernels
from layerzero.dispatch.protocols import BaseDispatcher
from layerzero.dispatch.static import StaticDispatcher, StaticDispatcherBuilder, StaticKernelRegistry
from layerzero.dispatch.types import DispatchConfig, DispatchMode, DispatchResult, DispatchTiming
from layerzero.errors import (
    CircuitOpenError,
    ConfigValidationError,
    FallbackChainExhaustedError,
    KernelExecutionError,
    LayerZeroError,
    NoKernelAvailableError,
)

_LAZY = {
    "CircuitBreaker": "layerzero.dispatch.circuit",
    "CircuitBreakerConfig": "layerzero.dispatch.circuit",
    "CircuitBreakerManager": "layerzero.dispatch.circuit",
    "CircuitState": "layerzero.dispatch.circuit",
    "CircuitStats": "layerzero.dispatch.circuit",
    "ReloadStats": "layerzero.dispatch.hot_reload",
    "ConfigWatcher": "layerzero.dispatch.config_watch",
    "HotReloadDispatcher": "layerzero.dispatch.hot_reload",
    "ConfigVersion": "layerzero.dispatch.hot_reload",
    "create_hot_reload_dispatcher": "layerzero.dispatch.hot_reload",
    "AutotuneDispatcher": "layerzero.dispatch.autotune",
    "CallSite": "layerzero.dispatch.callsite",
    "BoundCall": "layerzero.dispatch.bound",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'layerzero.dispatch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BaseDispatcher",
    "CallSite",
    "CircuitOpenError",
    "ConfigValidationError",
    "DispatchConfig",
    "DispatchMode",
    "DispatchOrchestrator",
    "DispatchResult",
    "DispatchTiming",
    "Dispatcher",
    "DynamicDispatcher",
    "FallbackChainExhaustedError",
    "KernelExecutionError",
    "LayerZeroError",
    "NoKernelAvailableError",
    "StaticDispatcher",
    "StaticDispatcherBuilder",
    "StaticKernelRegistry",
    "create_orchestrator",
    "dispatch",
    "get_global_dispatcher",
    "get_global_orchestrator",
    "set_global_orchestrator",
    "use_kernels",
    *_LAZY,
]
