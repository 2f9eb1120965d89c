"""FlashInfer kernels: prefill and decode attention, RMSNorm, RoPE, fused gated activations.

FlashInfer (``flashinfer-python``, JIT-compiles each kernel on first use) takes ragged ``(tokens, heads,
dim)`` tensors; the canonical (B, S, H, D) contiguous layout reshapes to that as a view. Attention maps:
- one sequence: ``single_prefill_with_kv_cache`` / ``single_decode_with_kv_cache`` (NHD layout);
- a batch: ``BatchPrefillWithRaggedKVCacheWrapper`` (uniform ``indptr``), and for decode
  ``BatchDecodeWithPagedKVCacheWrapper`` with one page per sequence (page_size = Sk), so the dense KV is
  already a valid paged cache and nothing is copied. Planned wrappers are cached per shape.
- ``causal`` is bottom-right aligned (append attention); ``window_left = window - 1`` (inclusive) is the
  contract's ``i_abs - j < window``; ``logits_soft_cap`` is the softcap; no arbitrary masks or dropout.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from layerzero.kernels.checks import gqa_ratio_ok
from layerzero.operations.activation import SWIGLU
from layerzero.operations.attention import ATTENTION
from layerzero.operations.base import implements
from layerzero.operations.norm import RMS_NORM
from layerzero.operations.rope import ROPE
from layerzero.registry.constraints import KernelConstraints
from layerzero.registry.kernel_spec import KernelSpec

__all__ = [
    "flashinfer_decode_attention",
    "flashinfer_prefill_attention",
    "flashinfer_rms_norm",
    "flashinfer_rope",
    "flashinfer_swiglu",
    "kernel_specs",
]

_HALF = frozenset({"float16", "bfloat16"})
_WORKSPACE_BYTES = 128 * 1024 * 1024
_lock = threading.Lock()
_workspaces: dict[str, torch.Tensor] = {}
_wrappers: dict[tuple, Any] = {}
_MAX_WRAPPERS = 64


def _workspace(device: torch.device) -> torch.Tensor:
    key = str(device)
    ws = _workspaces.get(key)
    if ws is None:
        with _lock:
            ws = _workspaces.get(key)
            if ws is None:
                ws = torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
                _workspaces[key] = ws
    return ws


def _remember(key: tuple, wrapper: Any) -> Any:
    with _lock:
        if len(_wrappers) >= _MAX_WRAPPERS:
            _wrappers.pop(next(iter(_wrappers)))
        _wrappers[key] = wrapper
    return wrapper


def _check_attention_args(attn_mask, dropout_p, sinks, kernel: str) -> None:
    if attn_mask is not None:
        raise ValueError(f"{kernel}: attn_mask is not supported; use torch_sdpa_attention for masked calls")
    if dropout_p:
        raise ValueError(f"{kernel}: dropout_p={dropout_p} is not supported (inference kernels)")
    if sinks is not None:
        raise ValueError(f"{kernel}: attention sinks are not supported; use torch_flex_attention")


def _window_left(sliding_window: int | None) -> int:
    return -1 if sliding_window is None else max(int(sliding_window) - 1, 0)


@implements(ATTENTION)
def flashinfer_prefill_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap,
        sinks, enable_gqa):
    """Prefill/append attention; one sequence uses the single-request kernel, a batch the ragged wrapper."""
    _check_attention_args(attn_mask, dropout_p, sinks, "flashinfer_prefill_attention")
    import flashinfer

    b, sq, h, d = query.shape
    sk, hkv, dv = key.shape[1], key.shape[2], value.shape[-1]
    causal = bool(is_causal) and sq > 1
    window_left = _window_left(sliding_window)
    cap = float(softcap) if softcap else None
    if b == 1:
        out = flashinfer.single_prefill_with_kv_cache(
            query[0], key[0], value[0], causal=causal, kv_layout="NHD", sm_scale=scale,
            window_left=window_left, logits_soft_cap=cap,
        )
        return out.unsqueeze(0)
    q = query.reshape(b * sq, h, d)
    k = key.reshape(b * sk, hkv, d)
    v = value.reshape(b * sk, hkv, dv)
    wkey = ("prefill", str(query.device), b, sq, sk, h, hkv, d, dv, query.dtype, causal, window_left, cap, scale)
    wrapper = _wrappers.get(wkey)
    if wrapper is None:
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace(query.device), "NHD")
        qo_indptr = torch.arange(b + 1, dtype=torch.int32, device=query.device) * sq
        kv_indptr = torch.arange(b + 1, dtype=torch.int32, device=query.device) * sk
        wrapper.plan(
            qo_indptr, kv_indptr, h, hkv, d, head_dim_vo=dv, causal=causal, window_left=window_left,
            logits_soft_cap=cap, sm_scale=scale, q_data_type=query.dtype, kv_data_type=key.dtype,
        )
        _remember(wkey, wrapper)
    return wrapper.run(q, k, v).reshape(b, sq, h, dv)


@implements(ATTENTION)
def flashinfer_decode_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap,
        sinks, enable_gqa):
    """One query token per sequence. Bottom-right causal with Sq == 1 sees every key, so ``is_causal`` is moot."""
    _check_attention_args(attn_mask, dropout_p, sinks, "flashinfer_decode_attention")
    import flashinfer

    b, sq, h, d = query.shape
    if sq != 1:
        raise ValueError(f"flashinfer_decode_attention: seq_len_q must be 1, got {sq}; use flashinfer_prefill_attention")
    sk, hkv = key.shape[1], key.shape[2]
    window_left = _window_left(sliding_window)
    cap = float(softcap) if softcap else None
    tensor_cores = (h // hkv) >= 4  # FlashInfer's advice for grouped heads
    layout, k, v = _kv_in_place(key, value)
    if b == 1:
        out = flashinfer.single_decode_with_kv_cache(
            query[0, 0], k[0], v[0], kv_layout=layout, use_tensor_cores=tensor_cores,
            window_left=window_left, logits_soft_cap=cap, sm_scale=scale,
        )
        return out.reshape(1, 1, h, -1)
    wkey = ("decode", str(query.device), b, sk, h, hkv, d, query.dtype, window_left, cap, scale, layout)
    wrapper = _wrappers.get(wkey)
    if wrapper is None:
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            _workspace(query.device), layout, use_tensor_cores=tensor_cores
        )
        dev = query.device
        wrapper.plan(
            torch.arange(b + 1, dtype=torch.int32, device=dev),  # one page per sequence
            torch.arange(b, dtype=torch.int32, device=dev),
            torch.full((b,), sk, dtype=torch.int32, device=dev),  # the page is full
            h, hkv, d, sk, window_left=window_left, logits_soft_cap=cap, sm_scale=scale,
            q_data_type=query.dtype, kv_data_type=key.dtype,
        )
        _remember(wkey, wrapper)
    out = wrapper.run(query.reshape(b, h, d), (k, v))  # one page per sequence: (B, S, H, D) or (B, H, S, D)
    return out.reshape(b, 1, h, -1)


def _kv_in_place(key: torch.Tensor, value: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
    """FlashInfer's KV layout for the cache as it lies, and the tensors in it: "HND" for the transposed
    view a Transformers cache passes (its storage is (B, H, S, D)), "NHD" for (B, S, H, D), a copy only
    when neither is contiguous. FlashInfer requires contiguous pages; the replay of real decode calls on an
    H200 failed here ("k must be contiguous") while the synthetic conformance tests, contiguous, passed."""
    hk, hv = key.transpose(1, 2), value.transpose(1, 2)
    if hk.is_contiguous() and hv.is_contiguous():
        return "HND", hk, hv
    return "NHD", key.contiguous(), value.contiguous()


@implements(RMS_NORM)
def flashinfer_rms_norm(x, weight, eps, offset, casting, residual):
    """``flashinfer.rmsnorm`` (offset 0) or ``gemma_rmsnorm`` (offset 1): fp32 math, one rounding ("gemma")."""
    import flashinfer

    if casting != "gemma" and x.dtype != torch.float32:
        raise ValueError(f"flashinfer_rms_norm: casting={casting!r} unsupported; FlashInfer rounds once ('gemma')")
    if offset not in (0.0, 1.0):
        raise ValueError(f"flashinfer_rms_norm: offset={offset} unsupported (0 or 1)")
    if residual is not None:
        x = x + residual
    hidden = x.shape[-1]
    w = weight if weight is not None else torch.full((hidden,), 1.0 - offset, dtype=x.dtype, device=x.device)
    w = w.to(x.dtype)
    x2 = x.reshape(-1, hidden)
    fn = flashinfer.gemma_rmsnorm if offset == 1.0 else flashinfer.rmsnorm
    out = fn(x2, w, eps).reshape(x.shape)
    return (out, x) if residual is not None else out


def _rope_tables(cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, batch: int, seq: int):
    """FlashInfer's ``cos_sin_cache`` (rows, rot) fp32 with cos then sin halves, and the row per token."""
    half = slice(None, None, 2) if interleaved else slice(None, cos.shape[-1] // 2)
    c, s = cos[..., half], sin[..., half]
    table = torch.cat((c, s), dim=-1).float().reshape(-1, cos.shape[-1])
    if cos.dim() == 2 or cos.shape[0] == 1:
        positions = torch.arange(seq, device=cos.device, dtype=torch.int64).repeat(batch)
    else:
        positions = torch.arange(batch * seq, device=cos.device, dtype=torch.int64)
    return table.contiguous(), positions


@implements(ROPE)
def flashinfer_rope(q, k, cos, sin, layout, interleaved, unsqueeze_dim):
    """``apply_rope_with_cos_sin_cache`` (out of place) over (tokens, heads*dim) views of q and k."""
    import flashinfer

    if layout not in ("bhsd", "bshd"):
        raise ValueError(f"flashinfer_rope: layout={layout!r} is not one of 'bhsd', 'bshd'")
    qs = q.transpose(1, 2) if layout == "bhsd" else q  # (B, S, H, D)
    ks = k.transpose(1, 2) if layout == "bhsd" else k
    b, s, h, d = qs.shape
    hk = ks.shape[2]
    table, positions = _rope_tables(cos, sin, interleaved, b, s)
    q_out, k_out = flashinfer.apply_rope_with_cos_sin_cache(
        positions, qs.reshape(b * s, h * d), ks.reshape(b * s, hk * d), d, table, is_neox=not interleaved
    )
    q_out, k_out = q_out.view(b, s, h, d), k_out.view(b, s, hk, d)
    if layout == "bhsd":
        return q_out.transpose(1, 2), k_out.transpose(1, 2)
    return q_out, k_out


def _adjacent_halves(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
    """If ``gate`` and ``up`` are the two halves of one (..., 2I) tensor (a chunked fused projection, as in
    Phi-3), return that tensor as a view; else None."""
    if gate.shape != up.shape or gate.stride() != up.stride() or gate.stride(-1) != 1:
        return None
    n = gate.shape[-1]
    if up.data_ptr() - gate.data_ptr() != n * gate.element_size():
        return None
    if gate.dim() > 1 and gate.stride(-2) != 2 * n:
        return None
    return torch.as_strided(gate, (*gate.shape[:-1], 2 * n), (*gate.stride()[:-1], 1))


@implements(SWIGLU)
def flashinfer_swiglu(gate, up):
    """``silu_and_mul`` on ``[gate | up]``: free when they are halves of one tensor, else one concat."""
    import flashinfer

    both = _adjacent_halves(gate, up)
    if both is None:
        both = torch.cat((gate, up), dim=-1)
    return flashinfer.silu_and_mul(both)


def _decode_only(ctx) -> str | None:
    """one query token per sequence"""
    if ctx.seq_len_q is not None and ctx.seq_len_q != 1:
        return f"seq_len_q {ctx.seq_len_q} != 1: FlashInfer decode takes one query token per sequence"
    return None


def _prefill_shape(ctx) -> str | None:
    """FlashInfer append attention: 1 < seq_len_q <= seq_len_k (one token goes to the decode kernel)"""
    if ctx.seq_len_q == 1:
        # Measured on an H100: the prefill kernel takes 1.09 ms where the decode kernel takes 0.39 ms.
        return "seq_len_q 1 (decode): use flashinfer_decode_attention"
    if ctx.seq_len_q and ctx.seq_len_k and ctx.seq_len_q > ctx.seq_len_k:
        return f"seq_len_q {ctx.seq_len_q} > seq_len_k {ctx.seq_len_k} not supported by FlashInfer append attention"
    return None


# FlashInfer 0.7 runs its cos/sin-cache RoPE kernel for head_dim 64/128/256/512 only; other head dims are
# routed to its RoPE+quantize kernel, which returned wrong values in a model (a tiny Llama with head_dim 16
# passed q/k (B, H, S, 16) and cos/sin (B, S, 16): max error 0.935 in bf16, measured on an H200). Rule those
# calls out rather than serve them. Source: include/flashinfer/pos_enc.cuh, BatchQKApplyRotaryPosIdsCosSinCache.
_ROPE_HEAD_DIMS = frozenset({64, 128, 256, 512})


def _rope_tables_ok(ctx) -> str | None:
    """rotary tables covering whole heads or an even part of them"""
    if ctx.rotary_dim is not None and ctx.rotary_dim % 2:
        return f"rotary_dim {ctx.rotary_dim} is odd"
    return None


def _offset_zero_or_one(ctx) -> str | None:
    """norm weight offset must be 0 (rmsnorm) or 1 (gemma_rmsnorm)"""
    if ctx.norm_offset not in (0.0, 1.0):
        return f"norm weight offset {ctx.norm_offset} not supported (FlashInfer: 0 or 1)"
    return None


def _gemma_casting(ctx) -> str | None:
    """FlashInfer rounds once after the fp32 weight multiply ("gemma" casting); a call that names no casting
    gets the contract's default, "llama"."""
    casting = ctx.casting or "llama"
    if casting != "gemma" and ctx.dtype != "float32":
        return f"casting mode {casting} not supported (FlashInfer computes in fp32 and rounds once: 'gemma')"
    return None


_ATTN_COMMON = dict(
    platforms=frozenset({"cuda"}),
    dtypes=_HALF,
    min_compute_capability=(8, 0),
    head_dims=frozenset({64, 128, 256}),
    supports_bool_mask=False,
    supports_additive_mask=False,
    supports_dropout=False,
    supports_softcap=True,
    supports_sliding_window=True,
    supports_grad=False,
)

PREFILL_CONSTRAINTS = KernelConstraints(**_ATTN_COMMON, supports_different_v_dim=True,
                                        custom=(gqa_ratio_ok, _prefill_shape))
DECODE_CONSTRAINTS = KernelConstraints(**_ATTN_COMMON, supports_different_v_dim=False, custom=(gqa_ratio_ok, _decode_only))


def kernel_specs() -> list[KernelSpec]:
    cuda_half = dict(platforms=frozenset({"cuda"}), dtypes=_HALF, supports_grad=False)
    return [
        KernelSpec("flashinfer_prefill_attention", ("attention.*",), "flashinfer", flashinfer_prefill_attention,
                   PREFILL_CONSTRAINTS, 80, description="FlashInfer single/batch prefill (≈ cuDNN at 1x4096: 448 TFLOP/s)"),
        KernelSpec("flashinfer_decode_attention", ("attention.*",), "flashinfer", flashinfer_decode_attention,
                   DECODE_CONSTRAINTS, 60, aliases=("flashinfer_decode",),
                   description="FlashInfer decode (2.3–2.6 TB/s, just under SDPA's 2.7–2.8 TB/s on H100)"),
        KernelSpec("flashinfer_rms_norm", "rms_norm", "flashinfer", flashinfer_rms_norm,
                   KernelConstraints(**cuda_half, custom=(_offset_zero_or_one, _gemma_casting)), 65,
                   description="flashinfer.rmsnorm / gemma_rmsnorm (fp32 math, one rounding)"),
        KernelSpec("flashinfer_rope", "rope", "flashinfer", flashinfer_rope,
                   KernelConstraints(**cuda_half, head_dims=_ROPE_HEAD_DIMS, custom=(_rope_tables_ok,)), 60,
                   description="apply_rope_with_cos_sin_cache (out of place), NeoX or interleaved, partial"),
        KernelSpec("flashinfer_swiglu", "swiglu", "flashinfer", flashinfer_swiglu,
                   KernelConstraints(**cuda_half), 40,
                   description="silu_and_mul; zero-copy only when gate/up are halves of one tensor"),
    ]
