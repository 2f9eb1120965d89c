"""Prefill attention (many queries per sequence) as a flash-attention forward in Triton, with soft-capping,
sliding windows and grouped-query heads.

Why a kernel of our own: SDPA cannot soft-cap, so a Gemma-2-style prefill (``softcap * tanh(s / softcap)`` on
every score) goes to FlashInfer where it is installed and otherwise to FlexAttention. Flex traces the softcap as
``torch.tanh``, which Inductor lowers to libdevice's accurate ``tanhf`` (an exponential, a reciprocal and a
polynomial per score), so the kernel spends most of its time on the scores' special-function units: measured
on an H200 at head_dim 128, 2.8-3.2x the time of SDPA without the softcap, where FlashInfer, which uses the
hardware ``tanh.approx.f32`` (one special-function op per score), takes 1.2x
(``benchmarks/results/2026-12-03-flex-options-hd128-flashinfer-h200-6139382.md``). This kernel does what
FlashInfer does for the softcap, with no JIT step and no dependency beyond Triton.

One launch, grid ``(cdiv(Sq, BLOCK_M), batch * heads)``: each program takes BLOCK_M queries of one head and
folds the key blocks it may see into an online softmax (exp2, fp32 state). Key blocks come in three ranges:
those every query of the tile sees in full run without any mask arithmetic; the blocks at the edges (the
causal diagonal, the window's start, the last partial block) apply the mask. Blocks no query of the tile may
see are never read.

Semantics follow ``layerzero.kernels.reference.attention``: scores are scaled, then soft-capped, then masked;
causal is bottom-right (query ``i`` sits at position ``i + Sk - Sq``); the sliding window keeps key ``j`` iff
``i + Sk - Sq - j < window``; a query that may see no key returns zeros. Caller masks and sinks are not taken
(the catalogue entry leaves such calls to other kernels). Half-precision Q.K^T and P.V run on tensor cores with
fp32 accumulation (P rounded to the value dtype, as flash kernels do); fp32 inputs use exact (IEEE) dots. On a
GPU the softcap's tanh is ``tanh.approx.f32`` (relative error about 2^-11, as in FlashInfer and flash-attn's
softcap); the CPU interpreter, which runs no PTX, computes ``1 - 2 / (exp(2x) + 1)``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from layerzero.kernels.triton.attention_args import check_device, check_qkv
from layerzero.kernels.triton.launch import cdiv, launch, next_power_of_2
from layerzero.operations.attention import ATTENTION
from layerzero.operations.base import implements

_MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634
# The CPU interpreter pays per program and per operation: big tiles, few programs.
_INTERPRETER_CONFIG = (64, 64, 4, 1)


@triton.jit
def _tanh(x, FAST: tl.constexpr):
    if FAST:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        # exact to fp32 rounding; saturates cleanly (exp overflowing to inf gives 1)
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _attend(
    q, k_base, v_base, n0, rows_abs, m_i, l_i, acc, d, dv, Sk, window, sk_s, sk_d, sv_s, sv_d,
    qk_scale, cap_pre, cap_post,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, FAST_TANH: tl.constexpr, PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """One block of BLOCK_N keys from n0 folded into the online-softmax state (m_i, l_i, acc), in log2 units."""
    offs = n0 + tl.arange(0, BLOCK_N)
    if MASKED:
        k = tl.load(k_base + offs[:, None] * sk_s + d[None, :] * sk_d,
                    mask=(offs < Sk)[:, None] & (d < D)[None, :], other=0.0)
    else:
        k = tl.load(k_base + offs[:, None] * sk_s + d[None, :] * sk_d, mask=(d < D)[None, :], other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if HAS_SOFTCAP:
        s = _tanh(s * cap_pre, FAST_TANH) * cap_post  # log2e * cap * tanh(scale * qk / cap)
    else:
        s = s * qk_scale  # log2e * scale * qk
    if MASKED:
        allowed = (offs < Sk)[None, :]
        if IS_CAUSAL:
            allowed = allowed & (offs[None, :] <= rows_abs[:, None])
        if HAS_WINDOW:
            allowed = allowed & ((rows_abs[:, None] - offs[None, :]) < window)
        s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen only masked keys keeps max -inf; shift by 0 so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(v_base + offs[:, None] * sv_s + dv[None, :] * sv_d,
                    mask=(offs < Sk)[:, None] & (dv < DV)[None, :], other=0.0)
    else:
        v = tl.load(v_base + offs[:, None] * sv_s + dv[None, :] * sv_d, mask=(dv < DV)[None, :], other=0.0)
    if DOT_F32:
        pv = tl.dot(p, v.to(tl.float32), input_precision=PRECISION)
    else:
        pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc


@triton.jit
def _prefill_attention(
    Q, K, V, O,
    Sq, Sk, window,
    sq_b, sq_s, sq_h, sq_d,
    sk_b, sk_s, sk_h, sk_d,
    sv_b, sv_s, sv_h, sv_d,
    so_b, so_s, so_h,
    qk_scale, cap_pre, cap_post,
    H: tl.constexpr, GROUP: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, FAST_TANH: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr, LOOP_WHILE: tl.constexpr,
):
    # Scalars pinned to fp32: under torch.compile Inductor passes them as fp64.
    qk_scale = tl.cast(qk_scale, tl.float32)
    cap_pre = tl.cast(cap_pre, tl.float32)
    cap_post = tl.cast(cap_post, tl.float32)
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    g = h // GROUP

    rows = m0 + tl.arange(0, BLOCK_M)
    off = Sk - Sq  # bottom-right alignment: query i sits at key position i + off
    rows_abs = rows + off
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_s + d[None, :] * sq_d,
                mask=(rows < Sq)[:, None] & (d < D)[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = K + b * sk_b + g * sk_h
    v_base = V + b * sv_b + g * sv_h

    # Keys the tile may see: [lo, hi). Blocks in [s1, s2) are visible to every query of the tile (no mask).
    hi = Sk
    full_end = Sk // BLOCK_N * BLOCK_N
    if IS_CAUSAL:
        hi = tl.minimum(Sk, tl.maximum(m0 + BLOCK_M + off, 0))
        full_end = tl.minimum(full_end, tl.maximum(m0 + off + 1, 0) // BLOCK_N * BLOCK_N)
    lo = 0
    full_start = 0
    if HAS_WINDOW:
        lo = tl.maximum(m0 + off - window + 1, 0) // BLOCK_N * BLOCK_N
        full_start = tl.maximum(m0 + BLOCK_M - 1 + off - window + 1, 0)
        full_start = (full_start + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    hi_blocks = (hi + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    s1 = tl.minimum(tl.maximum(full_start, lo), hi_blocks)
    s2 = tl.maximum(tl.minimum(full_end, hi_blocks), s1)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    if LOOP_WHILE:  # the interpreter cannot take a runtime range() bound
        n0 = lo
        while n0 < hi:
            masked = (n0 < s1) | (n0 >= s2)
            if masked:
                m_i, l_i, acc = _attend(q, k_base, v_base, n0, rows_abs, m_i, l_i, acc, d, dv, Sk, window, sk_s,
                                        sk_d, sv_s, sv_d, qk_scale, cap_pre, cap_post, D, DV, BLOCK_N, True,
                                        IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP, FAST_TANH, PRECISION, DOT_F32)
            else:
                m_i, l_i, acc = _attend(q, k_base, v_base, n0, rows_abs, m_i, l_i, acc, d, dv, Sk, window, sk_s,
                                        sk_d, sv_s, sv_d, qk_scale, cap_pre, cap_post, D, DV, BLOCK_N, False,
                                        IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP, FAST_TANH, PRECISION, DOT_F32)
            n0 += BLOCK_N
    else:
        for n0 in range(lo, s1, BLOCK_N):
            m_i, l_i, acc = _attend(q, k_base, v_base, n0, rows_abs, m_i, l_i, acc, d, dv, Sk, window, sk_s, sk_d,
                                    sv_s, sv_d, qk_scale, cap_pre, cap_post, D, DV, BLOCK_N, True, IS_CAUSAL,
                                    HAS_WINDOW, HAS_SOFTCAP, FAST_TANH, PRECISION, DOT_F32)
        for n0 in range(s1, s2, BLOCK_N):
            m_i, l_i, acc = _attend(q, k_base, v_base, n0, rows_abs, m_i, l_i, acc, d, dv, Sk, window, sk_s, sk_d,
                                    sv_s, sv_d, qk_scale, cap_pre, cap_post, D, DV, BLOCK_N, False, IS_CAUSAL,
                                    HAS_WINDOW, HAS_SOFTCAP, FAST_TANH, PRECISION, DOT_F32)
        for n0 in range(s2, hi, BLOCK_N):
            m_i, l_i, acc = _attend(q, k_base, v_base, n0, rows_abs, m_i, l_i, acc, d, dv, Sk, window, sk_s, sk_d,
                                    sv_s, sv_d, qk_scale, cap_pre, cap_post, D, DV, BLOCK_N, True, IS_CAUSAL,
                                    HAS_WINDOW, HAS_SOFTCAP, FAST_TANH, PRECISION, DOT_F32)

    # A query with no visible key (l 0) returns zeros, like the reference.
    out = tl.where(l_i[:, None] > 0, acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)
    tl.store(O + b * so_b + h * so_h + rows[:, None] * so_s + dv[None, :], out.to(O.dtype.element_ty),
             mask=(rows < Sq)[:, None] & (dv < DV)[None, :])


# Decided once at import (when @triton.jit chose interpreted or compiled kernels); a module constant keeps
# the wrapper traceable by dynamo, which cannot take type() of a Triton kernel.
_INTERPRETED = type(_prefill_attention).__name__ == "InterpretedFunction"


def launch_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) from per-model facts only (never the sequence lengths).

    Swept on an H200 (bf16, causal, soft-capped, 1x4096 / 8x1024 / 32x512;
    ``benchmarks/results/2026-12-03-triton-prefill-attention-h200-2fa460a.md``): 64 queries x 64 keys, 4 warps,
    3 stages was the fastest or within 8% of it at head_dim 128 (and is used below it, unmeasured); at 256,
    128 x 64 with 8 warps and 2 stages. fp32 inputs (exact dots, twice the registers) take smaller tiles."""
    if _INTERPRETED:
        return _INTERPRETER_CONFIG
    if dtype == torch.float32:
        return (64, 32, 4, 2) if head_dim <= 128 else (32, 32, 4, 1)
    if head_dim <= 128:
        return 64, 64, 4, 3
    return 128, 64, 8, 2


def _check(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask, dropout_p: float, sinks) -> None:
    check_qkv("triton_prefill_attention", query, key, value, dropout_p, _MAX_HEAD_DIM)
    if attn_mask is not None:
        raise ValueError("triton_prefill_attention takes no attn_mask (causal and sliding windows are built in); "
                         "pass is_causal / sliding_window, or use torch_sdpa_attention or torch_flex_attention")
    if sinks is not None:
        raise ValueError("triton_prefill_attention takes no sinks; use torch_flex_attention or the eager kernel")
    check_device("triton_prefill_attention", __name__, query, _INTERPRETED)


@implements(ATTENTION)
def prefill_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks,
                      enable_gqa, *, _config: tuple[int, int, int, int] | None = None):
    """Attention of ``Sq`` queries over (B, Sk, Hkv, D) keys/values (any strides); returns (B, Sq, H, Dv) in the
    query dtype.

    ``_config`` = (BLOCK_M, BLOCK_N, num_warps, num_stages) overrides :func:`launch_config` (tests,
    benchmarks)."""
    _check(query, key, value, attn_mask, dropout_p, sinks)
    b, sq, h, d = query.shape
    sk, hkv = key.shape[1], key.shape[2]
    dv = value.shape[-1]
    out = torch.empty((b, sq, h, dv), dtype=query.dtype, device=query.device)
    if out.numel() == 0:
        return out
    block_m, block_n, num_warps, num_stages = _config if _config is not None else launch_config(d, query.dtype)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    cap = float(softcap) if softcap else 1.0
    # fp32 inputs use exact fp32 dots; so does the interpreter for every dtype (its bf16 tl.dot returns
    # garbage in triton 3.6), so on CPU half inputs see fp32 P.V where a GPU rounds P to the value dtype.
    dot_f32 = query.dtype == torch.float32 or _INTERPRETED
    launch(_prefill_attention, (cdiv(sq, block_m), b * h),
        query, key, value, out,
        sq, sk, sliding_window if sliding_window is not None else 0,
        query.stride(0), query.stride(1), query.stride(2), query.stride(3),
        key.stride(0), key.stride(1), key.stride(2), key.stride(3),
        value.stride(0), value.stride(1), value.stride(2), value.stride(3),
        out.stride(0), out.stride(1), out.stride(2),
        scale * _LOG2E, scale / cap, cap * _LOG2E,
        H=h, GROUP=h // hkv, D=d, DV=dv, BLOCK_D=max(16, next_power_of_2(d)), BLOCK_DV=max(16, next_power_of_2(dv)),
        BLOCK_M=block_m, BLOCK_N=block_n,
        IS_CAUSAL=bool(is_causal), HAS_WINDOW=sliding_window is not None, HAS_SOFTCAP=bool(softcap),
        FAST_TANH=not _INTERPRETED,
        PRECISION="ieee" if dot_f32 else "tf32", DOT_F32=dot_f32, LOOP_WHILE=_INTERPRETED,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
