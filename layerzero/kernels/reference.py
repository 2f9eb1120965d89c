"""The fp32 reference kernels: every operation's oracle, registered as last-resort kernels.

The math lives with each operation (:mod:`layerzero.operations`); this module gives it the kernel names
the catalog registers (``layerzero.kernels.reference:<operation>``, tag ``"reference"``) and re-exports the
helpers other kernels share (masks, rotations, GQA expansion). They are plain PyTorch, run on any device
and dtype, support every feature of the contract, and compute in float32 on purpose: clarity first.
"""

from __future__ import annotations

from layerzero.operations.activation import reference_geglu as geglu
from layerzero.operations.activation import reference_swiglu as swiglu
from layerzero.operations.attention import attention_allowed_mask, expand_kv_heads
from layerzero.operations.attention import reference_attention as attention
from layerzero.operations.norm import reference_layer_norm as layer_norm
from layerzero.operations.norm import reference_rms_norm as rms_norm
from layerzero.operations.rope import reference_rope as rope
from layerzero.operations.rope import rope_broadcast, rotate_half, rotate_interleaved

__all__ = [
    "attention",
    "attention_allowed_mask",
    "expand_kv_heads",
    "geglu",
    "layer_norm",
    "rms_norm",
    "rope",
    "rope_broadcast",
    "rotate_half",
    "rotate_interleaved",
    "swiglu",
]
