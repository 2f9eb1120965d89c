"""Optional backends, probed lazily and once.

Importing LayerZero must never import flash_attn, flashinfer, xformers, liger_kernel or triton: a probe
runs only when selection first asks whether a backend is usable, and its result (with the reason it
failed, e.g. ``No module named 'flashinfer'``) is cached for ``explain()`` and error messages.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from layerzero.errors import LayerZeroError
from layerzero.registry.defaults import LazyDefault


@dataclass(frozen=True)
class BackendStatus:
    available: bool
    version: str | None = None
    reason: str | None = None


@dataclass
class BackendSpec:
    """One optional library. ``precheck`` runs first and can rule the backend out without importing it
    (Triton without a GPU or the interpreter); ``modules`` are then imported; ``extra_check`` may add a
    reason (e.g. "no CUDA device") after a successful import; ``version_module`` names where
    ``__version__`` lives."""

    backend_id: str
    modules: tuple[str, ...] = ()
    description: str = ""
    install_hint: str = ""
    version_module: str | None = None
    min_version: str | None = None
    extra_check: Callable[[], str | None] | None = None
    precheck: Callable[[], str | None] | None = None
    _status: BackendStatus | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def probe(self, refresh: bool = False) -> BackendStatus:
        status = self._status
        if status is not None and not refresh:
            return status
        with self._lock:
            if self._status is None or refresh:
                self._status = self._run_probe()
            return self._status

    @property
    def is_available(self) -> bool:
        return self.probe().available

    def _run_probe(self) -> BackendStatus:
        version = None
        if self.precheck is not None:  # a cheap condition that makes importing pointless (e.g. no GPU)
            try:
                reason = self.precheck()
            except Exception as e:
                reason = f"probe failed: {type(e).__name__}: {e}"
            if reason:
                return BackendStatus(False, None, f"backend {self.backend_id}: {reason}")
        for name in self.modules:
            try:
                mod = importlib.import_module(name)
            except Exception as e:  # ImportError, but also broken installs raising anything
                hint = f" (install: {self.install_hint})" if self.install_hint else ""
                return BackendStatus(False, None, f"backend {self.backend_id} not installed: {e}{hint}")
            if name == (self.version_module or self.modules[0]):
                version = getattr(mod, "__version__", None)
        if version is None and self.version_module:
            try:
                from importlib.metadata import version as dist_version

                version = dist_version(self.version_module)
            except Exception:
                version = None
        if self.min_version and version and version_tuple(version) < version_tuple(self.min_version):
            return BackendStatus(
                False, version, f"backend {self.backend_id} {version} < required {self.min_version}"
            )
        if self.extra_check is not None:
            try:
                reason = self.extra_check()
            except Exception as e:
                reason = f"probe failed: {type(e).__name__}: {e}"
            if reason:
                return BackendStatus(False, version, f"backend {self.backend_id}: {reason}")
        return BackendStatus(True, str(version) if version is not None else None, None)


def version_tuple(v: str) -> tuple[int, ...]:
    """``"2.6.3+cu124"`` -> ``(2, 6, 3)``: comparable release numbers, local tags and suffixes dropped."""
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


class BackendRegistry:
    """Backends by id. Kernels name their backend; an unknown backend id is a registration error."""

    def __init__(self, backends: Iterable[BackendSpec] = ()):
        self._backends: dict[str, BackendSpec] = {}
        for b in backends:
            self.register(b)

    def register(self, spec: BackendSpec, replace: bool = False) -> BackendSpec:
        if spec.backend_id in self._backends and not replace:
            raise LayerZeroError(f"backend {spec.backend_id!r} is already registered (pass replace=True)")
        self._backends[spec.backend_id] = spec
        return spec

    def get(self, backend_id: str) -> BackendSpec:
        try:
            return self._backends[backend_id]
        except KeyError:
            raise LayerZeroError(
                f"unknown backend {backend_id!r}; known: {', '.join(sorted(self._backends))}"
            ) from None

    def __contains__(self, backend_id: str) -> bool:
        return backend_id in self._backends

    def status(self, backend_id: str) -> BackendStatus:
        spec = self._backends.get(backend_id)
        if spec is None:
            return BackendStatus(False, None, f"backend {backend_id} is not registered")
        return spec.probe()

    def is_available(self, backend_id: str) -> bool:
        return self.status(backend_id).available

    def all(self) -> list[BackendSpec]:
        return list(self._backends.values())

    def refresh(self) -> None:
        for spec in self._backends.values():
            spec.probe(refresh=True)


_GLOBAL: LazyDefault[BackendRegistry] = LazyDefault("backend registry", BackendRegistry)


def get_global_backend_registry() -> BackendRegistry:
    """The process-wide backends: the built-in ones the package root installs, probed lazily."""
    return _GLOBAL.get()


def set_default_backends(factory: Callable[[], Iterable[BackendSpec]]) -> None:
    """Fill the global backend registry from ``factory`` on first use (before anyone has asked for it)."""
    _GLOBAL.install(lambda: BackendRegistry(factory()))
