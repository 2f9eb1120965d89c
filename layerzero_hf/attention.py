"""The ``"layerzero"`` attention implementation for Transformers 5.x.

Importing this module registers, at class level (so every model file sees it):

* ``AttentionInterface.register("layerzero", layerzero_attention_forward)``: the attention function;
* ``AttentionMaskInterface.register("layerzero", layerzero_mask)``: the mask builder, Transformers'
  ``sdpa_mask`` with one difference (:func:`layerzero_mask`): under ``torch.compile`` a call without padding
  still gets ``None`` (plain causal) rather than a materialized ``(B, 1, S, S)`` mask. Without a registered
  builder Transformers treats the name as a mask-less backend and passes ``attention_mask=None`` even with
  padding.

The name avoids ``flash``, ``sdpa`` and ``flex_attention`` (Transformers special-cases those substrings).

After the import, ``from_pretrained(..., attn_implementation="layerzero")``,
``Config(attn_implementation="layerzero")`` and ``model.set_attn_implementation("layerzero")`` all work.
Every attention call goes through :func:`layerzero.ops.attention`, so the dispatcher picks the kernel per
call. The orchestrator is the model's own: :func:`layerzero_hf.model_orchestrators.orchestrator_for` returns the name
stored on the attention module (``_layerzero_orchestrator: str``, set by patching, or on the first eager
call from the model's config, rules and A/B arm); under compile an unset module uses the global one.

Mask semantics of ``sdpa_mask`` (bool ``(B, 1, Sq, Sk)``, True = attend, or ``None``) are translated to the
canonical operation contract here, without reading tensor data (dynamo-traceable, no graph breaks):

* a mask is given: it already encodes causality, padding and the sliding window, so it is passed as is
  with ``is_causal=False`` and no ``sliding_window``;
* ``None`` with ``Sq == 1``: attend to every key;
* ``None`` with ``Sq == Sk``: causal (``is_causal`` kwarg if given, else ``module.is_causal``);
* ``None`` with ``Sk > Sq > 1``: only a prefill into an empty StaticCache, whose keys are padded to
  ``max_cache_len``; the right mask is upper-left causal, which equals plain causal over the first ``Sq``
  keys, so keys/values are sliced to ``[:Sq]`` (views) and ``Sq == Sk`` again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.integrations.sdpa_attention import create_position_bias_mask

from layerzero import ops
from layerzero.operations.shared import shared
from layerzero.operations.tracing import is_compile_tracing
from layerzero_hf.model_orchestrators import ORCHESTRATOR_ATTR, call_site_for

ATTN_IMPLEMENTATION = "layerzero"

__all__ = [
    "ATTN_IMPLEMENTATION",
    "ORCHESTRATOR_ATTR",
    "eager_attention_with_weights",
    "is_registered",
    "layerzero_attention_forward",
    "layerzero_mask",
    "register",
]


def layerzero_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Transformers attention function: query ``(B, Hq, Sq, D)``, key/value ``(B, Hkv, Sk, D)`` (after
    RoPE and the cache update, GQA not expanded) -> ``(attn_output (B, Sq, Hq, Dv) contiguous, weights)``.

    Weights are only computed (on the eager reference path) when ``output_attentions`` is requested."""
    if not module.training:
        dropout = 0.0
    position_bias = kwargs.get("position_bias")
    if kwargs.get("output_attentions", False):
        return eager_attention_with_weights(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            sliding_window=sliding_window, softcap=softcap, s_aux=s_aux, is_causal=is_causal,
            position_bias=position_bias,
        )

    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is not None:
        causal = False
        window = None
    else:
        causal = (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and q_len > 1
        if causal and kv_len > q_len:
            # Empty StaticCache prefill: keys past Sq are unused slots (upper-left causal == slice).
            key = key[:, :, :q_len]
            value = value[:, :, :q_len]
            if position_bias is not None:
                position_bias = position_bias[..., :q_len]
            kv_len = q_len
        # Transformers returns None for a sliding layer only while the window cannot bite; dropping it then
        # keeps kernels without sliding-window support eligible.
        window = sliding_window if sliding_window is not None and kv_len > sliding_window else None
    if position_bias is not None:
        # T5-style relative bias: one additive float mask carrying bias, padding and causality (as HF sdpa).
        attention_mask = create_position_bias_mask(position_bias, attention_mask, causal, query, key)
        causal = False

    out = ops.attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        attn_mask=attention_mask,
        is_causal=causal,
        scale=scaling,
        dropout_p=dropout,
        sliding_window=window,
        softcap=softcap,
        sinks=s_aux,
        orchestrator=call_site_for(module),
    )
    return out.contiguous(), None


def eager_attention_with_weights(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Math attention in Transformers' layout that also returns the probabilities (``output_attentions``).

    Follows the models' own eager code: scores in the input dtype, softcap before the mask, softmax in
    fp32, sinks as an extra column dropped after the softmax. No kernel returns weights, so this path
    bypasses dispatch."""
    b, h, q_len, d = query.shape
    kv_len = key.shape[2]
    groups = h // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = d**-0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias
    allowed = attention_mask
    if allowed is None:
        causal = (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and q_len > 1
        allowed = _implicit_allowed(q_len, kv_len, causal, sliding_window, query.device)
    if allowed is not None:
        if allowed.dtype == torch.bool:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        else:
            scores = scores + allowed
    if s_aux is not None:
        sinks = s_aux.to(scores.dtype).reshape(1, h, 1, 1).expand(b, h, q_len, 1)
        scores = torch.cat([scores, sinks], dim=-1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if s_aux is not None:
        probs = probs[..., :kv_len]
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def _implicit_allowed(
    q_len: int, kv_len: int, causal: bool, sliding_window: int | None, device: torch.device
) -> torch.Tensor | None:
    """The mask a ``None`` from ``sdpa_mask`` stands for (see the module docstring), as bool (Sq, Sk)."""
    if not causal:
        return None
    i = torch.arange(q_len, device=device).unsqueeze(1)
    j = torch.arange(kv_len, device=device).unsqueeze(0)
    if kv_len <= q_len:  # plain causal (kv_len == q_len)
        i = i + (kv_len - q_len)
    allowed = j <= i  # kv_len > q_len: empty StaticCache prefill, upper-left
    if sliding_window is not None:
        allowed = allowed & (i - j < sliding_window)
    return allowed


# ------------------------------------------------------------------------------------------ mask builder
def layerzero_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """Transformers' ``sdpa_mask``, with two differences. Under ``torch.compile`` a call with no padding mask
    returns ``None`` where eager Transformers would: one query token, as many keys as queries, or an empty
    cache, with no sliding window or chunk that can bite. And a window or chunk exactly as long as the keys
    (from position 0) counts as one that cannot bite, eagerly too (:func:`_window_cannot_bite`), where
    Transformers builds a mask that is exactly causal.

    Why: ``sdpa_mask`` never returns ``None`` while tracing (its guard against ``torch.export`` baking
    ``is_causal=True`` into a graph later called with a cache), so a compiled model without padding hands
    every attention call a materialized ``(B, 1, Sq, Sk)`` mask. With a mask, the kernels cannot skip the
    masked half of a causal prefill and flash-style kernels are not eligible at all. The decision here
    reads only sizes and offsets, never tensor data: under ``torch.compile`` it becomes a guard (a call
    with other sizes recompiles), not a graph break. ``torch.export`` and ``torch.jit`` tracing keep
    ``sdpa_mask``'s materialized mask, and so does any call with a padding mask, a packed sequence or a
    custom mask function (Transformers turns ``allow_is_causal_skip`` off for those).

    One case this cannot reach: a compiled forward with ``use_cache=False`` and no ``attention_mask``.
    Transformers then derives a packed-sequence mask from the position ids, and whether they are packed is
    data it can only read eagerly; while tracing it keeps the packed-sequence mask function and turns the
    skip off, so the mask is materialized for every variant (HF sdpa too). Measured on an H200 at the
    Llama-3.2-1B shape, 1x4096: the same cuDNN kernel takes 8.6 ms with that mask and 2.9 ms causal
    (``benchmarks/results/2026-12-02-prefill-profile-compiled-h200-1f0a941.md``). Compiled forwards with a
    cache (``generate``, a compiled prefill into a ``DynamicCache``) get the skip. A mask that is
    materialized under compile goes through :func:`~layerzero.operations.shared.shared`, so
    Inductor builds it once per forward rather than once per layer, and the attention op's check that finds
    it plain causal runs once."""
    from transformers.masking_utils import sdpa_mask

    if not args and _causal_skip_under_compile(**kwargs):
        return None
    if not args and _window_cannot_bite(**kwargs):
        kwargs = {**kwargs, "local_size": None}  # sdpa_mask's skip rules then decide as for full attention
    mask = sdpa_mask(*args, **kwargs)
    return mask if mask is None else shared(mask)


def _causal_skip_under_compile(
    q_length: Any = None,
    kv_length: Any = None,
    q_offset: Any = 0,
    kv_offset: Any = 0,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    **_: Any,
) -> bool:
    """Eager Transformers' rule for returning ``None`` (no padding mask case), for a compiling trace."""
    if not (allow_is_causal_skip and attention_mask is None and q_length is not None and kv_length is not None):
        return False
    if not is_compile_tracing():
        return False  # eager: sdpa_mask decides itself; export: keep the mask (see the docstring)
    if isinstance(q_offset, torch.Tensor) or isinstance(kv_offset, torch.Tensor) or kv_offset != 0:
        return False  # a StaticCache's offset is a tensor: its value is data, not a size
    if local_size is not None and not _window_cannot_bite(kv_length, kv_offset, local_size):
        return False  # the window (or chunk) removes keys: only a mask says which
    # one query, or as many keys as queries: is_causal suffices; an empty cache (offset 0) whose extra keys
    # are unused StaticCache slots: upper-left causal (the attention function slices them off)
    return q_length == 1 or q_length == kv_length or q_offset == 0


def _window_cannot_bite(
    kv_length: Any = None,
    kv_offset: Any = 0,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    **_: Any,
) -> bool:
    """A causal call's sliding window (or attention chunk) of ``local_size`` keys removes none of them: at most
    ``local_size`` keys counted from position 0, so every query's distance to its first key is below the
    window (and every key lies in the first chunk).

    Why: Transformers materializes a mask whenever ``kv_length >= local_size``, so a prompt exactly as long
    as the window (Gemma-2 and Mistral at 4096 tokens) gets a dense mask on every sliding layer, although
    that mask is exactly causal; with the mask, kernels cannot skip the masked half of the prefill, and a
    soft-capped layer runs FlexAttention over the dense mask instead of its causal kernel."""
    return (allow_is_causal_skip and local_size is not None and isinstance(kv_length, int)
            and not isinstance(kv_offset, torch.Tensor) and kv_offset == 0 and kv_length <= local_size)


# ------------------------------------------------------------------------------------------ registration
def register() -> None:
    """Register the attention function and its mask builder under ``"layerzero"`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, layerzero_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, layerzero_mask)


def is_registered() -> bool:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return (
        AttentionInterface._global_mapping.get(ATTN_IMPLEMENTATION) is layerzero_attention_forward
        and AttentionMaskInterface._global_mapping.get(ATTN_IMPLEMENTATION) is layerzero_mask
    )


register()
