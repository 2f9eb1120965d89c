"""Kernel implementations and the built-in catalogue.

Importing this package imports no optional backend: ``catalog`` describes kernels as data, and each adapter
module imports its library inside the kernel function.
"""

from layerzero.kernels.catalog import builtin_backends, builtin_kernels

__all__ = ["builtin_backends", "builtin_kernels"]
