"""Decode attention (one query per sequence) as flash-decoding in Triton, with soft-capping, sliding
windows, sinks and caller masks.

Why a kernel of our own: SDPA cannot soft-cap, so Gemma-2-style decode fell to FlexAttention, whose
compiled kernel is specialised per key length and recompiles at every decode step (until dynamo's
recompile limit). This kernel compiles once: every argument that changes from one step to the next (the
key length, the batch / head strides of the KV cache, which contain the key length, the mask strides and
the split bookkeeping) is passed with ``do_not_specialize``, so Triton neither specialises on it being 1
or a multiple of 16 nor builds a variant per value. The feature-axis strides stay specialised (they are
1 and let loads vectorise), as do the per-model constants (head counts, head dims: ``constexpr``).

Two launches per call (one for short key ranges, below), no host synchronisation:

1. ``_decode_partial``, grid ``(batch * kv_heads, splits)``: each program takes one kv head of one
   sequence and one contiguous chunk of the visible keys, and computes, for every query head of that
   kv group at once (so K/V are read once per group), the online-softmax partials (row max, row sum,
   unnormalised output) over its chunk.
2. ``_decode_reduce``, one program per (sequence, query head): combines the partials of every split, adds the sink's
   softmax mass, normalises and writes the output in the query dtype.

An eager call that sees few keys (``_SINGLE_PASS_MAX_KEYS``) is one launch instead: a single split per
(sequence, kv head) that finishes the softmax itself (``FINAL``), since such a call costs host time, not
device time.

The number of splits depends only on ``batch * kv_heads`` (enough programs to fill an H100/H200-class
GPU), not on the key length: the chunk size is derived inside the kernel from the key length, so nothing
on the host branches on it (a ``torch.compile`` trace with a dynamic key length has no guard on it either).
Splits past the end of the keys write an empty partial (max -inf, sum 0).

Semantics follow ``layerzero.kernels.reference.attention`` with ``Sq == 1``: scores are scaled, then
soft-capped (``softcap * tanh(s / softcap)``), then masked (bool: False drops the key; float: added);
the sliding window keeps key ``j`` iff ``(Sk - 1) - j < window`` (only those keys are read); a query that
may see no key returns zeros; ``is_causal`` is a no-op (one query at the end sees every key). Math is
fp32; half-precision Q.K^T and P.V run on tensor cores with fp32 accumulation (P rounded to the value
dtype, as flash kernels do), fp32 inputs use exact (IEEE) dots.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Aim for about this many split programs per call (4 waves on a 132-SM H100/H200); each (sequence, kv
# head) pair gets ceil(target / pairs) splits, at most _MAX_SPLITS.
_TARGET_PROGRAMS = 528
_MAX_SPLITS = 64
_MAX_HEAD_DIM = 256
# Splits combined per step of the reduction (a CHUNK x Dv fp32 tile).
_REDUCE_CHUNK = 8
# Eager calls that see at most this many keys (after the window) run as one launch: one split per (sequence,
# kv head) that also normalises and writes the output, with no partials and no reduce kernel. Such a call
# is host-bound (its device time, ~1 us per BLOCK_N keys per program, stays below the host time of issuing
# it), so the second launch and the workspace allocation were pure host cost. Under torch.compile the split
# count never depends on the key length (no guard on it), so compiled calls keep the two launches. A cache
# that grows past this length compiles the split variant once, at that step (Triton caches it on disk).
_SINGLE_PASS_MAX_KEYS = 1024
# Query heads of one kv group are padded to at least 16 rows: tl.dot needs M >= 16.
_MIN_GROUP_ROWS = 16
# The CPU interpreter pays per program and per operation: one split, long key blocks, every reduce row in
# one program (tests force several splits through ``_config``).
_INTERPRETER_SPLITS = 1
_INTERPRETER_BLOCK_N = 128
_INTERPRETER_ROWS = 64

# Arguments that change between decode steps (see the module docstring).
_PARTIAL_DYNAMIC = (
    "Sk", "num_splits", "window",
    "sk_b", "sk_h", "sv_b", "sv_h", "sm_b", "sm_h",
)
from layerzero.operations.attention import ATTENTION
from layerzero.kernels.triton.attention_args import check_device, check_qkv
from layerzero.kernels.triton.launch import cdiv, launch, next_power_of_2
from layerzero.operations.base import implements

_compiling = torch.compiler.is_compiling


@triton.jit
def _attend_block(
    q, k_base, v_base, m_base, n0, end, m_i, l_i, acc, row_ok, d, dv, sk_s, sk_d, sv_s, sv_d, sm_s,
    scale, softcap,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """One block of BLOCK_N keys from n0 folded into the online-softmax state (m_i, l_i, acc)."""
    offs = n0 + tl.arange(0, BLOCK_N)
    key_ok = offs < end
    k = tl.load(k_base + offs[:, None] * sk_s + d[None, :] * sk_d, mask=key_ok[:, None] & (d < D)[None, :], other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    if HAS_SOFTCAP:
        # tanh(x) = 1 - 2 / (exp(2x) + 1): no tanh intrinsic needed, exact to fp32 rounding, saturates to
        # +-1 cleanly (exp overflowing to inf gives 1). Inline: every nested jit call costs the interpreter.
        s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
    allowed = row_ok[:, None] & key_ok[None, :]
    if HAS_MASK:
        mv = tl.load(m_base[:, None] + offs[None, :] * sm_s, mask=allowed, other=0)
        if MASK_BOOL:
            allowed = allowed & (mv != 0)
        else:
            s = s + mv.to(tl.float32)
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen only masked keys keeps max -inf; shift by 0 so exp gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + offs[:, None] * sv_s + dv[None, :] * sv_d, mask=key_ok[:, None] & (dv < DV)[None, :], other=0.0)
    if DOT_F32:
        pv = tl.dot(p, v.to(tl.float32), input_precision=PRECISION)
    else:
        pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc


@triton.jit(do_not_specialize=_PARTIAL_DYNAMIC, do_not_specialize_on_alignment=("MASK",))
def _decode_partial(
    Q, K, V, MASK, M_OUT, L_OUT, ACC_OUT, SINKS, O,
    Sk, num_splits, window,
    sq_b, sq_h, sq_d,
    sk_b, sk_s, sk_h, sk_d,
    sv_b, sv_s, sv_h, sv_d,
    sm_b, sm_h, sm_s,
    s_sink, so_b, so_h,
    scale, softcap,
    HKV: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_SINKS: tl.constexpr, FINAL: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr, LOOP_WHILE: tl.constexpr,
):
    # Scalars pinned to fp32: under torch.compile Inductor passes them as fp64.
    scale = tl.cast(scale, tl.float32)
    softcap = tl.cast(softcap, tl.float32)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    g = (pid % HKV).to(tl.int64)

    # The visible keys are [lo, Sk); this split takes the chunk [start, end) of them.
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(Sk - window, 0)
    per_split = ((Sk - lo + num_splits - 1) // num_splits + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, Sk)

    rows = tl.arange(0, BLOCK_G)
    row_ok = rows < GROUP
    heads = g * GROUP + rows
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sq_b + heads[:, None] * sq_h + d[None, :] * sq_d,
                mask=row_ok[:, None] & (d < D)[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = K + b * sk_b + g * sk_h
    v_base = V + b * sv_b + g * sv_h
    m_base = MASK + b * sm_b + heads * sm_h

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], dtype=tl.float32)
    if LOOP_WHILE:
        # The interpreter cannot take a runtime range() bound (it holds scalars as 1-element arrays).
        n0 = start
        while n0 < end:
            m_i, l_i, acc = _attend_block(
                q, k_base, v_base, m_base, n0, end, m_i, l_i, acc, row_ok, d, dv, sk_s, sk_d, sv_s, sv_d, sm_s,
                scale, softcap, D, DV, BLOCK_N, HAS_MASK, MASK_BOOL, HAS_SOFTCAP, PRECISION, DOT_F32,
            )
            n0 += BLOCK_N
    else:
        for n0 in range(start, end, BLOCK_N):
            m_i, l_i, acc = _attend_block(
                q, k_base, v_base, m_base, n0, end, m_i, l_i, acc, row_ok, d, dv, sk_s, sk_d, sv_s, sv_d, sm_s,
                scale, softcap, D, DV, BLOCK_N, HAS_MASK, MASK_BOOL, HAS_SOFTCAP, PRECISION, DOT_F32,
            )

    if FINAL:
        # One split saw every visible key: finish here (the reduce kernel's math for a single partial).
        m_max = m_i
        if HAS_SINKS:
            sink = tl.load(SINKS + heads * s_sink, mask=row_ok, other=0.0).to(tl.float32)
            m_max = tl.maximum(m_max, sink)
        m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
        kept = tl.exp(m_i - m_safe)
        denom = l_i * kept
        if HAS_SINKS:
            denom += tl.exp(sink - m_safe)
        out = tl.where(denom[:, None] > 0, acc * (kept / tl.where(denom > 0, denom, 1.0))[:, None], 0.0)
        tl.store(O + b * so_b + heads[:, None] * so_h + dv[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & (dv < DV)[None, :])
    else:
        # Partials are laid out (batch * heads, splits[, DV]), row = b * H + head.
        part = (b * (HKV * GROUP) + heads) * num_splits + split
        tl.store(M_OUT + part, m_i, mask=row_ok)
        tl.store(L_OUT + part, l_i, mask=row_ok)
        tl.store(ACC_OUT + part[:, None] * DV + dv[None, :], acc, mask=row_ok[:, None] & (dv < DV)[None, :])


@triton.jit(do_not_specialize=("rows", "num_splits"))
def _decode_reduce(
    M_IN, L_IN, ACC_IN, SINKS, O,
    rows, num_splits, s_sink, so_b, so_h,
    H: tl.constexpr, DV: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_S: tl.constexpr,
    CHUNK_S: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    # BLOCK_R rows (row = b * H + head) per program: 1 on a GPU, many under the interpreter.
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    h = r % H
    sp = tl.arange(0, BLOCK_S)
    ok = r_ok[:, None] & (sp < num_splits)[None, :]
    base = r[:, None] * num_splits
    m = tl.load(M_IN + base + sp[None, :], mask=ok, other=float("-inf"))
    l = tl.load(L_IN + base + sp[None, :], mask=ok, other=0.0)
    m_max = tl.max(m, 1)
    if HAS_SINKS:
        sink = tl.load(SINKS + h * s_sink, mask=r_ok, other=0.0).to(tl.float32)
        m_max = tl.maximum(m_max, sink)
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
    denom = tl.sum(l * tl.exp(m - m_safe[:, None]), 1)
    if HAS_SINKS:
        denom += tl.exp(sink - m_safe)
    dv = tl.arange(0, BLOCK_DV)
    dv_ok = dv < DV
    acc = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    # Static chunks of CHUNK_S splits (no runtime loop bound); chunks past num_splits are fully masked.
    for s0 in range(0, BLOCK_S, CHUNK_S):
        cs = s0 + tl.arange(0, CHUNK_S)
        cs_ok = r_ok[:, None] & (cs < num_splits)[None, :]
        ws = tl.exp(tl.load(M_IN + base + cs[None, :], mask=cs_ok, other=float("-inf")) - m_safe[:, None])
        part = tl.load(ACC_IN + (base + cs[None, :])[:, :, None] * DV + dv[None, None, :],
                       mask=cs_ok[:, :, None] & dv_ok[None, None, :], other=0.0)
        acc += tl.sum(ws[:, :, None] * part, 1)
    # A row with no visible key (denom 0) returns zeros, like the reference.
    out = tl.where(denom[:, None] > 0, acc / tl.where(denom > 0, denom, 1.0)[:, None], 0.0)
    o_row = (r // H) * so_b + h * so_h
    tl.store(O + o_row[:, None] + dv[None, :], out.to(O.dtype.element_ty), mask=r_ok[:, None] & dv_ok[None, :])


# Decided once at import (when @triton.jit chose interpreted or compiled kernels); a module constant keeps
# the wrapper traceable by dynamo, which cannot take type() of a Triton kernel.
_INTERPRETED = type(_decode_partial).__name__ == "InterpretedFunction"


def launch_config(batch: int, kv_heads: int, head_dim: int) -> tuple[int, int, int, int]:
    """(splits, BLOCK_N, num_warps, num_stages) from per-model facts only (never the key length).

    Splits: enough (sequence, kv head, split) programs for ~4 waves on a 132-SM GPU. Key blocks: 64 keys
    for head dims up to 128, 32 for wider heads (a 32 x 256 half tile is 16 KiB per operand and stage)."""
    if _INTERPRETED:
        return _INTERPRETER_SPLITS, _INTERPRETER_BLOCK_N, 4, 1
    pairs = max(1, batch * kv_heads)
    splits = max(1, min(_MAX_SPLITS, cdiv(_TARGET_PROGRAMS, pairs)))
    block_n = 64 if head_dim <= 128 else 32
    return splits, block_n, 4, 2


def _mask_view(mask: torch.Tensor, b: int, h: int, sk: int) -> torch.Tensor:
    """The caller's mask as a (B, H, 1, Sk) view (broadcast dims get stride 0), bool as uint8; no copy."""
    shape = tuple(mask.shape)
    target = (b, h, 1, sk)
    fits = len(shape) <= 4
    for size, want in zip(shape[::-1], target[::-1]):
        fits = fits and size in (1, want)
    if not fits:
        raise ValueError(
            f"attn_mask shape {shape} does not broadcast to (batch, heads, 1, seq_k) = {target}; pass a "
            f"(B, 1, 1, Sk) or (B, H, 1, Sk) mask"
        )
    m = mask.expand(target)
    return m.view(torch.uint8) if m.dtype == torch.bool else m


def _check(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float) -> None:
    check_qkv("triton_decode_attention", query, key, value, dropout_p, _MAX_HEAD_DIM)
    if query.shape[1] != 1:
        raise ValueError(
            f"triton_decode_attention handles one query per sequence (decode); got seq_len_q={query.shape[1]}. "
            "Use torch_sdpa_attention, triton_prefill_attention or torch_flex_attention for prefill"
        )
    check_device("triton_decode_attention", __name__, query, _INTERPRETED)


@implements(ATTENTION)
def decode_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks,
        enable_gqa, *, _config: tuple[int, int, int, int] | None = None):
    """Attention of one query per sequence over (B, Sk, Hkv, D) keys/values (any strides); returns
    (B, 1, H, Dv) in the query dtype. ``is_causal`` and ``enable_gqa`` need no action for one query.

    ``_config`` = (splits, BLOCK_N, num_warps, num_stages) overrides :func:`launch_config` (tests,
    benchmarks)."""
    _check(query, key, value, dropout_p)
    b, _, h, d = query.shape
    sk, hkv = key.shape[1], key.shape[2]
    dv = value.shape[-1]
    out = torch.empty((b, 1, h, dv), dtype=query.dtype, device=query.device)
    if out.numel() == 0:
        return out
    splits, block_n, num_warps, num_stages = _config if _config is not None else launch_config(b, hkv, d)
    visible = min(sk, sliding_window) if sliding_window is not None else sk
    if _config is None and not _compiling() and visible <= _SINGLE_PASS_MAX_KEYS:
        splits = 1  # eager: few keys, so one launch (see _SINGLE_PASS_MAX_KEYS)
    single = splits == 1
    group = h // hkv
    if single:  # the kernel writes the output itself: no partials, no reduce launch
        m_part = l_part = acc_part = out  # dummy pointers, never written when FINAL is set
    else:
        # The split partials (row max, row sum, unnormalised output; fp32, indexed flat by both kernels)
        # share one allocation: a decode step is host-bound and each allocation is a few microseconds of
        # host time. Each part starts at a multiple of 4 floats, so its pointer keeps the 16-byte alignment
        # Triton specialises on (one compiled variant whatever the batch).
        parts = b * h * splits
        stride = (parts + 3) // 4 * 4
        work = torch.empty(2 * stride + parts * dv, dtype=torch.float32, device=query.device)
        m_part, l_part, acc_part = work[:parts], work[stride:stride + parts], work[2 * stride:]
    if attn_mask is not None:
        mask = _mask_view(attn_mask, b, h, sk)
        sm = (mask.stride(0), mask.stride(1), mask.stride(3))
    else:
        mask, sm = query, (0, 0, 0)  # dummy pointer, never read when HAS_MASK is False
    window = sliding_window if sliding_window is not None else 0
    sink_arg = sinks if sinks is not None else query  # dummy pointer when HAS_SINKS is False
    s_sink = sinks.stride(0) if sinks is not None else 0
    # fp32 inputs use exact fp32 dots; so does the interpreter for every dtype (its bf16 tl.dot returns
    # garbage in triton 3.6), so on CPU half inputs see fp32 P.V where a GPU rounds P to the value dtype.
    dot_f32 = query.dtype == torch.float32 or _INTERPRETED
    launch(_decode_partial, (b * hkv, splits),
        query, key, value, mask, m_part, l_part, acc_part, sink_arg, out,
        sk, splits, window,
        query.stride(0), query.stride(2), query.stride(3),
        key.stride(0), key.stride(1), key.stride(2), key.stride(3),
        value.stride(0), value.stride(1), value.stride(2), value.stride(3),
        *sm,
        s_sink, out.stride(0), out.stride(2),
        1.0 / math.sqrt(d) if scale is None else float(scale), float(softcap) if softcap else 1.0,
        HKV=hkv, GROUP=group, BLOCK_G=max(_MIN_GROUP_ROWS, next_power_of_2(group)),
        D=d, DV=dv, BLOCK_D=max(16, next_power_of_2(d)), BLOCK_DV=max(16, next_power_of_2(dv)),
        BLOCK_N=block_n,
        HAS_MASK=attn_mask is not None, MASK_BOOL=attn_mask is not None and attn_mask.dtype == torch.bool,
        HAS_SOFTCAP=bool(softcap), HAS_WINDOW=sliding_window is not None,
        HAS_SINKS=sinks is not None, FINAL=single,
        PRECISION="ieee" if dot_f32 else "tf32", DOT_F32=dot_f32, LOOP_WHILE=_INTERPRETED,
        num_warps=num_warps, num_stages=num_stages,
    )
    if single:
        return out
    block_s = next_power_of_2(max(splits, _MAX_SPLITS))
    rows = b * h
    # The interpreter's cost is per program: one program for every row, all splits in one chunk.
    block_r = min(next_power_of_2(rows), _INTERPRETER_ROWS) if _INTERPRETED else 1
    launch(_decode_reduce, (cdiv(rows, block_r),),
        m_part, l_part, acc_part, sink_arg, out,
        rows, splits, s_sink, out.stride(0), out.stride(2),
        H=h, DV=dv, BLOCK_R=block_r, BLOCK_DV=next_power_of_2(dv), BLOCK_S=block_s,
        CHUNK_S=block_s if _INTERPRETED else _REDUCE_CHUNK, HAS_SINKS=sinks is not None,
        num_warps=4 if dv >= 128 else 1,
    )
    return out


def compiled_variants() -> int:
    """How many compiled variants of the two kernels exist (all devices); 0 under the interpreter.

    A decode loop must leave this unchanged after its first step: that is the point of this kernel."""
    total = 0
    for kernel in (_decode_partial, _decode_reduce):
        caches = getattr(kernel, "device_caches", None)
        if caches:
            total += sum(len(c[0]) for c in caches.values())
    return total
