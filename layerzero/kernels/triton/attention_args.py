"""Argument checks shared by LayerZero's Triton attention kernels (decode and prefill).

Each kernel calls :func:`check_qkv` before it launches anything, so a caller's mistake is a ``ValueError``
naming the argument, the value and the fix, never a Triton compile error or a silent wrong read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from layerzero.context.call_context import SelectionContext

__all__ = ["INT32_LIMIT", "check_device", "check_qkv", "offsets_fit_int32"]

# The kernels index a head's rows as (position * row stride + feature * feature stride) in 32-bit integers
# (batch and head offsets are 64-bit): past this, addresses would wrap and read the wrong memory.
INT32_LIMIT = 2**31


def offsets_fit_int32(ctx: "SelectionContext") -> str | None:
    """seq_len x heads x head_dim < 2**31 (the kernels' 32-bit row offsets)"""
    worst = 0
    for seq, heads in ((ctx.seq_len_q, ctx.num_heads), (ctx.seq_len_k, ctx.num_kv_heads)):
        if seq and heads and ctx.head_dim:
            worst = max(worst, seq * heads * max(ctx.head_dim, ctx.head_dim_v or 0))
    if worst >= INT32_LIMIT:
        return (f"seq_len x heads x head_dim = {worst} >= 2**31: past the 32-bit row offsets of LayerZero's Triton "
                "attention kernels")
    return None


def check_qkv(kernel: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float,
              max_head_dim: int) -> None:
    """(B, S, H, D) query/key/value of one dtype, KV heads dividing the query heads, heads at most
    ``max_head_dim`` wide (the register tiles hold a whole head), and no dropout (inference kernels)."""
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(
            f"query/key/value must be 4-d (batch, seq, heads, head_dim); got {tuple(query.shape)}, "
            f"{tuple(key.shape)}, {tuple(value.shape)}"
        )
    b, _, h, d = query.shape
    kb, sk, hkv, kd = key.shape
    if kb != b or kd != d:
        raise ValueError(f"key shape {tuple(key.shape)} does not match query {tuple(query.shape)} in batch / head_dim")
    if tuple(value.shape[:3]) != (b, sk, hkv):
        raise ValueError(f"value shape {tuple(value.shape)} does not match key {tuple(key.shape)} in batch, seq, heads")
    if hkv == 0 or h % hkv:
        raise ValueError(f"key heads {hkv} must divide query heads {h} (grouped-query attention)")
    if d > max_head_dim or value.shape[-1] > max_head_dim:
        raise ValueError(
            f"head_dim {d} / value head_dim {value.shape[-1]} > {max_head_dim}: too wide for the register "
            f"tiles of {kernel}; use torch_flex_attention"
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise ValueError(f"query/key/value dtypes differ ({query.dtype}, {key.dtype}, {value.dtype}); cast to one dtype")
    if dropout_p:
        raise ValueError(f"dropout_p={dropout_p} is not supported (inference kernel); pass dropout_p=0.0")
    for name, t in (("query", query), ("key", key), ("value", value)):
        size, stride = t.shape, t.stride()  # one read each: this runs on every (host-bound) decode call
        span = (size[1] - 1) * abs(stride[1]) + (size[3] - 1) * abs(stride[3])
        if span >= INT32_LIMIT:
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} and strides {tuple(t.stride())} spans {span} elements within one "
                f"head, past the 32-bit row offsets of {kernel}; use torch_sdpa_attention or torch_flex_attention "
                "for sequences this long"
            )


def check_device(kernel: str, module: str, query: torch.Tensor, interpreted: bool) -> None:
    """CUDA tensors, or CPU ones when the kernel module was imported under the Triton interpreter."""
    if query.device.type != "cuda" and not interpreted:
        raise RuntimeError(
            f"{kernel} got a tensor on {query.device}; Triton kernels run on CUDA, or on the CPU only when "
            f"TRITON_INTERPRET=1 is set before {module} is imported"
        )
