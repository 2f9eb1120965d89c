"""Kernel and backend registries, and the process-wide ones every dispatcher starts from.

This floor knows what a kernel is, not which kernels exist: the global registries are filled on first use
by factories installed with :func:`set_default_backends` / :func:`set_default_kernels`. The package root
installs LayerZero's built-in catalogue (:mod:`layerzero.kernels.catalog`, which imports no optional
backend) when ``layerzero`` is imported, so ``get_global_kernel_registry()`` always holds the built-in
kernels, while this floor never imports the kernels floor above it."""

from __future__ import annotations

from layerzero.registry.backends import (
    BackendRegistry,
    BackendSpec,
    BackendStatus,
    get_global_backend_registry,
    set_default_backends,
)
from layerzero.registry.constraints import KernelConstraints, needs_backend_status
from layerzero.registry.kernel_registry import KernelRegistry, get_global_kernel_registry, set_default_kernels
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
    "needs_backend_status",
    "set_default_backends",
    "set_default_kernels",
]
