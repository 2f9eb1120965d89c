"""Attention on ``torch.nn.attention.flex_attention`` (FlexAttention).

Flex covers what SDPA cannot: soft-capping (a ``score_mod``), bottom-right causal and sliding windows as
block-sparse masks (skipped blocks cost nothing), and attention sinks (folded in afterwards from the
log-sum-exp: ``out * sigmoid(lse - sink)``, exact because a sink only adds mass to the denominator).

Costs, measured on an H100: 240–410 TFLOP/s once compiled, but the first call of each call variant
compiles (seconds), and so does its first call at a second length (then with symbolic sizes, reused by
later lengths). So the compiled function and the block masks are cached, and on CPU the kernel runs
Flex's eager path by default: ``torch.compile`` of Flex on CPU needs a C++ toolchain and ~20 s per shape
(measured here, torch 2.13), which is no use for a fallback. ``set_compile_on_cpu(True)`` opts in.
"""

from __future__ import annotations

import threading
import types
import warnings
from functools import lru_cache
from typing import Any, Callable, Hashable

import torch

from layerzero.kernels.checks import gqa_ratio_ok
from layerzero.operations.attention import ATTENTION
from layerzero.operations.base import implements
from layerzero.registry.constraints import KernelConstraints

__all__ = ["FLEX_CONSTRAINTS", "TUNED_KERNEL_OPTIONS", "kernel_options_for", "set_compile_on_cpu", "torch_flex_attention"]

_compile_on_cpu = False
_compiled: dict[Hashable, Callable[..., Any]] = {}  # call variant -> its compiled entry point
_compile_lock = threading.Lock()
_flex_attention: Callable[..., Any] | None = None  # torch's flex_attention, imported on first use


def set_compile_on_cpu(enabled: bool) -> None:
    """Compile Flex on CPU too (fast steady state, ~20 s compile per new shape)."""
    global _compile_on_cpu
    _compile_on_cpu = bool(enabled)


def _call_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> Any:
    return _flex_attention(q, k, v, **kwargs)  # type: ignore[misc]


def _own_code(fn: Callable[..., Any], n: int) -> Callable[..., Any]:
    """A copy of ``fn`` with a code object of its own. torch._dynamo keeps compiled graphs, and counts its
    recompile limit (8), per code object: one shared entry point for every call variant reached that limit
    within one GPU test session (``compare()`` runs Flex with many score_mods, masks and batch sizes)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{n}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _flex_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kwargs: dict[str, Any], with_lse: bool) -> Callable[..., Any]:
    """The Flex entry point for this call: eager ``flex_attention`` on CPU (unless compiling there is on),
    else a compiled entry point per call variant, each with automatic dynamic shapes: a variant's first new
    length recompiles with symbolic sizes and later lengths reuse that graph (measured on CPU: ten lengths
    17..260, three graphs). The variant is everything a symbolic graph cannot absorb: device, dtype,
    score_mod, block mask or not, GQA, with the log-sum-exp or not, the kernel options (one dict object per
    option set, :data:`TUNED_KERNEL_OPTIONS`), which dimensions are 1 (dynamo
    specializes size 1: one query token, batch 1, one KV head) and which of q, k, v are contiguous (their
    strides are guarded: a transposed cache view and a contiguous tensor need two graphs). Measured on an
    H200 before the last two were part of it: one GPU test session replaying the calls of nine
    architectures hit the recompile limit on three entry points ("tensor 'k' stride mismatch",
    "2 <= q.size()[2]")."""
    global _flex_attention
    if _flex_attention is None:
        from torch.nn.attention.flex_attention import flex_attention

        _flex_attention = flex_attention
    if q.device.type == "cpu" and not _compile_on_cpu:
        return _flex_attention
    variant = (q.device, q.dtype, kwargs.get("score_mod"), kwargs.get("block_mask") is None,
               bool(kwargs.get("enable_gqa")), with_lse, *(n == 1 for n in q.shape), *(n == 1 for n in k.shape),
               q.is_contiguous(), k.is_contiguous(), v.is_contiguous(), id(kwargs.get("kernel_options")))
    fn = _compiled.get(variant)
    if fn is None:
        with _compile_lock:
            fn = _compiled.get(variant)
            if fn is None:
                fn = torch.compile(_own_code(_call_flex, len(_compiled)), dynamic=None)
                _compiled[variant] = fn
    return fn


# (CUDA capability major, head_dim) -> the Triton kernel options of Flex's forward kernel, where the defaults
# measured slow. Gemma-2's soft-capped causal prefill (head_dim 256, bf16) on an H200, swept over block sizes,
# warps and stages by benchmarks/flex_options.py: BLOCK_M 128 / BLOCK_N 64 / 8 warps / 2 stages took
# 0.68x, 0.73x and 0.67x of the defaults' time at 8x1024, 1x4096 and 32x512 tokens, the best of 16 option
# sets at each (benchmarks/results/2026-12-02-flex-options-h200-08da1ed.md).
TUNED_KERNEL_OPTIONS: dict[tuple[int, int], dict[str, int]] = {
    (9, 256): {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
}
_MIN_TUNED_QUERIES = 128  # shorter queries run Flex's decoding kernel, whose options are others


@lru_cache(maxsize=16)
def _capability_major(device: torch.device) -> int:
    return torch.cuda.get_device_capability(device)[0]


def kernel_options_for(q: torch.Tensor, v: torch.Tensor) -> dict[str, int] | None:
    """The measured kernel options for this call (``q``, ``v``: (B, H, S, D)), or None for Flex's defaults:
    only for the forward of a CUDA prefill in half precision (the options were measured there; fp32 tiles
    of that size do not fit in shared memory, and the backward kernels have block sizes of their own)."""
    if (q.device.type != "cuda" or q.dtype not in (torch.bfloat16, torch.float16) or q.shape[2] < _MIN_TUNED_QUERIES
            or q.shape[-1] != v.shape[-1] or q.requires_grad or v.requires_grad):
        return None
    return TUNED_KERNEL_OPTIONS.get((_capability_major(q.device), q.shape[-1]))


def _no_grad_on_cpu(ctx) -> str | None:
    """FlexAttention has no backward on CPU"""
    if ctx.requires_grad and ctx.platform == "cpu":
        return "autograd (requires_grad) not supported by FlexAttention on CPU"
    return None


def _cuda_head_dim(ctx) -> str | None:
    """compiled Flex on CUDA: head dims a power of two >= 16"""
    if ctx.platform != "cuda":
        return None
    for name, d in (("head_dim", ctx.head_dim), ("value head_dim", ctx.head_dim_v)):
        if d is not None and (d < 16 or d & (d - 1)):
            # Measured on an H100, torch 2.11: head_dim 80 fails to lower ("NoValidChoicesError").
            return f"{name} {d} not a power of two >= 16 (compiled FlexAttention on CUDA)"
    return None


FLEX_CONSTRAINTS = KernelConstraints(
    platforms=frozenset({"cuda", "cpu"}),
    dtypes=frozenset({"float16", "bfloat16", "float32"}),
    supports_dropout=False,
    supports_softcap=True,
    supports_sliding_window=True,
    supports_sinks=True,
    custom=(gqa_ratio_ok, _no_grad_on_cpu, _cuda_head_dim),
)


@lru_cache(maxsize=256)
def _block_mask(sq: int, sk: int, is_causal: bool, window: int | None, device: str):
    """Block mask for bottom-right causal and/or a sliding window, shared by every batch and head."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = sk - sq

    def mask_mod(b, h, q_idx, kv_idx):
        q_abs = q_idx + offset
        keep = kv_idx >= 0
        if is_causal:
            keep = keep & (kv_idx <= q_abs)
        if window is not None:
            keep = keep & (q_abs - kv_idx < window)
        return keep

    return create_block_mask(mask_mod, None, None, sq, sk, device=device)


@lru_cache(maxsize=64)
def _softcap_mod(softcap: float) -> Callable[..., Any]:
    """One function object per softcap value: Flex (eager and compiled) caches its trace per score_mod
    object, so a fresh closure per call would re-trace (and, compiled, recompile) every call."""

    def score_mod(score, b, h, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap)

    return score_mod


class _MaskSlot:
    """Where a masked ``score_mod`` reads the caller's mask. Flex (eager and compiled) goes through dynamo,
    which lifts a tensor read from an object attribute as a graph input guarded on shape/dtype, not on
    identity: one function object per (softcap, mask kind) then serves every mask without re-tracing
    (checked on CPU: new masks, same trace, exact results). A fresh closure per call would re-trace
    every call (~0.5 s on CPU; a recompile on CUDA)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


_mask_lock = threading.Lock()  # one caller at a time owns a slot between setting it and the launch


@lru_cache(maxsize=64)
def _masked_mod(softcap: float | None, is_bool: bool) -> tuple[_MaskSlot, Callable[..., Any]]:
    slot = _MaskSlot()

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap:
            score = softcap * torch.tanh(score / softcap)
        m = slot.mask[b, h, q_idx, kv_idx]
        if is_bool:
            return torch.where(m, score, -float("inf"))
        return score + m

    return slot, score_mod


@implements(ATTENTION)
def torch_flex_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks,
        enable_gqa):
    """FlexAttention over (B, S, H, D) views; caller masks become a ``score_mod`` (dense, no block skip)."""
    if dropout_p:
        raise ValueError(f"dropout_p={dropout_p} is not supported by FlexAttention; use torch_sdpa_attention")
    b, sq, h, _ = query.shape
    sk = key.shape[1]
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    causal = bool(is_causal) and sq > 1  # one query, bottom-right aligned, sees every key
    block_mask = None
    if causal or sliding_window is not None:
        block_mask = _block_mask(sq, sk, causal, sliding_window, str(query.device))
    kwargs: dict[str, Any] = dict(block_mask=block_mask, scale=scale, enable_gqa=h != k.shape[1])
    options = kernel_options_for(q, v)
    if options is not None:
        kwargs["kernel_options"] = options
    if attn_mask is None:
        kwargs["score_mod"] = _softcap_mod(float(softcap)) if softcap else None
        fn = _flex_fn(q, k, v, kwargs, sinks is not None)
        return _run(fn, q, k, v, kwargs, sinks, h, query.dtype).transpose(1, 2)
    mask = attn_mask
    if mask.dtype != torch.bool and mask.dtype != torch.float32:
        mask = mask.float()
    slot, kwargs["score_mod"] = _masked_mod(float(softcap) if softcap else None, mask.dtype == torch.bool)
    fn = _flex_fn(q, k, v, kwargs, sinks is not None)
    with _mask_lock:
        slot.mask = mask.expand(b, h, sq, sk)
        try:
            out = _run(fn, q, k, v, kwargs, sinks, h, query.dtype)
        finally:
            slot.mask = None
    return out.transpose(1, 2)


def _run(fn, q, k, v, kwargs, sinks, h, dtype) -> torch.Tensor:
    if torch.is_grad_enabled() and not (q.requires_grad or k.requires_grad or v.requires_grad):
        # Compiled Flex guards on the global grad mode: a caller that alternates grad-enabled and no_grad
        # calls (a benchmark, compare(), a model outside no_grad) would compile every shape twice and reach
        # torch._dynamo's recompile limit twice as fast. Without a tensor needing grad the result is the same.
        with torch.no_grad():
            return _run(fn, q, k, v, kwargs, sinks, h, dtype)
    with warnings.catch_warnings():
        # On CPU the eager path is the documented choice (see module docstring), not a mistake.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        if sinks is None:
            return fn(q, k, v, **kwargs)
        out, lse = _with_lse(fn, q, k, v, kwargs)
    keep = torch.sigmoid(lse.float() - sinks.float().view(1, h, 1))  # (B, H, Sq)
    return (out.float() * keep.unsqueeze(-1)).to(dtype)


def _with_lse(fn, q, k, v, kwargs):
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # torch < 2.9
        return fn(q, k, v, return_lse=True, **kwargs)
    out, aux = fn(q, k, v, return_aux=AuxRequest(lse=True), **kwargs)
    return out, aux.lse
