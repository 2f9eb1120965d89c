"""Attention: ``attention.causal``, ``attention.prefill``, ``attention.cross`` and ``attention.decode``.

query/key/value are ``(batch, seq, heads, head_dim)``; key/value may have fewer heads (GQA,
``num_heads % num_kv_heads == 0``). ``is_causal`` with ``seq_q < seq_k`` is bottom-right aligned: the last
query token sees every key. ``attn_mask`` is bool (True = attend) or additive float, broadcastable to
``(batch, heads, seq_q, seq_k)``. Output ``(batch, seq_q, heads, head_dim_v)`` in the query dtype.

The four operations share one contract, one reference and one custom op; they are separate names so that
policies can treat prefill and decode differently.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Optional

import torch
import torch.nn.functional as F

from layerzero.errors import LayerZeroError
from layerzero.operations.base import (
    FLOATS,
    KeyBuckets,
    Keyer,
    Operation,
    OperationContract,
    OutputSpec,
    Problem,
    bool_option,
    fmt_dims,
    grad_enabled,
    positive,
    randn,
)
from layerzero.operations.causal_mask import is_plain_causal
from layerzero.operations.custom_ops import define, unbound

ATTENTION_OPS = ("attention.causal", "attention.prefill", "attention.cross", "attention.decode")
INPUTS = ("query", "key", "value")
OPTIONS = ("attn_mask", "is_causal", "scale", "dropout_p", "sliding_window", "softcap", "sinks", "enable_gqa")


def default_is_causal(operation: str) -> bool:
    """``attention.causal`` and ``attention.prefill`` are causal unless the caller says otherwise."""
    return operation in ("attention.causal", "attention.prefill")


# ----------------------------------------------------------------------------------------------- reference
def expand_kv_heads(t: torch.Tensor, num_heads: int, head_dim_axis: int = 2) -> torch.Tensor:
    """Repeat grouped kv heads so every query head has its own (GQA -> MHA); axis is the heads axis."""
    hkv = t.shape[head_dim_axis]
    if hkv == num_heads:
        return t
    if num_heads % hkv:
        raise ValueError(
            f"key/value heads {hkv} must divide query heads {num_heads} (grouped-query attention); "
            "fix the model's num_key_value_heads"
        )
    return t.repeat_interleave(num_heads // hkv, dim=head_dim_axis)


def attention_allowed_mask(
    seq_q: int,
    seq_k: int,
    is_causal: bool,
    sliding_window: int | None,
    device: torch.device | str,
) -> torch.Tensor | None:
    """Bool (Sq, Sk) mask, True = attend, for bottom-right causal and/or a sliding window; None if neither.

    Query ``i`` sits at absolute position ``i + Sk - Sq`` (the last query sees the last key), which is the
    KV-cache convention every decoding loop relies on."""
    if not is_causal and sliding_window is None:
        return None
    i_abs = torch.arange(seq_q, device=device).unsqueeze(1) + (seq_k - seq_q)
    j = torch.arange(seq_k, device=device).unsqueeze(0)
    allowed = torch.ones(seq_q, seq_k, dtype=torch.bool, device=device)
    if is_causal:
        allowed &= j <= i_abs
    if sliding_window is not None:
        allowed &= (i_abs - j) < sliding_window
    return allowed


def reference_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Math attention in fp32 over (B, S, H, D) inputs; returns (B, Sq, H, Dv) in the query dtype.

    Rows that may attend to nothing (e.g. a padded query) return zeros rather than NaN, like the
    flash-style kernels. The contract leaves such rows unspecified (SDPA's cuDNN backend returns other
    values, measured on an H100), so callers must not read them."""
    b, sq, h, d = query.shape
    sk = key.shape[1]
    q = query.float().transpose(1, 2)
    k = expand_kv_heads(key.float(), h).transpose(1, 2)
    v = expand_kv_heads(value.float(), h).transpose(1, 2)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Sq, Sk)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    allowed = attention_allowed_mask(sq, sk, is_causal, sliding_window, query.device)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else (allowed & attn_mask)
        else:
            scores = scores + attn_mask.float()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        sink = sinks.float().reshape(1, h, 1, 1).expand(b, h, sq, 1)
        scores = torch.cat([scores, sink], dim=-1)
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    probs = torch.where(denom > 0, weights / denom.clamp_min(torch.finfo(torch.float32).tiny), weights)
    if sinks is not None:
        probs = probs[..., :sk]
    if dropout_p:
        probs = F.dropout(probs, p=dropout_p, training=True)
    out = torch.matmul(probs, v)  # (B, H, Sq, Dv)
    return out.transpose(1, 2).to(query.dtype)


# ----------------------------------------------------------------------------------------------- the operation
class Attention(Operation):
    """One of the four attention operations (they differ only in name and default causality)."""

    family = "attention"
    tensor_options = ("attn_mask", "sinks")
    tolerance_class = "attention"

    def check_inputs(self, a: Mapping[str, Any], found: list[Problem]) -> None:
        q, k, v = a["query"], a["key"], a["value"]
        before = len(found)
        for name, t in (("query", q), ("key", k), ("value", v)):
            if t.dim() != 4:
                found.append((name, tuple(t.shape), "expected rank 4 (batch, seq, heads, head_dim); Transformers' "
                              "(batch, heads, seq, head_dim) tensors need .transpose(1, 2)"))
        if len(found) > before:
            return
        if not (q.dtype == k.dtype == v.dtype):
            found.append(("key", (q.dtype, k.dtype, v.dtype), "query, key and value must share one dtype"))
        if not (q.shape[0] == k.shape[0] == v.shape[0]):
            found.append(("key", (q.shape[0], k.shape[0], v.shape[0]), "query, key and value batch sizes differ"))
        if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
            found.append(("value", tuple(v.shape), f"key {tuple(k.shape)} and value must have the same seq and "
                          "heads"))
        if q.shape[3] != k.shape[3]:
            found.append(("key", tuple(k.shape), f"head_dim {k.shape[3]} != query head_dim {q.shape[3]}"))
        if k.shape[2] == 0 or q.shape[2] % k.shape[2]:
            found.append(("key", tuple(k.shape), f"query heads {q.shape[2]} must be a multiple of key/value heads "
                          f"{k.shape[2]} (grouped-query attention)"))
        _check_mask(a.get("attn_mask"), q, k, found)
        _check_options(a, q, found)

    def selection_facts(self, inputs: Mapping[str, Any], kwargs: Mapping[str, Any], values: dict[str, Any]) -> None:
        q, k, v = inputs.get("query"), inputs.get("key"), inputs.get("value")
        if q is not None:
            b, sq, h, d = q.shape
            values.update(batch_size=b, seq_len=sq, seq_len_q=sq, num_heads=h, head_dim=d)
            values["is_contiguous"] = q.stride(-1) == 1
            values["layout"] = "bshd"
        if k is not None:
            values["seq_len_k"] = k.shape[1]
            values["num_kv_heads"] = k.shape[2]
        if v is not None:
            values["head_dim_v"] = v.shape[-1]
        values["is_causal"] = bool(kwargs.get("is_causal", default_is_causal(self.name)))
        mask = kwargs.get("attn_mask", inputs.get("attn_mask"))
        if mask is not None:
            values["attn_mask"] = "bool" if mask.dtype == torch.bool else "additive"
        values["dropout_p"] = float(kwargs.get("dropout_p", 0.0) or 0.0)
        values["sliding_window"] = kwargs.get("sliding_window")
        values["softcap"] = kwargs.get("softcap")
        values["has_sinks"] = kwargs.get("sinks", inputs.get("sinks")) is not None

    def described_facts(self, d: Mapping[str, Any]) -> dict[str, Any]:
        causal = d.get("is_causal")
        return dict(batch_size=d.get("batch"), seq_len_q=d.get("seq_q"), seq_len_k=d.get("seq_k"),
                    num_heads=d.get("heads"), num_kv_heads=d.get("kv_heads"), head_dim=d.get("head_dim"),
                    head_dim_v=d.get("head_dim_v"),
                    is_causal=default_is_causal(self.name) if causal is None else bool(causal),
                    attn_mask=d.get("attn_mask"), sliding_window=d.get("sliding_window"), softcap=d.get("softcap"),
                    has_sinks=bool(d.get("has_sinks")), dropout_p=float(d.get("dropout_p") or 0.0))

    def keyer(self, buckets: KeyBuckets) -> Keyer:
        (mb, bb), (mq, bq), (mk, bk) = buckets

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
                op, mb.get(qs[0]) or bb(qs[0]), mq.get(qs[1]) or bq(qs[1]), qs[2], qs[3],
                mk.get(ks[1]) or bk(ks[1]), ks[2], inputs["value"].shape[-1],
                q.dtype, q.device, kw.get("is_causal"), None if mask is None else mask.dtype,
                bool(kw.get("dropout_p")), kw.get("sliding_window"), kw.get("softcap"),
                sinks is not None or inputs.get("sinks") is not None,
                q.requires_grad and grad_enabled(), q.stride(-1) == 1,
            )

        return attention_key

    def expected_outputs(self, inputs: Mapping[str, Any], count: int) -> list[OutputSpec]:
        q, v = inputs["query"], inputs["value"]
        return [(tuple(q.shape[:-1]) + (v.shape[-1],), q.dtype)]

    def defined_rows(self, arguments: Mapping[str, Any]) -> torch.Tensor | None:
        """Bool (B, Sq, H, 1): query rows with at least one visible key. A fully masked row (a left-padding
        query) has no defined output — the reference returns zeros, SDPA's backends other values — so it
        must not count as a kernel's error. With sinks every row is defined (the sink takes the weight)."""
        if arguments.get("sinks") is not None:
            return None
        q, k = arguments.get("query"), arguments.get("key")
        if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() != 4:
            return None
        b, sq, h, _ = q.shape
        allowed = attention_allowed_mask(sq, k.shape[1], bool(arguments.get("is_causal")),
                                         arguments.get("sliding_window"), q.device)
        mask = arguments.get("attn_mask")
        if isinstance(mask, torch.Tensor):
            visible = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
            allowed = visible if allowed is None else visible & allowed
        if allowed is None:
            return None
        rows = allowed.any(-1)  # (Sq,) or (B|1, H|1, Sq)
        while rows.dim() < 3:
            rows = rows.unsqueeze(0)
        if bool(rows.all()):
            return None
        return rows.expand(b, h, sq).permute(0, 2, 1).unsqueeze(-1)

    def call_defaults(self) -> dict[str, Any]:
        return {"is_causal": default_is_causal(self.name)}

    def sample_inputs(self, shape: Any, device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Any], dict[str, Any]]:
        mk = randn(device, dtype)
        sk = shape.seq_k or shape.seq_q
        hkv = shape.kv_heads or shape.heads
        q = mk(shape.batch, shape.seq_q, shape.heads, shape.head_dim)
        k = mk(shape.batch, sk, hkv, shape.head_dim)
        v = mk(shape.batch, sk, hkv, shape.head_dim)
        return {"query": q, "key": k, "value": v}, {}

    def shape_label(self, shape: Any) -> str:
        sk = shape.seq_k or shape.seq_q
        return (f"{shape.operation} b{shape.batch} sq{shape.seq_q} sk{sk} h{shape.heads}/"
                f"{shape.kv_heads or shape.heads} d{shape.head_dim} {shape.dtype}")

    def describe_inputs(self, inputs: Mapping[str, Any]) -> list[str]:
        q, k = inputs.get("query"), inputs.get("key")
        return [f"q {fmt_dims(q)}" if q is not None else "", f"kv {fmt_dims(k)}" if k is not None else ""]


def _check_mask(mask: Any, q: torch.Tensor, k: torch.Tensor, found: list[Problem]) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool and mask.dtype not in FLOATS:
        found.append(("attn_mask", mask.dtype, "pass a bool mask (True = attend) or a float additive mask; "
                      "an integer 0/1 mask would be added to the scores: use mask.bool()"))
        return
    target = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    try:
        torch.broadcast_shapes(tuple(mask.shape), target)
    except RuntimeError:
        found.append(("attn_mask", tuple(mask.shape), f"not broadcastable to (batch, heads, seq_q, seq_k) "
                      f"= {target}"))


def _check_options(a: Mapping[str, Any], q: torch.Tensor, found: list[Problem]) -> None:
    bool_option(a, "is_causal", found)
    scale = a.get("scale")
    if scale is not None and not positive(scale):
        found.append(("scale", scale, "expected a positive finite float (None means 1/sqrt(head_dim))"))
    p = a.get("dropout_p", 0.0)
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= float(p) < 1.0:
        found.append(("dropout_p", p, "expected a float in [0, 1)"))
    window = a.get("sliding_window")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        found.append(("sliding_window", window, "expected a positive integer number of keys (None for no window)"))
    softcap = a.get("softcap")
    if softcap is not None and not positive(softcap):
        found.append(("softcap", softcap, "expected a positive finite float (None for no soft-capping)"))
    sinks = a.get("sinks")
    if sinks is not None and tuple(sinks.shape) != (q.shape[2],):
        found.append(("sinks", tuple(sinks.shape), f"expected one logit per query head: shape ({q.shape[2]},)"))


_GQA = {"heads": 8, "kv_heads": 4, "head_dim": 64}
_GQA_CUDA = {"heads": 32, "kv_heads": 8, "head_dim": 128}
_DEFAULT_SHAPES = {  # name -> (cpu, cuda) tuning shapes; prefill and cross run the kernels causal measures
    "attention.causal": (({"batch": 1, "seq_q": 128, **_GQA},),
                         ({"batch": 4, "seq_q": 1024, **_GQA_CUDA}, {"batch": 1, "seq_q": 4096, **_GQA_CUDA})),
    "attention.decode": (({"batch": 4, "seq_q": 1, "seq_k": 256, **_GQA},),
                         ({"batch": 8, "seq_q": 1, "seq_k": 4096, **_GQA_CUDA},)),
}


def _attention(name: str) -> Attention:
    op = Attention(OperationContract(name, INPUTS, OPTIONS), reference_attention)
    op.cpu_shapes, op.cuda_shapes = _DEFAULT_SHAPES.get(name, ((), ()))
    return op


OPERATIONS = tuple(_attention(name) for name in ATTENTION_OPS)
ATTENTION = OPERATIONS[0]  # the four share one contract: kernel adapters declare it through this one


# ----------------------------------------------------------------------------------------------- custom op
def attention_options(
    query: torch.Tensor, key: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool,
    scale: Optional[float], dropout_p: float, sliding_window: Optional[int], softcap: Optional[float],
    sinks: Optional[torch.Tensor],
) -> dict[str, Any]:
    """The dispatcher options of an attention call. Only facts that are set are passed: the selection
    context and kernel constraints treat a missing option as "not needed", which keeps kernels without
    e.g. softcap support eligible."""
    options: dict[str, Any] = {"is_causal": is_causal, "enable_gqa": key.shape[2] != query.shape[2]}
    if attn_mask is not None:  # straight-line ifs: this runs on every eager attention call
        options["attn_mask"] = attn_mask
    if scale is not None:
        options["scale"] = scale
    if dropout_p:
        options["dropout_p"] = dropout_p
    if sliding_window is not None:
        options["sliding_window"] = sliding_window
    if softcap is not None:
        options["softcap"] = softcap
    if sinks is not None:
        options["sinks"] = sinks
    return options


def _signature(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Optional[torch.Tensor],
    is_causal: bool, scale: Optional[float], dropout_p: float, sliding_window: Optional[int],
    softcap: Optional[float], sinks: Optional[torch.Tensor], operation: str, orchestrator: Optional[str],
) -> torch.Tensor:
    raise unbound("attention")


def _fake(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks, operation,
          orchestrator):
    b, sq, h, _d = query.shape
    return query.new_empty((b, sq, h, value.shape[-1]))


def _to_call(a: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The dispatcher call of the custom op. A dense mask that is exactly causal (what a traced graph builds
    where eager code would have passed none; :mod:`layerzero.operations.causal_mask`) becomes
    ``is_causal=True`` without the mask, dispatched as the ``attention.prefill`` an eager run would make."""
    query, key, mask, causal, operation = a["query"], a["key"], a["attn_mask"], a["is_causal"], a["operation"]
    if (mask is not None and not causal and a["sliding_window"] is None and operation in _MASKED_CAUSAL_OPS
            and is_plain_causal(mask, query.shape[1], key.shape[1])):
        mask, causal, operation = None, True, "attention.prefill"
    options = attention_options(query, key, mask, causal, a["scale"], a["dropout_p"], a["sliding_window"],
                                a["softcap"], a["sinks"])
    return operation, {"query": query, "key": key, "value": a["value"]}, options


_MASKED_CAUSAL_OPS = ("attention.cross", "attention.prefill")


def _reference(tensors: dict[str, Any], options: dict[str, Any]) -> Any:
    if options["dropout_p"]:
        raise LayerZeroError(
            f"backward of layerzero::attention with dropout_p={options['dropout_p']} under torch.compile "
            "cannot replay the dropout mask; set the model's attention dropout to 0 for compiled "
            "training, or train without torch.compile"
        )
    return reference_attention(
        tensors["query"], tensors["key"], tensors["value"], attn_mask=tensors["attn_mask"],
        is_causal=options["is_causal"], scale=options["scale"], sliding_window=options["sliding_window"],
        softcap=options["softcap"], sinks=tensors["sinks"],
    )


CUSTOM_OPS = (define("attention", _signature, _fake, _to_call, lambda a: (a["query"].dtype,), _reference),)
