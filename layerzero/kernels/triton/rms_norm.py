"""RMSNorm (optionally fused with the residual add) as one Triton pass over the rows.

Why a kernel of our own: HF's eager RMSNorm moves the tensor through memory about five times (upcast,
square, mean, scale, cast, weight multiply); this kernel reads ``x`` (and ``residual``) once and writes
the output (and ``x + residual``) once, with fp32 accumulation whatever the input dtype.

Casting modes follow the operation contract (``layerzero/operations/norm.py``):

- ``"llama"``: ``((offset + w.float()) * (x * rstd).to(dtype)).to(dtype)`` — the normalised row is rounded
  to the input dtype before the weight multiply, like ``LlamaRMSNorm``;
- ``"gemma"``: ``(x * rstd * (offset + w.float())).to(dtype)`` — one rounding at the end;
- ``"none"``: the caller asks for no fp32 upcast; the kernel still accumulates in fp32 (it costs nothing
  in a bandwidth-bound kernel and is closer to the fp32 reference), rounding like ``"llama"``.

Without a weight the output is the normalised row (``offset`` applies to the weight only), as in
``layerzero.kernels.reference.rms_norm``. The output has ``x``'s dtype.

With ``residual`` the sum ``x + residual`` is rounded to the input dtype (what an eager ``x + residual``
produces), written out, and that rounded sum is what gets normalised.

Layout: rows are the last dimension; any leading shape is flattened to rows through a view when the
strides allow (no copy for slices with a row stride). A tensor that is a permutation of a dense one with
its rows innermost (Gemma-3 normalises q and k *after* the (B, S, H, D) -> (B, H, S, D) transpose) is
normalised in its memory order, with an output of the same strides, as Transformers' own norm returns it:
no copy. Anything else goes through ``reshape``. Small rows are packed
several to a program so each program moves enough bytes; rows too long for registers take a two-pass
loop (sum of squares, then scale) whose second read mostly hits L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_CASTING = {"llama": 0, "gemma": 1, "none": 0}
# Rows up to this many elements (rounded up to a power of two) stay in registers: one read, one write.
_MAX_FUSED_BLOCK = 16384
_CHUNK = 4096
# Elements per program to aim for when packing several short rows into one program.
_TARGET_ELEMS = 4096
_INTERPRETER_ELEMS = 1 << 16
# Cache policy of the streamed (read-once) x / residual loads ("" is the default policy) and cache
# modifier of the output stores ("" default, ".cs" streaming); chosen by the tuning sweep.
# H100 sweep: evict_first loads + streaming (.cs) stores were best or tied at every shape (+1-2.5% over
# evict_first with default stores).
EVICT = "evict_first"
STORE = ".cs"
from layerzero.kernels.triton.launch import cdiv, launch, next_power_of_2
from layerzero.operations.base import implements
from layerzero.operations.norm import RMS_NORM


@triton.jit
def _norm_rows(x, w, eps, N, OUT_DTYPE: tl.constexpr, AXIS: tl.constexpr, HAS_W: tl.constexpr, GEMMA: tl.constexpr):
    """Normalise fp32 rows of ``x`` along AXIS (0: one row as a 1-D tile, 1: a (rows, cols) tile)."""
    ms = tl.sum(x * x, axis=AXIS) / N
    rstd = tl.rsqrt(ms + eps)
    if AXIS == 1:
        rstd = rstd[:, None]
    y = x * rstd
    if HAS_W:
        if not GEMMA:  # llama / none: round the normalised row before the weight multiply
            y = y.to(OUT_DTYPE).to(tl.float32)
        y = y * w
    return y.to(OUT_DTYPE)


@triton.jit
def _rms_norm_rows(
    X, R, W, Y, H,
    M, N,
    stride_xm, stride_xn, stride_rm, stride_rn, stride_w,
    eps, offset,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROW_TILES: tl.constexpr, EVEN_N: tl.constexpr,
    HAS_W: tl.constexpr, HAS_RES: tl.constexpr, GEMMA: tl.constexpr, HAS_OFFSET: tl.constexpr,
    EVICT: tl.constexpr, STORE: tl.constexpr,
):
    # one program normalises ROW_TILES consecutive tiles of BLOCK_M rows each; BLOCK_M == 1 uses 1-D tiles
    # (one row, a plain reduction), larger BLOCK_M a (rows, cols) tile reduced along the columns.
    # Scalars are pinned to fp32: under torch.compile Inductor passes them as fp64, which would promote
    # the whole row math to fp64.
    eps = tl.cast(eps, tl.float32)
    offset = tl.cast(offset, tl.float32)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_W:
        w = tl.load(W + cols * stride_w, mask=col_mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
        if HAS_OFFSET:
            w = w + offset
    out_dtype = Y.dtype.element_ty
    for t in tl.static_range(ROW_TILES):
        if BLOCK_M == 1:
            row = (pid * ROW_TILES + t).to(tl.int64)
            mask = col_mask & (row < M)
            x = tl.load(X + row * stride_xm + cols * stride_xn, mask=mask, other=0.0, eviction_policy=EVICT)
            x = x.to(tl.float32)
            if HAS_RES:
                r = tl.load(R + row * stride_rm + cols * stride_rn, mask=mask, other=0.0, eviction_policy=EVICT)
                h = (x + r.to(tl.float32)).to(H.dtype.element_ty)
                tl.store(H + row * N + cols, h, mask=mask, cache_modifier=STORE)
                x = h.to(tl.float32)
            y = _norm_rows(x, w, eps, N, out_dtype, 0, HAS_W, GEMMA)
            tl.store(Y + row * N + cols, y, mask=mask, cache_modifier=STORE)
        else:
            rows = ((pid * ROW_TILES + t) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
            if EVEN_N:
                mask = (rows < M)[:, None]
            else:
                mask = (rows < M)[:, None] & col_mask[None, :]
            x = tl.load(
                X + rows[:, None] * stride_xm + cols[None, :] * stride_xn, mask=mask, other=0.0, eviction_policy=EVICT
            ).to(tl.float32)
            if HAS_RES:
                r = tl.load(
                    R + rows[:, None] * stride_rm + cols[None, :] * stride_rn, mask=mask, other=0.0,
                    eviction_policy=EVICT,
                )
                h = (x + r.to(tl.float32)).to(H.dtype.element_ty)
                tl.store(H + rows[:, None] * N + cols[None, :], h, mask=mask, cache_modifier=STORE)
                x = h.to(tl.float32)
            y = _norm_rows(x, w[None, :], eps, N, out_dtype, 1, HAS_W, GEMMA)
            tl.store(Y + rows[:, None] * N + cols[None, :], y, mask=mask, cache_modifier=STORE)


# N is a compile-time constant here: hidden sizes are per-model constants (a handful of compilations), and
# the Triton interpreter cannot loop over a runtime bound.
@triton.jit
def _rms_norm_long_rows(
    X, R, W, Y, H,
    stride_xm, stride_xn, stride_rm, stride_rn, stride_w,
    eps, offset,
    N: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_W: tl.constexpr, HAS_RES: tl.constexpr, GEMMA: tl.constexpr, HAS_OFFSET: tl.constexpr,
):
    eps = tl.cast(eps, tl.float32)  # Inductor passes scalars as fp64 (see _rms_norm_rows)
    offset = tl.cast(offset, tl.float32)
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_xm
    r_row = R + row * stride_rm
    h_row = H + row * N
    y_row = Y + row * N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(x_row + cols * stride_xn, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
        if HAS_RES:
            r = tl.load(r_row + cols * stride_rn, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
            h = (x + r).to(H.dtype.element_ty)
            tl.store(h_row + cols, h, mask=mask)
            x = h.to(tl.float32)
        acc += x * x
    rstd = tl.rsqrt(tl.sum(acc, axis=0) / N + eps)
    if HAS_RES:
        tl.debug_barrier()  # the second pass re-reads the sums this program just wrote
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < N
        if HAS_RES:
            x = tl.load(h_row + cols, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        else:
            x = tl.load(x_row + cols * stride_xn, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        y = x * rstd
        if HAS_W:
            w = tl.load(W + cols * stride_w, mask=mask, other=0.0, eviction_policy="evict_last")
            if GEMMA:
                y = y * (w.to(tl.float32) + offset)
            else:
                wf = w.to(tl.float32)
                if HAS_OFFSET:
                    wf = wf + offset
                y = y.to(Y.dtype.element_ty).to(tl.float32) * wf
        tl.store(y_row + cols, y.to(Y.dtype.element_ty), mask=mask)


def _as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """(rows, n): a view when the strides allow it (``reshape`` copies only when they do not)."""
    return t if t.dim() == 2 else t.reshape(-1, n)


def _permuted_dense(t: torch.Tensor, n: int) -> bool:
    """Whether ``t`` (not contiguous) covers one dense block of memory, rows innermost: then its rows are
    the consecutive runs of ``n`` elements of that block, in some order of the leading dimensions."""
    if t.dim() < 3 or n < 2 or t.stride(-1) != 1:
        return False
    dims = sorted((st, size) for st, size in zip(t.stride()[:-1], t.shape[:-1]) if size != 1)
    expected = n
    for st, size in dims:
        if st != expected:
            return False
        expected *= size
    return True


def _memory_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """The (rows, n) view of a :func:`_permuted_dense` tensor's block, in memory order."""
    return t.as_strided((t.numel() // n, n), (n, 1))


# Decided once at import (when @triton.jit chose interpreted or compiled kernels); a module constant keeps
# the wrapper traceable by dynamo, which cannot take type() of a Triton kernel.
_INTERPRETED = type(_rms_norm_rows).__name__ == "InterpretedFunction"


def _check_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(
            f"triton_rms_norm got a tensor on {t.device}; Triton kernels run on CUDA, or on the CPU only "
            "when TRITON_INTERPRET=1 is set before layerzero.kernels.triton.rms_norm is imported"
        )


def launch_config(m: int, n: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, ROW_TILES) for the register-resident kernel; BLOCK_M == 0 means the
    long-row path.

    Measured on an H100 (benchmarks/results/triton_bandwidth_h100.md, tuning sweep): rows of 2048 and more
    run best one per program (8 warps up to 4096, 16 from 8192: 2.80-3.01 TB/s); shorter rows are packed
    so a program still sees ~4096 elements (128-wide rows: 2.90 TB/s)."""
    block_n = next_power_of_2(n)
    if block_n > _MAX_FUSED_BLOCK:
        return 0, _CHUNK, 8, 1
    # the CPU interpreter pays per program and per operation, not per byte: give it big tiles
    block_m = 1
    if _INTERPRETED:
        block_m = min(max(1, _INTERPRETER_ELEMS // block_n), next_power_of_2(max(m, 1)))
    elif block_n < 2048:
        block_m = min(_TARGET_ELEMS // block_n, next_power_of_2(max(m, 1)))
    elems = block_m * block_n
    num_warps = 16 if elems >= 8192 else 8 if elems >= 2048 else 4
    return block_m, block_n, num_warps, 1


@implements(RMS_NORM)
def rms_norm(x, weight, eps, offset, casting, residual, *, _config: tuple[int, int, int, int] | None = None):
    """RMSNorm over the last dimension; with ``residual`` returns ``(normed, x + residual)``.

    ``_config`` overrides :func:`launch_config` (used by the bandwidth benchmark's tuning sweep)."""
    if casting not in _CASTING:
        raise ValueError(f"casting={casting!r} is not one of 'llama', 'gemma', 'none'")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the hidden size), got a 0-d tensor")
    _check_device(x)
    n = x.shape[-1]
    if weight is not None and (weight.dim() != 1 or weight.shape[0] != n):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match hidden size {n}; pass weight of shape ({n},)")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}; pass a residual of x's shape")
        if residual.dtype != x.dtype:
            raise ValueError(f"residual dtype {residual.dtype} != x dtype {x.dtype}; cast the residual to {x.dtype}")
    permuted = (not x.is_contiguous() and _permuted_dense(x, n)
                and (residual is None or residual.stride() == x.stride()))
    if permuted:  # outputs with x's strides: element i of y's memory block is element i of x's
        y = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        h = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device) if residual is not None else None
    else:
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        h = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    if x.numel() == 0:
        return (y, h) if h is not None else y
    if permuted:
        x2, y_rows = _memory_rows(x, n), _memory_rows(y, n)
        r2 = _memory_rows(residual, n) if residual is not None else x2
        h_rows = _memory_rows(h, n) if h is not None else y_rows
    else:
        x2 = _as_rows(x, n)
        r2 = _as_rows(residual, n) if residual is not None else x2
        y_rows, h_rows = y, h if h is not None else y
    m = x2.shape[0]
    w = weight if weight is not None else x2  # dummy pointer, never read when HAS_W is False
    stride_w = weight.stride(0) if weight is not None else 0
    flags = dict(
        HAS_W=weight is not None,
        HAS_RES=residual is not None,
        GEMMA=casting == "gemma",
        HAS_OFFSET=bool(offset),
    )
    cfg = _config if _config is not None else launch_config(m, n)
    block_m, block_n, num_warps, row_tiles = cfg
    if block_m == 0:
        launch(_rms_norm_long_rows, (m,),
            x2, r2, w, y_rows, h_rows,
            x2.stride(0), x2.stride(1), r2.stride(0), r2.stride(1), stride_w,
            float(eps), float(offset),
            N=n, BLOCK_N=block_n, num_warps=num_warps, **flags,
        )
    else:
        launch(_rms_norm_rows, (cdiv(m, block_m * row_tiles),),
            x2, r2, w, y_rows, h_rows, m, n,
            x2.stride(0), x2.stride(1), r2.stride(0), r2.stride(1), stride_w,
            float(eps), float(offset),
            BLOCK_M=block_m, BLOCK_N=block_n, ROW_TILES=row_tiles, EVEN_N=n == block_n, EVICT=EVICT, STORE=STORE,
            num_warps=num_warps, **flags,
        )
    return (y, h) if h is not None else y
