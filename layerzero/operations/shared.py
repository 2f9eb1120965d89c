"""One buffer for a tensor that every layer of a compiled forward reads.

Why: Inductor inlines a traced tensor's computation into each consumer when the computation is cheap
pointwise work, so a tensor a model builds once and hands to every layer is rebuilt in every layer of the
compiled graph. Two such tensors matter at prefill: the attention mask Transformers materializes under
compile (a ``(B, 1, S, S)`` bool, rebuilt per layer, and each copy a new tensor whose causal verdict,
:func:`layerzero.operations.causal_mask.is_plain_causal`, costs a comparison and a host sync), and the RoPE
cos/sin tables (recomputed per layer from the inverse frequencies: ``bmm``, ``cat``, ``cos``, ``sin``
fused into each layer's q/k rotation). Behind the opaque ``layerzero::shared`` op the tensor is computed
once per forward into one buffer; the op's copy is one pass over it, a few microseconds.
"""

from __future__ import annotations

import torch

from layerzero.operations.tracing import is_compile_tracing

__all__ = ["shared"]


@torch.library.custom_op("layerzero::shared", mutates_args=())
def _shared(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone()


@_shared.register_fake
def _(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(tensor)


def shared(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` behind one opaque op when traced by ``torch.compile`` (not ``torch.export``, whose graphs
    are for other runtimes); as it is otherwise: eager callers already share one tensor."""
    if is_compile_tracing():
        return torch.ops.layerzero.shared(tensor)
    return tensor
