"""KernelSpec: one kernel's identity, what it serves, what it can do, and how to call it (lazily)."""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping

from layerzero.operations import CONTRACTS, matches
from layerzero.registry.backends import BackendRegistry, get_global_backend_registry
from layerzero.registry.constraints import KernelConstraints

if TYPE_CHECKING:
    from layerzero.context.call_context import SelectionContext


class _ResolvedOnFirstUse:
    """``KernelSpec.impl``: a non-data descriptor that resolves the kernel's function once and stores it in
    the instance's ``__dict__``, where every later ``spec.impl`` finds it as a plain attribute. (A property
    would run a Python function on every dispatch; this runs one only until the function is known.)"""

    def __get__(self, spec: "KernelSpec | None", owner: type) -> Any:
        if spec is None:
            return self
        with spec._lock:
            fn = spec.__dict__.get("impl")
            if fn is None:
                if spec.impl_path is None:
                    raise RuntimeError(f"kernel {spec.kernel_id!r} has no implementation")
                module, _, attr = spec.impl_path.partition(":")
                fn = spec.__dict__["impl"] = getattr(importlib.import_module(module), attr)
        return fn


class KernelSpec:
    """A kernel and the truth about it.

    ``impl`` is the function itself, or a ``"package.module:function"`` path (``impl_path``) resolved on
    first call, for a module that cannot be imported without its optional backend. ``operations`` may hold globs (``"attention.*"``).
    ``priority`` orders kernels that pass every check when no policy rule decides (higher wins); it is
    grounded in measurements (README, "Kernel table").
    """

    def __init__(
        self,
        kernel_id: str,
        operations: str | tuple[str, ...] | list[str],
        backend: str,
        impl: Callable[..., Any] | str | None = None,
        constraints: KernelConstraints | None = None,
        priority: int = 50,
        aliases: tuple[str, ...] | list[str] = (),
        tags: frozenset[str] | set[str] | tuple[str, ...] = frozenset(),
        description: str = "",
    ) -> None:
        self.kernel_id = kernel_id
        self.operations = (operations,) if isinstance(operations, str) else tuple(operations)
        self.backend = backend
        self.impl_path = impl if isinstance(impl, str) else None
        if impl is not None and not isinstance(impl, str):
            self.impl = impl  # a plain instance attribute; a path is resolved on first use (_ResolvedOnFirstUse)
        self.constraints = constraints or KernelConstraints()
        self.priority = int(priority)
        self.aliases = tuple(aliases)
        self.tags = frozenset(tags)
        self.description = description
        self._lock = threading.Lock()
        params: set[str] = set()
        for op, c in CONTRACTS.items():
            if self.serves(op):
                params |= c.parameters
        #: The keyword arguments this kernel accepts: the union of its operations' contracts (a plain
        #: attribute: the runner reads it on every call).
        self.parameters: frozenset[str] = frozenset(params)

    # ------------------------------------------------------------------ identity
    @property
    def names(self) -> tuple[str, ...]:
        return (self.kernel_id, *self.aliases)

    def serves(self, operation: str) -> bool:
        return any(matches(p, operation) for p in self.operations)

    @property
    def is_reference(self) -> bool:
        return "reference" in self.tags

    # ------------------------------------------------------------------ calling
    impl = _ResolvedOnFirstUse()  # the kernel's function (resolved from ``impl_path`` on first use)

    def map_arguments(self, inputs: Mapping[str, Any], kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Merge tensors and options into the keyword arguments of the operation's canonical contract.

        Options that the contract does not know (a caller's extra bookkeeping) are dropped so every
        kernel sees the same, documented signature."""
        params = self.parameters
        out = {k: v for k, v in inputs.items() if k in params}
        if kwargs:
            for k, v in kwargs.items():
                if k in params:
                    out[k] = v
        return out

    def __call__(self, **kwargs: Any) -> Any:
        return self.impl(**kwargs)

    # ------------------------------------------------------------------ checks
    def check(self, context: "SelectionContext", backends: BackendRegistry | None = None) -> list[str]:
        """Every reason this kernel cannot run the call described by ``context`` (empty: it can).

        ``backends`` (default: the global registry) says whether the kernel's library is usable and which
        build is installed; that status is handed to the constraints that depend on the build."""
        reasons: list[str] = []
        if context.operation is not None and not self.serves(context.operation):
            reasons.append(f"does not implement {context.operation}")
        if backends is None:
            backends = get_global_backend_registry()
        status = backends.status(self.backend)
        if not status.available:
            reasons.append(status.reason or f"backend {self.backend} unavailable")
        reasons.extend(self.constraints.check(context, status))
        return reasons

    def describe(self) -> dict[str, Any]:
        return {
            "kernel_id": self.kernel_id,
            "operations": list(self.operations),
            "backend": self.backend,
            "priority": self.priority,
            "aliases": list(self.aliases),
            "tags": sorted(self.tags),
            "constraints": self.constraints.describe(),
            "description": self.description,
        }

    def __repr__(self) -> str:
        return f"KernelSpec({self.kernel_id!r}, backend={self.backend!r}, operations={self.operations})"
