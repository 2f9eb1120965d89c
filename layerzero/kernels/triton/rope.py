"""Rotary position embedding for q and k in one Triton launch.

Why: HF's eager ``apply_rotary_pos_emb`` runs ~10 elementwise kernels (two ``rotate_half`` copies,
four multiplies, two adds, for q and k separately). Here one program handles one token: it loads that
token's cos/sin once and rotates every query head and every key head (GQA: fewer key heads) of it,
reading q and k once and writing the two outputs once. (Several tokens per program are supported for
the CPU interpreter, whose cost is per program.)

Semantics (``layerzero/operations/rope.py``): for each rotated feature pair ``(x1, x2)`` at feature indices
``(d1, d2)`` — ``(i, i + rot_dim/2)`` for rotate_half (HF default) or ``(2i, 2i + 1)`` for interleaved
(GPT-J) —

    out[d1] = x1 * cos[d1] - x2 * sin[d1]
    out[d2] = x2 * cos[d2] + x1 * sin[d2]

which is ``x * cos + rotate(x) * sin`` with the full-width cos/sin HF passes (duplicated halves); no
assumption that the halves are equal is made. Features ``rot_dim .. head_dim`` are copied unchanged
(partial rotary, e.g. Phi-3 / GPT-NeoX ``rotary_pct``). Math is fp32, one rounding at the store.

Inputs are addressed by strides, so HF's transposed ``(B, H, S, D)`` views need no copy; outputs are new
tensors with the same memory layout as the inputs (``torch.empty_like``), so stores are as coalesced as
loads. Inputs are never written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_LAYOUT_OF_UNSQUEEZE = {1: "bhsd", 2: "bshd"}
# Elements of one (heads x half-rotary) tile; bounds registers for many heads / wide heads.
_TILE_ELEMS = 2048
# Cache policy of the streamed (read-once) q / k loads ("" is the default policy) and cache modifier of
# the output stores ("" default, ".cs" streaming); chosen by the tuning sweep.
# H100 sweep: default cache policies beat evict_first by 1.5-3% (head_dim 96/128), tie at head_dim 64.
EVICT = ""
STORE = ""
from layerzero.kernels.triton.launch import cdiv, launch, next_power_of_2
from layerzero.operations.base import implements
from layerzero.operations.rope import ROPE


@triton.jit
def _rotate_heads(
    X, O, b, s, tmask, NH,
    sx_b, sx_h, sx_s, sx_d, so_b, so_h, so_s, so_d,
    d1, d2, dmask, cos1, cos2, sin1, sin2,
    ROT: tl.constexpr, D: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_PASS: tl.constexpr, EVICT: tl.constexpr, STORE: tl.constexpr,
):
    # tiles are (tokens, heads, features); b, s, tmask are per token, cos/sin are (tokens, features)
    x_tok = X + (b * sx_b + s * sx_s)[:, None, None]
    o_tok = O + (b * so_b + s * so_s)[:, None, None]
    c1 = cos1[:, None, :]
    c2 = cos2[:, None, :]
    s1 = sin1[:, None, :]
    s2 = sin2[:, None, :]
    for h0 in range(0, NH, BLOCK_H):
        h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)
        th_mask = tmask[:, None, None] & (h < NH)[None, :, None]
        m = th_mask & dmask[None, None, :]
        xh = x_tok + h[None, :, None] * sx_h
        oh = o_tok + h[None, :, None] * so_h
        x1 = tl.load(xh + d1[None, None, :] * sx_d, mask=m, other=0.0, eviction_policy=EVICT).to(tl.float32)
        x2 = tl.load(xh + d2[None, None, :] * sx_d, mask=m, other=0.0, eviction_policy=EVICT).to(tl.float32)
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
        tl.store(oh + d1[None, None, :] * so_d, o1.to(O.dtype.element_ty), mask=m, cache_modifier=STORE)
        tl.store(oh + d2[None, None, :] * so_d, o2.to(O.dtype.element_ty), mask=m, cache_modifier=STORE)
        if BLOCK_PASS > 0:
            p = ROT + tl.arange(0, BLOCK_PASS)
            pm = th_mask & (p < D)[None, None, :]
            xp = tl.load(xh + p[None, None, :] * sx_d, mask=pm, other=0.0, eviction_policy=EVICT)
            tl.store(oh + p[None, None, :] * so_d, xp, mask=pm, cache_modifier=STORE)


# Head counts and dims are compile-time constants: they are per-model constants (few compilations), and
# the Triton interpreter cannot loop over a runtime bound.
@triton.jit
def _rope_kernel(
    Q, K, COS, SIN, QO, KO,
    S, T,
    sq_b, sq_h, sq_s, sq_d, sk_b, sk_h, sk_s, sk_d,
    sqo_b, sqo_h, sqo_s, sqo_d, sko_b, sko_h, sko_s, sko_d,
    sc_b, sc_s, sc_d, ss_b, ss_s, ss_d,
    HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr, ROT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
    BLOCK_PASS: tl.constexpr, INTERLEAVED: tl.constexpr, EVICT: tl.constexpr, STORE: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = tok < T
    b = tok // S
    s = tok % S
    HALF: tl.constexpr = ROT // 2
    i = tl.arange(0, BLOCK_HALF)
    dmask = i < HALF
    if INTERLEAVED:
        d1 = 2 * i
        d2 = 2 * i + 1
    else:
        d1 = i
        d2 = i + HALF
    cm = tmask[:, None] & dmask[None, :]
    c_tok = COS + (b * sc_b + s * sc_s)[:, None]
    s_tok = SIN + (b * ss_b + s * ss_s)[:, None]
    cos1 = tl.load(c_tok + d1[None, :] * sc_d, mask=cm, other=0.0).to(tl.float32)
    cos2 = tl.load(c_tok + d2[None, :] * sc_d, mask=cm, other=0.0).to(tl.float32)
    sin1 = tl.load(s_tok + d1[None, :] * ss_d, mask=cm, other=0.0).to(tl.float32)
    sin2 = tl.load(s_tok + d2[None, :] * ss_d, mask=cm, other=0.0).to(tl.float32)
    _rotate_heads(
        Q, QO, b, s, tmask, HQ, sq_b, sq_h, sq_s, sq_d, sqo_b, sqo_h, sqo_s, sqo_d,
        d1, d2, dmask, cos1, cos2, sin1, sin2, ROT, D, BLOCK_HQ, BLOCK_PASS, EVICT, STORE,
    )
    _rotate_heads(
        K, KO, b, s, tmask, HK, sk_b, sk_h, sk_s, sk_d, sko_b, sko_h, sko_s, sko_d,
        d1, d2, dmask, cos1, cos2, sin1, sin2, ROT, D, BLOCK_HK, BLOCK_PASS, EVICT, STORE,
    )


def _bhsd_strides(t: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    sb, s1, s2, sd = t.stride()
    return (sb, s1, s2, sd) if layout == "bhsd" else (sb, s2, s1, sd)


def _cos_strides(c: torch.Tensor, name: str, batch: int, seq: int, layout: str) -> tuple[int, int, int]:
    """(batch, seq, feature) strides of cos/sin; a size-1 batch broadcasts (stride 0)."""
    if c.dim() == 4:  # already unsqueezed for broadcasting: (B, 1, S, R) or (B, S, 1, R)
        head_axis = 1 if layout == "bhsd" else 2
        if c.shape[head_axis] != 1:
            raise ValueError(
                f"{name} shape {tuple(c.shape)} has a head axis of size {c.shape[head_axis]}; pass {name} "
                "as (batch, seq, rot_dim) or (seq, rot_dim)"
            )
        c = c.squeeze(head_axis)
    if c.dim() == 2:
        if c.shape[0] != seq:
            raise ValueError(f"{name} shape {tuple(c.shape)}: seq {c.shape[0]} != q seq {seq}")
        return 0, c.stride(0), c.stride(1)
    if c.dim() == 3:
        if c.shape[1] != seq or c.shape[0] not in (1, batch):
            raise ValueError(
                f"{name} shape {tuple(c.shape)} does not broadcast to batch {batch}, seq {seq}; pass "
                f"({batch} or 1, {seq}, rot_dim)"
            )
        return (0 if c.shape[0] == 1 else c.stride(0)), c.stride(1), c.stride(2)
    raise ValueError(f"{name} must be (batch, seq, rot_dim) or (seq, rot_dim), got shape {tuple(c.shape)}")


# Decided once at import (when @triton.jit chose interpreted or compiled kernels); a module constant keeps
# the wrapper traceable by dynamo, which cannot take type() of a Triton kernel.
_INTERPRETED = type(_rope_kernel).__name__ == "InterpretedFunction"


def launch_config(tokens: int, hq: int, hk: int, half: int) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_HQ, BLOCK_HK, num_warps).

    On a GPU one program per token (cos/sin loaded once, reused by every head) with head tiles of at most
    ~_TILE_ELEMS rotated pairs. Under the CPU interpreter, whose cost is per program and per operation,
    one program takes many tokens and all heads."""
    block_half = next_power_of_2(max(half, 1))
    if _INTERPRETED:
        return min(next_power_of_2(max(tokens, 1)), 64), next_power_of_2(hq), next_power_of_2(hk), 4
    cap = max(1, _TILE_ELEMS // block_half)
    block_hq = min(next_power_of_2(hq), cap)
    block_hk = min(next_power_of_2(hk), cap)
    # H100 sweep: ~512 rotated pairs per warp was best (head_dim 128 and 96: 4 warps, 64: 2 warps).
    num_warps = max(1, min(8, block_hq * block_half // 512))
    return 1, block_hq, block_hk, num_warps


@implements(ROPE)
def rope(q, k, cos, sin, layout, interleaved, unsqueeze_dim, *, _config: tuple[int, int, int, int] | None = None):
    """Rotate ``q`` and ``k`` by ``cos``/``sin``; returns new ``(q_embed, k_embed)``.

    ``unsqueeze_dim`` is HF's way of naming the layout (1: heads before seq, "bhsd"; 2: "bshd"); when
    given it decides the layout. ``_config`` overrides :func:`launch_config` (benchmark tuning sweep)."""
    if unsqueeze_dim is not None:
        if unsqueeze_dim not in _LAYOUT_OF_UNSQUEEZE:
            raise ValueError(f"unsqueeze_dim={unsqueeze_dim!r} is not supported; use 1 (bhsd), 2 (bshd) or None")
        layout = _LAYOUT_OF_UNSQUEEZE[unsqueeze_dim]
    if layout not in ("bhsd", "bshd"):
        raise ValueError(f"layout={layout!r} is not one of 'bhsd', 'bshd'")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be 4-d ({layout}); got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(
            f"triton_rope got a tensor on {q.device}; Triton kernels run on CUDA, or on the CPU only when "
            "TRITON_INTERPRET=1 is set before layerzero.kernels.triton.rope is imported"
        )
    if layout == "bhsd":
        bsz, hq, seq, d = q.shape
        kb, hk, ks, kd = k.shape
    else:
        bsz, seq, hq, d = q.shape
        kb, ks, hk, kd = k.shape
    if (kb, ks, kd) != (bsz, seq, d):
        raise ValueError(
            f"k shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} in batch, seq and head_dim ({layout})"
        )
    if cos.shape != sin.shape:
        raise ValueError(f"cos shape {tuple(cos.shape)} != sin shape {tuple(sin.shape)}")
    rot = cos.shape[-1]
    if rot % 2 or rot > d or rot == 0:
        raise ValueError(f"rot_dim (cos.shape[-1]) = {rot} must be even and in [2, head_dim={d}]")
    sc = _cos_strides(cos, "cos", bsz, seq, layout)
    ss = _cos_strides(sin, "sin", bsz, seq, layout)
    q_out = torch.empty_like(q)
    k_out = torch.empty_like(k)
    if q.numel() == 0:
        return q_out, k_out
    half = rot // 2
    tokens = bsz * seq
    cfg = _config if _config is not None else launch_config(tokens, hq, hk, half)
    block_t, block_hq, block_hk, num_warps = cfg
    block_pass = next_power_of_2(d - rot) if d > rot else 0
    launch(_rope_kernel, (cdiv(tokens, block_t),),
        q, k, cos, sin, q_out, k_out,
        seq, tokens,
        *_bhsd_strides(q, layout), *_bhsd_strides(k, layout),
        *_bhsd_strides(q_out, layout), *_bhsd_strides(k_out, layout),
        *sc, *ss,
        HQ=hq, HK=hk, D=d, ROT=rot,
        BLOCK_T=block_t, BLOCK_HALF=next_power_of_2(half), BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_PASS=block_pass,
        INTERLEAVED=bool(interleaved), EVICT=EVICT, STORE=STORE, num_warps=num_warps,
    )
    return q_out, k_out
