"""The ``"layerzero"`` attention implementation for Transformers 5.x.

Importing this module registers, at class level (so every model file sees it):

* ``AttentionInterface.register("layerzero", layerzero_attention_forward)``: the attention function;
* ``AttentionMaskInterface.register("layerzero", sdpa_mask)``: the mask builder. Without it Transformers
  treats the name as a mask-less backend and passes ``attention_mask=None`` even with padding.

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
from layerzero_hf.model_orchestrators import ORCHESTRATOR_ATTR, call_site_for

ATTN_IMPLEMENTATION = "layerzero"

__all__ = [
    "ATTN_IMPLEMENTATION",
    "ORCHESTRATOR_ATTR",
    "eager_attention_with_weights",
    "is_registered",
    "layerzero_attention_forward",
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


# ------------------------------------------------------------------------------------------ registration
def register() -> None:
    """Register the attention function and its mask builder under ``"layerzero"`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, layerzero_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def is_registered() -> bool:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return (
        AttentionInterface._global_mapping.get(ATTN_IMPLEMENTATION) is layerzero_attention_forward
        and ATTN_IMPLEMENTATION in AttentionMaskInterface._global_mapping
    )


register()
