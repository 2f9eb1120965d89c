"""The dispatcher protocol: what the orchestrator needs from any dispatcher, built-in or custom."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

    from layerzero.dispatch.types import DispatchMode, DispatchResult
    from layerzero.registry import KernelSpec
    from layerzero.context import SelectionContext


class BaseDispatcher(ABC):
    """Subclass this to plug a custom selection strategy into the orchestrator
    (``DispatchOrchestrator.register_dispatcher(mode, dispatcher)``)."""

    @property
    def mode(self) -> "DispatchMode":
        from layerzero.dispatch.types import DispatchMode

        return DispatchMode.DYNAMIC

    @abstractmethod
    def dispatch(
        self,
        operation: str,
        inputs: "Mapping[str, torch.Tensor]",
        context: "SelectionContext | None" = None,
        **kwargs: Any,
    ) -> "DispatchResult":
        """Run ``operation`` on ``inputs`` with the kernel this dispatcher chooses."""

    def get_kernel_for_operation(self, operation: str, context: "SelectionContext") -> "KernelSpec":
        """The kernel that would run a call with this context (no execution)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its selection")
