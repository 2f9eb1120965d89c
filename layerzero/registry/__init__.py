"""Kernel and backend registries.

The global registries are filled on first use from :mod:`layerzero.kernels.catalog`, which describes
every kernel without importing any optional backend."""

from __future__ import annotations

import threading

from layerzero.registry.backends import BackendRegistry, BackendSpec, BackendStatus
from layerzero.registry.constraints import KernelConstraints
from layerzero.registry.kernel_registry import KernelRegistry
from layerzero.registry.kernel_spec import KernelSpec

__all__ = [
    "BackendRegistry",
    "BackendSpec",
    "BackendStatus",
    "KernelConstraints",
    "KernelRegistry",
    "KernelSpec",
    "get_global_backend_registry",
    "get_global_kernel_registry",
]

_lock = threading.Lock()
_kernels: KernelRegistry | None = None
_backends: BackendRegistry | None = None


def get_global_backend_registry() -> BackendRegistry:
    global _backends
    if _backends is None:
        with _lock:
            if _backends is None:
                from layerzero.kernels.catalog import builtin_backends

                _backends = BackendRegistry(builtin_backends())
    return _backends


def get_global_kernel_registry() -> KernelRegistry:
    global _kernels
    if _kernels is None:
        get_global_backend_registry()
        with _lock:
            if _kernels is None:
                from layerzero.kernels.catalog import builtin_kernels

                _kernels = KernelRegistry(builtin_kernels())
    return _kernels
