"""KernelRegistry: kernels by id and alias, and by the operation they serve."""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Iterator

from layerzero.errors import KernelNotFoundError, LayerZeroError
from layerzero.registry.backends import get_global_backend_registry
from layerzero.registry.defaults import LazyDefault
from layerzero.registry.kernel_spec import KernelSpec


class KernelRegistry:
    """Kernels by canonical id; aliases (alternative spellings used in policy files) resolve to the same spec.

    Registration is rare and locked; lookups read plain dicts. ``generation`` increases on every change so
    selection caches built on an older catalogue can tell they are stale."""

    def __init__(self, kernels: Iterable[KernelSpec] = ()):
        self._by_id: dict[str, KernelSpec] = {}
        self._alias: dict[str, str] = {}
        self._by_op: dict[str, tuple[KernelSpec, ...]] = {}
        self._lock = threading.RLock()
        self.generation = 0
        for k in kernels:
            self.register(k)

    def register(self, spec: KernelSpec, replace: bool = False) -> KernelSpec:
        with self._lock:
            for name in spec.names:
                owner = self._alias.get(name, name if name in self._by_id else None)
                if owner is not None and owner != spec.kernel_id:
                    raise LayerZeroError(f"kernel name {name!r} is already used by {owner!r}")
            if spec.kernel_id in self._by_id and not replace:
                raise LayerZeroError(f"kernel {spec.kernel_id!r} is already registered (pass replace=True)")
            old = self._by_id.get(spec.kernel_id)
            if old is not None:
                for a in old.aliases:
                    self._alias.pop(a, None)
            self._by_id[spec.kernel_id] = spec
            for a in spec.aliases:
                self._alias[a] = spec.kernel_id
            self._by_op = {}
            self.generation += 1
        return spec

    def unregister(self, kernel_id: str) -> None:
        with self._lock:
            spec = self.get(kernel_id)
            del self._by_id[spec.kernel_id]
            for a in spec.aliases:
                self._alias.pop(a, None)
            self._by_op = {}
            self.generation += 1

    def canonical_id(self, name: str) -> str:
        """The canonical id of an id or alias; raises KernelNotFoundError with suggestions."""
        if name in self._by_id:
            return name
        kid = self._alias.get(name)
        if kid is None:
            raise KernelNotFoundError(name, self.names())
        return kid

    def get(self, name: str) -> KernelSpec:
        return self._by_id[self.canonical_id(name)]

    def find(self, name: str) -> KernelSpec | None:
        kid = name if name in self._by_id else self._alias.get(name)
        return self._by_id.get(kid) if kid is not None else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._by_id or name in self._alias)

    def get_by_operation(self, operation: str) -> list[KernelSpec]:
        """Kernels serving ``operation``, highest built-in priority first."""
        cached = self._by_op.get(operation)
        if cached is None:
            cached = tuple(
                sorted((k for k in self._by_id.values() if k.serves(operation)), key=lambda k: -k.priority)
            )
            self._by_op[operation] = cached
        return list(cached)

    def reference_for(self, operation: str) -> KernelSpec | None:
        """The fp32 reference kernel (tag ``"reference"``) of an operation: the conformance oracle."""
        return next((k for k in self.get_by_operation(operation) if k.is_reference), None)

    def names(self) -> list[str]:
        return sorted([*self._by_id, *self._alias])

    def ids(self) -> list[str]:
        return list(self._by_id)

    def all(self) -> list[KernelSpec]:
        return list(self._by_id.values())

    def __iter__(self) -> Iterator[KernelSpec]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)


_GLOBAL: LazyDefault[KernelRegistry] = LazyDefault("kernel registry", KernelRegistry)


def get_global_kernel_registry() -> KernelRegistry:
    """The process-wide kernels: the built-in catalogue the package root installs, built on first use."""
    get_global_backend_registry()  # the kernels name backends: build those first, outside this lock
    return _GLOBAL.get()


def set_default_kernels(factory: Callable[[], Iterable[KernelSpec]]) -> None:
    """Fill the global kernel registry from ``factory`` on first use (before anyone has asked for it)."""
    _GLOBAL.install(lambda: KernelRegistry(factory()))
