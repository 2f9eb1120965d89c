"""Eager attention in a handful of ATen calls: every contract feature, no compile, no repeated K/V.

Why it exists: soft-capped (Gemma-2) and sink (gpt-oss) attention cannot run on SDPA, and on the CPU the
other kernels that can are poor choices there: FlexAttention without ``torch.compile`` runs a vmap'd math
path (measured on this project's 2-core CI machine, torch 2.13, fp32: 3.05 ms per decode call at 1 query x
520 keys, 4 heads, head_dim 16, vs 0.24 ms for the fp32 reference; 826 ms vs 34 ms for a 512-token bf16
prefill at head_dim 256), and the fp32 reference upcasts and repeats the whole KV cache on every call. At the
Gemma2-2B decode shape in bf16 both take 3.0x and 6.5x this kernel's time
(``benchmarks/decode_softcap.py --device cpu``). On a
GPU it is a candidate for short queries, where a decode step is bound by host time per launch rather than by
the device.

How: the query heads that share a key/value head are folded into the query rows, so one batched matmul per
KV head serves the whole group and K/V are never repeated (for one query token every reshape is a view).
Scores are formed in the input dtype, as HF's eager attention does, then soft-capped, masked and
soft-maxed in fp32; the probabilities go back to the input dtype for the value matmul. Masked scores use
the most negative finite fp32 value rather than ``-inf``, so a row that may attend to nothing (a left-pad
query) gives finite output instead of NaN that would leak into later layers. The contract leaves such rows
unspecified. With one query token a sliding window is a slice of K/V and the causal mask is empty, so the
common decode step builds no mask at all.
"""

from __future__ import annotations

import math

import torch

from layerzero.kernels.torch_sdpa import structural_mask
from layerzero.operations.attention import ATTENTION
from layerzero.operations.base import implements

__all__ = ["torch_eager_attention"]

_MASKED = torch.finfo(torch.float32).min


def _grouped_mask(mask: torch.Tensor, hkv: int, group: int) -> torch.Tensor:
    """The caller's mask, broadcastable to (B, H, Sq, Sk), as (B', Hkv or 1, G or 1, Sq', Sk) views."""
    if mask.dim() < 4:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    b, h, sq, sk = mask.shape
    if h == 1:
        return mask.unsqueeze(2)
    return mask.reshape(b, hkv, group, sq, sk)


@implements(ATTENTION)
def torch_eager_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap,
                          sinks, enable_gqa):
    """(B, Sq, H, D) attention with softcap, sliding window, sinks, bool/additive masks and GQA; see the
    module docstring for the precision and the folding of query groups."""
    if dropout_p:
        raise ValueError(f"dropout_p={dropout_p} is not supported (inference kernel); pass dropout_p=0.0")
    b, sq, h, d = query.shape
    sk, hkv = key.shape[1], key.shape[2]
    group = h // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    mask = attn_mask
    if sq == 1:
        is_causal = False  # bottom-right aligned: the one query sees every key
        if sliding_window is not None and sk > sliding_window:  # the window is the last keys: a slice
            key, value = key[:, sk - sliding_window:], value[:, sk - sliding_window:]
            if mask is not None and mask.shape[-1] != 1:
                mask = mask[..., sk - sliding_window:]
            sk = sliding_window
        sliding_window = None
    # (B, Sq, Hkv, G, D) -> (B, Hkv, G*Sq, D): the group's queries share their KV head's matmul
    q = query.reshape(b, sq, hkv, group, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, group * sq, d)
    scores = torch.matmul(q, key.transpose(1, 2).transpose(-1, -2)).float()  # (B, Hkv, G*Sq, Sk)
    # in place only where autograd keeps no copy: neither matmul's nor .float()'s backward reads its output
    if softcap:
        scores = torch.tanh(scores.mul_(scale / softcap)) * softcap
    else:
        scores.mul_(scale)
    scores = scores.view(b, hkv, group, sq, sk)
    if is_causal or sliding_window is not None:
        allowed = structural_mask(sq, sk, bool(is_causal), sliding_window, str(query.device))
        scores = scores.masked_fill(~allowed, _MASKED)
    if mask is not None:
        mask = _grouped_mask(mask, hkv, group)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, _MASKED)
        else:
            scores = scores + mask
    if sinks is not None:
        sink = sinks.float().reshape(1, hkv, group, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :sk]
    else:
        probs = torch.softmax(scores, dim=-1)
    probs = probs.to(value.dtype).reshape(b, hkv, group * sq, sk)
    out = torch.matmul(probs, value.transpose(1, 2))  # (B, Hkv, G*Sq, Dv)
    dv = out.shape[-1]
    return out.view(b, hkv, group, sq, dv).permute(0, 3, 1, 2, 4).reshape(b, sq, h, dv)
