"""Static dispatch: a fixed kernel per operation, chosen at build time, no policy on the call path.

For a given call the first registered kernel whose constraints hold runs (the default first); the rest
are its fallbacks in registration order. That keeps builder-style setups (several kernels, one default) working on a machine where
the default (say flash-attn) is not installed: the next registered kernel serves, and ``explain`` says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

from layerzero.dispatch.dispatcher import Dispatcher
from layerzero.dispatch.types import DispatchConfig, DispatchMode, _check_kernel_map
from layerzero.errors import ConfigValidationError, DispatcherFrozenError, KernelNotFoundError, ValidationProblem
from layerzero.operations import OPERATIONS, expand
from layerzero.selection.ranking import RegistrationOrder

if TYPE_CHECKING:
    from layerzero.dispatch.circuit import CircuitBreakerManager
    from layerzero.registry import BackendRegistry, KernelRegistry, KernelSpec
    from layerzero.telemetry import DispatchTelemetry


class StaticKernelRegistry:
    """Kernels per operation in a fixed order (default first). ``freeze()`` forbids further changes."""

    def __init__(self) -> None:
        self._ops: dict[str, list["KernelSpec"]] = {}
        self._frozen = False
        self.generation = 0

    def register_from_spec(
        self, spec: "KernelSpec", is_default: bool = False, operation: str | Iterable[str] | None = None
    ) -> "StaticKernelRegistry":
        if self._frozen:
            raise DispatcherFrozenError(
                f"cannot register {spec.kernel_id!r}: the static registry is frozen; build a new one instead"
            )
        if operation is None:
            ops = [op for pattern in spec.operations for op in expand(pattern)]
        else:
            ops = [operation] if isinstance(operation, str) else list(operation)
        for op in ops:
            if op not in OPERATIONS:
                raise ValueError(f"operation: unknown operation {op!r}; known: {', '.join(OPERATIONS)}")
            if not spec.serves(op):
                raise ValueError(f"operation: kernel {spec.kernel_id!r} does not implement {op!r}")
            lst = self._ops.setdefault(op, [])
            if spec in lst:
                lst.remove(spec)
            if is_default:
                lst.insert(0, spec)
            else:
                lst.append(spec)
        self.generation += 1
        return self

    def freeze(self) -> "StaticKernelRegistry":
        self._frozen = True
        return self

    @property
    def is_frozen(self) -> bool:
        return self._frozen

    def get_by_operation(self, operation: str) -> list["KernelSpec"]:
        return list(self._ops.get(operation, ()))

    def operations(self) -> list[str]:
        return list(self._ops)

    def all(self) -> list["KernelSpec"]:
        seen: dict[str, KernelSpec] = {}
        for lst in self._ops.values():
            for spec in lst:
                seen.setdefault(spec.kernel_id, spec)
        return list(seen.values())

    def default_for(self, operation: str) -> "KernelSpec | None":
        lst = self._ops.get(operation)
        return lst[0] if lst else None


def registry_from_map(kernel_map: Mapping[str, str], kernels: "KernelRegistry") -> StaticKernelRegistry:
    """A static registry from ``{operation: kernel id}``; the global catalogue's other kernels for each
    operation follow the mapped one in priority order, as its fallbacks. A wrong map raises
    ConfigValidationError naming the entry, the value and the fix."""
    reg = StaticKernelRegistry()
    for op, name in _check_kernel_map(kernel_map).items():
        if op not in OPERATIONS:
            raise ConfigValidationError([ValidationProblem(
                "DispatchConfig.static_kernel_map", op,
                f"unknown operation {op!r}; fix: use one of {', '.join(OPERATIONS)}")])
        try:
            spec = kernels.get(name)
        except KernelNotFoundError as e:
            raise ConfigValidationError([ValidationProblem(
                f"DispatchConfig.static_kernel_map[{op!r}]", name,
                f"{e}; fix: map {op!r} to a registered kernel id or alias")]) from None
        if not spec.serves(op):
            raise ConfigValidationError([ValidationProblem(
                f"DispatchConfig.static_kernel_map[{op!r}]", name,
                f"kernel {spec.kernel_id!r} does not implement {op!r} (it serves {', '.join(spec.operations)}); "
                f"fix: map {op!r} to a kernel of that operation")])
        reg.register_from_spec(spec, is_default=True, operation=op)
    for op in OPERATIONS:
        for spec in kernels.get_by_operation(op):
            if spec not in reg.get_by_operation(op):
                reg.register_from_spec(spec, operation=op)
    return reg


class StaticDispatcher(Dispatcher):
    """A :class:`~layerzero.dispatch.dispatcher.Dispatcher` over a fixed catalogue: ``registry``, else one
    built from ``config.static_kernel_map``; no policy, :class:`RegistrationOrder` ranks."""

    mode = DispatchMode.STATIC

    def __init__(
        self,
        config: DispatchConfig | None = None,
        registry: StaticKernelRegistry | None = None,
        kernel_registry: "KernelRegistry | None" = None,
        backend_registry: "BackendRegistry | None" = None,
        circuits: "CircuitBreakerManager | None" = None,
        telemetry: "DispatchTelemetry | None" = None,
    ):
        from layerzero.registry import get_global_kernel_registry

        config = config or DispatchConfig(mode=DispatchMode.STATIC)
        kernels = kernel_registry or get_global_kernel_registry()
        self.static_registry = registry if registry is not None else registry_from_map(config.static_kernel_map, kernels)
        super().__init__(config, kernels, backend_registry, None, circuits, telemetry,
                         ranking=RegistrationOrder(), catalogue=self.static_registry)


class StaticDispatcherBuilder:
    """Fluent construction of a StaticDispatcher: kernels one by one, then ``build()`` freezes them."""

    def __init__(self) -> None:
        self._registry = StaticKernelRegistry()
        self._config: dict[str, Any] = {"mode": DispatchMode.STATIC}

    def with_kernel(
        self, spec: "KernelSpec", operation: str | None = None, default: bool = False
    ) -> "StaticDispatcherBuilder":
        self._registry.register_from_spec(spec, is_default=default, operation=operation)
        return self

    def with_config(self, **fields: Any) -> "StaticDispatcherBuilder":
        known = DispatchConfig.__dataclass_fields__
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise TypeError(f"with_config: unknown DispatchConfig field(s) {unknown}; known: {sorted(known)}")
        self._config.update(fields)
        return self

    def build(self, **kwargs: Any) -> StaticDispatcher:
        return StaticDispatcher(DispatchConfig(**self._config), registry=self._registry.freeze(), **kwargs)
