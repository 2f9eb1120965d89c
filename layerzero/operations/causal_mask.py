"""Recognize a materialized mask that is exactly causal, so attention can run ``is_causal=True`` instead.

Why: a compiled graph cannot look at tensor data, so code traced by ``torch.compile`` sometimes builds a
dense ``(B, 1, S, S)`` bool mask that an eager run would have proven to be plain causal and dropped.
Transformers does this for every forward without a cache and without an ``attention_mask``: it derives a
packed-sequence mask from the position ids and can only rule packing out eagerly, so under tracing every
attention call gets a materialized mask. Kernels given a dense mask cannot skip the masked upper triangle
and flash-style kernels are not eligible at all (measured on an H200 at Llama-3.2-1B, 1 x 4096: the same
cuDNN kernel took 8.6 ms over 16 layers with the mask against 2.9 ms causal).

The ``layerzero::attention`` custom op runs eagerly inside the compiled graph, where reading data is legal,
so it checks the mask there: one comparison on the device and one host sync per mask *object*, whose verdict
is reused by every later call that receives the same tensor (eager Transformers passes one mask object to all
its layers of a kind). Inductor, though, recomputes a traced mask into a buffer of its own for each
consuming layer (measured: one mask kernel, one comparison and one sync per layer).
:func:`layerzero.operations.shared.shared` stops that: a mask builder that runs under tracing passes its
mask through the opaque ``layerzero::shared`` op, whose output is one buffer that every layer receives, so
the compiled forward builds the mask once and checks it once. The check is skipped while a CUDA graph is being captured
(a sync is illegal there) and for masks too small for the saving to pay for the sync.
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["MIN_CHECKED_SEQ", "is_plain_causal"]

MIN_CHECKED_SEQ = 256
"""Masks over fewer queries are passed as they are: the attention they would save is a few microseconds."""

_ROWS_PER_CHUNK_ELEMENTS = 1 << 24  # bounds the comparison's scratch memory (16 M bools per chunk)
_MAX_REMEMBERED = 16
_verdicts: dict[int, tuple[weakref.ReferenceType, int, bool]] = {}


def _compare(mask: torch.Tensor, seq: int) -> bool:
    """True when every ``(Sq, Sk)`` slice of ``mask`` is the lower triangle (diagonal included); one sync."""
    rows_per_chunk = max(1, _ROWS_PER_CHUNK_ELEMENTS // mask[..., :1, :].numel())  # numel: one row, all slices
    keys = torch.arange(seq, device=mask.device)
    mismatch = torch.zeros((), dtype=torch.bool, device=mask.device)
    for start in range(0, seq, rows_per_chunk):
        stop = min(seq, start + rows_per_chunk)
        expected = keys.unsqueeze(0) <= torch.arange(start, stop, device=mask.device).unsqueeze(1)
        mismatch |= (mask[..., start:stop, :] != expected).any()
    return not bool(mismatch)


def is_plain_causal(mask: torch.Tensor, seq_q: int, seq_k: int) -> bool:
    """Whether ``mask`` (bool, True = attend) equals plain causal attention over ``seq_q == seq_k`` tokens
    for every batch row and head, so that ``is_causal=True`` without the mask computes the same result.

    Returns False, without reading data, for anything else: float masks, cross lengths, masks broadcast
    over queries or keys, short sequences, and during CUDA-graph capture."""
    if (mask.dtype != torch.bool or seq_q != seq_k or seq_q < MIN_CHECKED_SEQ or mask.dim() < 2
            or mask.shape[-2] != seq_q or mask.shape[-1] != seq_k):
        return False
    if mask.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    remembered = _verdicts.get(id(mask))
    if remembered is not None and remembered[0]() is mask and remembered[1] == mask._version:
        return remembered[2]
    verdict = _compare(mask, seq_q)
    if len(_verdicts) >= _MAX_REMEMBERED:
        for key in [k for k, (ref, _v, _b) in _verdicts.items() if ref() is None] or list(_verdicts):
            del _verdicts[key]
    _verdicts[id(mask)] = (weakref.ref(mask), mask._version, verdict)
    return verdict

