"""A process-wide object built on first use by a factory that a higher floor installs.

The registry floor holds the global kernel and backend registries but must not know which kernels exist:
the built-in catalogue lives in :mod:`layerzero.kernels`, a floor above. So the globals are built from a
factory that the package root (the composition root) installs when ``layerzero`` is imported; the factory
imports the catalogue only when a global registry is first asked for, which keeps ``import layerzero``
cheap. A registry floor used on its own (nothing installed) starts from an empty registry.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

from layerzero.errors import LayerZeroError

T = TypeVar("T")

__all__ = ["LazyDefault"]


class LazyDefault(Generic[T]):
    """One lazily built, thread-safe global whose factory can be replaced until it is first built."""

    def __init__(self, name: str, factory: Callable[[], T]) -> None:
        self.name = name
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()

    def install(self, factory: Callable[[], T]) -> None:
        """Build the global with ``factory``; refused once it was handed out (two worlds would coexist)."""
        with self._lock:
            if self._value is not None:
                raise LayerZeroError(f"the global {self.name} is already in use; install its factory earlier")
            self._factory = factory

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
                value = self._value
        return value
