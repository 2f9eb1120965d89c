"""LayerZero: the fastest correct kernel for every attention, norm, RoPE and activation call.

Importing this package imports no optional backend (flash-attn, FlashInfer, xFormers, Liger, Triton);
backends are probed on first use. Sub-packages: ``registry``, ``selection``, ``policy``, ``dispatch``,
``kernels``, ``telemetry``, ``ops`` (the functional API patched models call).

This module is the composition root. The registry floor holds the global kernel and backend registries
but may not import the kernels floor above it, so the root, which Python runs before any submodule,
installs the built-in catalogue into the registry. The factories import :mod:`layerzero.kernels.catalog`
only when a global registry is first asked for: at import time the root loads nothing above the
registry floor (``tests/test_layers.py`` enforces both, and gives the root its own place in the floors).
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging as _logging
from typing import TYPE_CHECKING as _TYPE_CHECKING

from layerzero import registry as _registry
from layerzero.errors import LayerZeroError

if _TYPE_CHECKING:
    from layerzero.registry import BackendSpec, KernelSpec

# A library leaves handler choice to the application; this keeps warnings from printing via lastResort.
_logging.getLogger("layerzero").addHandler(_logging.NullHandler())


def _builtin_backends() -> "list[BackendSpec]":
    from layerzero.kernels.catalog import builtin_backends

    return builtin_backends()


def _builtin_kernels() -> "list[KernelSpec]":
    from layerzero.kernels.catalog import builtin_kernels

    return builtin_kernels()


_registry.set_default_backends(_builtin_backends)
_registry.set_default_kernels(_builtin_kernels)


def __getattr__(name: str):
    # ``layerzero.use_kernels`` without importing the dispatcher at ``import layerzero`` time
    if name == "use_kernels":
        from layerzero.dispatch.overrides import use_kernels

        return use_kernels
    raise AttributeError(f"module 'layerzero' has no attribute {name!r}")


__all__ = ["LayerZeroError", "__version__"]  # use_kernels is documented in layerzero.dispatch
