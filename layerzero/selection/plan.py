"""A plan: what to run for one bucket of calls — the chosen kernel first, then its fallbacks in order —
with the per-GPU circuit keys and the device index the runner's device guard needs.

Its own module because rankings, the engine and the dispatcher all speak of plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layerzero.context.call_context import SelectionContext

if TYPE_CHECKING:
    from layerzero.registry import KernelSpec

__all__ = ["CUDA_TENSOR_DEVICE", "Plan"]

CUDA_TENSOR_DEVICE = -1  # Plan.cuda_index: on CUDA, device index taken from the call's first tensor


@dataclass(frozen=True)
class Plan:
    """What to run for one bucket of calls: ``kernels[0]`` first, the rest as fallbacks in order."""

    operation: str
    kernels: tuple["KernelSpec", ...]
    context: SelectionContext
    circuit_keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    cuda_index: int | None = field(init=False, repr=False, compare=False)
    # Set when verification replaced this plan in the cache (its first kernel gave a wrong result): bound
    # call sites holding it select again.
    superseded: bool = field(init=False, repr=False, compare=False, default=False)
    # What a runner prepared to serve this plan's cache hits (``Runner.hit_path``), kept with the plan so a
    # call site moving between cached buckets, or a call by name, finds it made; dropped with the plan.
    prepared: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        # Circuit breakers are per kernel and per GPU: a kernel failing on cuda:1 must not open its
        # circuit on cuda:0. CPU calls share the plain kernel id.
        dev = self.context.device
        cuda = bool(dev) and dev.startswith("cuda")
        suffix = f"@{dev}" if cuda else ""
        object.__setattr__(self, "circuit_keys", tuple(k.kernel_id + suffix for k in self.kernels))
        # The GPU the call's tensors live on, for the runner's device guard: kernels that launch on the
        # *current* device (Triton, FlashInfer, Liger) must run with it current. CUDA_TENSOR_DEVICE: a
        # CUDA context without an index (an explicit ``device="cuda"``) reads it from the tensors.
        index: int | None = None
        if cuda:
            _, _, idx = dev.partition(":")
            index = int(idx) if idx.isdigit() else CUDA_TENSOR_DEVICE
        object.__setattr__(self, "cuda_index", index)

    @property
    def primary(self) -> "KernelSpec":
        return self.kernels[0]
