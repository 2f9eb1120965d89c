"""Cheap cache keys for a call, read from tensor metadata without building a SelectionContext.

The key holds every fact a kernel constraint or a policy condition can look at, with varying sizes
bucketed (:mod:`layerzero.context.buckets`), so a cache hit is always right for the call it serves.
Building one costs about a microsecond in CPython: tuple of ints, dtypes and devices.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping

import torch

from layerzero.context.buckets import Bucketer
from layerzero.operations import all_operations
from layerzero.operations.base import KeyBuckets, Keyer, SizeBucket

__all__ = ["KEY_ERRORS", "Keyer", "make_keyer"]


def _memo(bucket: Bucketer, limit: int = 8192) -> tuple[dict[int, int], Callable[[int], int]]:
    """A bucketer with a bounded memo: a dict hit is cheaper than the arithmetic and the bisect. Returns
    the memo too, so keyers read a hit inline (``memo.get(n) or fill(n)``: buckets are >= 1) and pay the
    extra Python call only on a miss."""
    memo: dict[int, int] = {}

    def fill(n: int) -> int:
        b = memo.get(n)
        if b is None:
            if len(memo) >= limit:
                memo.clear()
            b = memo[n] = bucket(n)
        return b

    return memo, fill


def make_keyer(bucketers: Mapping[str, Bucketer]) -> Keyer:
    """The cache-key function of a dispatcher: each operation's own keyer (``Operation.keyer``), with a
    generic key for unknown operations and for calls whose arguments do not fit the operation's keyer."""
    buckets = KeyBuckets(
        SizeBucket(*_memo(bucketers["batch_size"])),
        SizeBucket(*_memo(bucketers["seq_len_q"])),
        SizeBucket(*_memo(bucketers["seq_len_k"])),
    )

    def generic_key(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
        parts: list[Hashable] = [op]
        for name, t in inputs.items():
            if isinstance(t, torch.Tensor):
                parts.append((name, tuple(t.shape), t.dtype, t.device, t.requires_grad))
            else:
                parts.append((name, _hashable(t)))
        parts.append(tuple(sorted((k, _hashable(v)) for k, v in kw.items())))
        return tuple(parts)

    by_op: dict[str, Keyer] = {}
    for operation in all_operations():
        own = operation.keyer(buckets)
        if own is not None:
            by_op[operation.name] = own

    def keyer(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
        fn = by_op.get(op, generic_key)
        try:
            return fn(op, inputs, kw)
        except KEY_ERRORS:
            try:
                return generic_key(op, inputs, kw)
            except Exception:  # noqa: BLE001 - not even a generic key: a key that never hits, so the
                return object()  # miss path validates the call and names what is wrong

    # Each operation's own key function, for callers that key one operation many times (a bound call):
    # calling it directly saves this wrapper's frame; on KEY_ERRORS they fall back to ``keyer``.
    keyer.by_operation = by_op  # type: ignore[attr-defined]
    return keyer


#: What an operation's own key function raises on arguments that do not fit it (then the generic key
#: applies): the exceptions ``keyer`` catches.
KEY_ERRORS = (KeyError, IndexError, AttributeError, TypeError)


def _hashable(v: Any) -> Hashable:
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), v.dtype, v.device)
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)
