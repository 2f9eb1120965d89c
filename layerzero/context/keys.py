"""Cheap cache keys for a call, read from tensor metadata without building a SelectionContext.

The key holds every fact a kernel constraint or a policy condition can look at, with varying sizes
bucketed (:mod:`layerzero.context.buckets`), so a cache hit is always right for the call it serves.
Building one costs about a microsecond in CPython: tuple of ints, dtypes and devices.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping

import torch

from layerzero.context.buckets import Bucketer

Keyer = Callable[[str, Mapping[str, Any], Mapping[str, Any]], Hashable]
_grad_enabled = torch.is_grad_enabled


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
    mq, bq = _memo(bucketers["seq_len_q"])
    mk, bk = _memo(bucketers["seq_len_k"])
    mb, bb = _memo(bucketers["batch_size"])

    def attention_key(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
        q = inputs["query"]
        k = inputs["key"]
        qs = q.shape
        ks = k.shape
        mask = kw.get("attn_mask")
        if mask is None:
            mask = inputs.get("attn_mask")
        sinks = kw.get("sinks")
        return (
            op, mb.get(qs[0]) or bb(qs[0]), mq.get(qs[1]) or bq(qs[1]), qs[2], qs[3], mk.get(ks[1]) or bk(ks[1]),
            ks[2], inputs["value"].shape[-1],
            q.dtype, q.device, kw.get("is_causal"), None if mask is None else mask.dtype,
            bool(kw.get("dropout_p")), kw.get("sliding_window"), kw.get("softcap"),
            sinks is not None or inputs.get("sinks") is not None,
            q.requires_grad and _grad_enabled(), q.stride(-1) == 1,
        )

    def norm_key(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
        x = inputs["x"]
        h = x.shape[-1]
        rows = x.numel() // h if h else 0
        return (
            op, mb.get(rows) or bb(rows), h, x.dtype, x.device, kw.get("offset"), kw.get("casting"),
            kw.get("residual") is not None or inputs.get("residual") is not None,
            x.requires_grad and _grad_enabled(), x.is_contiguous(),
        )

    def rope_key(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
        q = inputs["q"]
        k = inputs["k"]
        layout = kw.get("layout", "bhsd")
        qs = q.shape
        if layout == "bhsd":
            shape = (qs[0], qs[1], mq.get(qs[2]) or bq(qs[2]), qs[3], k.shape[1])
        else:
            shape = (qs[0], mq.get(qs[1]) or bq(qs[1]), qs[2], qs[3], k.shape[2])
        return (
            op, shape, inputs["cos"].shape[-1], layout, kw.get("interleaved"), q.dtype, q.device,
            q.requires_grad and _grad_enabled(), q.is_contiguous(),
        )

    def act_key(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
        g = inputs["gate"]
        h = g.shape[-1]
        rows = g.numel() // h if h else 0
        return (
            op, mb.get(rows) or bb(rows), h, g.dtype, g.device, kw.get("approximate"),
            g.requires_grad and _grad_enabled(), g.is_contiguous(),
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

    by_op: dict[str, Keyer] = {
        "attention.causal": attention_key,
        "attention.prefill": attention_key,
        "attention.cross": attention_key,
        "attention.decode": attention_key,
        "rms_norm": norm_key,
        "layer_norm": norm_key,
        "rope": rope_key,
        "swiglu": act_key,
        "geglu": act_key,
    }

    def keyer(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
        fn = by_op.get(op, generic_key)
        try:
            return fn(op, inputs, kw)
        except (KeyError, IndexError, AttributeError, TypeError):
            try:
                return generic_key(op, inputs, kw)
            except Exception:  # noqa: BLE001 - not even a generic key: a key that never hits, so the
                return object()  # miss path validates the call and names what is wrong

    return keyer


def _hashable(v: Any) -> Hashable:
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), v.dtype, v.device)
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)
