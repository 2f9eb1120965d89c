"""Dynamic dispatch: per-call selection under a policy, cached per bucket of calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from layerzero.dispatch.core import PlannedDispatcher, SelectionState
from layerzero.dispatch.types import DispatchConfig, DispatchMode
from layerzero.selection.engine import SelectionEngine

if TYPE_CHECKING:
    from layerzero.dispatch.circuit import CircuitBreakerManager
    from layerzero.policy import Policy
    from layerzero.registry import BackendRegistry, KernelRegistry
    from layerzero.telemetry import DispatchTelemetry


def resolve_policy(config: DispatchConfig, policy: "Policy | None", registry: "KernelRegistry") -> "Policy":
    """The policy a dispatcher starts with: explicit object, then ``config.policy``, then
    ``config.policy_path``, else the empty policy (built-in priorities decide)."""
    from layerzero.policy import Policy, load_policy

    if policy is not None:
        return policy
    if config.policy is not None:
        return config.policy
    if config.policy_path:
        return load_policy(config.policy_path, registry=registry)
    return Policy.empty()


class DynamicDispatcher(PlannedDispatcher):
    def __init__(
        self,
        config: DispatchConfig | None = None,
        kernel_registry: "KernelRegistry | None" = None,
        backend_registry: "BackendRegistry | None" = None,
        policy: "Policy | None" = None,
        circuits: "CircuitBreakerManager | None" = None,
        telemetry: "DispatchTelemetry | None" = None,
    ):
        from layerzero.registry import get_global_kernel_registry

        config = config or DispatchConfig()
        self._policy = resolve_policy(config, policy, kernel_registry or get_global_kernel_registry())
        super().__init__(config, kernel_registry, backend_registry, circuits, telemetry)

    @property
    def mode(self) -> DispatchMode:
        return DispatchMode.DYNAMIC

    @property
    def policy(self) -> "Policy":
        return self._state.engine.policy.policy  # type: ignore[union-attr]

    def set_policy(self, policy: "Policy", version: Any = None) -> None:
        """Swap the policy: a new engine with an empty cache, published by one reference assignment.
        Calls already running keep the state they read at their start."""
        self._policy = policy
        self._state = SelectionState(self._make_engine(policy), version)

    def _build_engine(self) -> SelectionEngine:
        return self._make_engine(self._policy)

    def _make_engine(self, policy: "Policy") -> SelectionEngine:
        from layerzero.policy import PolicyEngine

        return SelectionEngine(
            self.kernel_registry,
            self.backend_registry,
            PolicyEngine(policy, self.kernel_registry),
            cache_size=self.config.cache_size,
            enable_cache=self.config.enable_cache,
        )
