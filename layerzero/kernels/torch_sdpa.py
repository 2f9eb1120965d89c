"""Attention on ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).

Two flavours: ``torch_sdpa_attention`` lets torch choose its backend (a strong generic default: on an H100
it already picks cuDNN for many HF shapes), and one kernel per SDPA backend pinned with
``torch.nn.attention.sdpa_kernel`` so selection and policies can name cuDNN, flash, mem-efficient or math
explicitly, each with its real limits (see ``catalog.py``).

The adapter turns the canonical (B, S, H, D) tensors into SDPA's (B, H, S, D) with transpose views (no
copies) and maps the contract onto SDPA's narrower one:
- SDPA's ``is_causal`` is top-left aligned; the contract's is bottom-right. With ``Sq == Sk`` they agree,
  with ``Sq == 1`` bottom-right causal means "attend to everything", otherwise an explicit mask is built.
- ``sliding_window`` becomes part of an explicit mask; SDPA forbids ``attn_mask`` with ``is_causal`` so
  a caller mask plus causality is merged into one mask too.
- ``softcap`` and ``sinks`` cannot be expressed in SDPA (constraints reject them).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from layerzero.kernels.reference import attention_allowed_mask
from layerzero.operations.attention import ATTENTION
from layerzero.operations.base import implements

__all__ = [
    "sdpa_inputs",
    "structural_mask",
    "torch_sdpa_attention",
    "torch_sdpa_cudnn_attention",
    "torch_sdpa_efficient_attention",
    "torch_sdpa_flash_attention",
    "torch_sdpa_math_attention",
]


@lru_cache(maxsize=128)
def structural_mask(sq: int, sk: int, is_causal: bool, window: int | None, device: str) -> torch.Tensor | None:
    """Cached bool (Sq, Sk) mask: building it per call would allocate on every decode step."""
    return attention_allowed_mask(sq, sk, is_causal, window, device)


def sdpa_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    sliding_window: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """(q, k, v) as (B, H, S, D) views plus the mask / is_causal pair SDPA needs for the contract."""
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    sq, sk = query.shape[1], key.shape[1]
    causal = bool(is_causal) and sq > 1  # one query, bottom-right aligned: it sees every key
    mask = attn_mask
    if mask is not None and mask.dtype != torch.bool and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)
    if sliding_window is not None or (causal and (sq != sk or mask is not None)):
        allowed = structural_mask(sq, sk, causal, sliding_window, str(query.device))
        if allowed is not None:
            if mask is None:
                mask = allowed
            elif mask.dtype == torch.bool:
                mask = mask & allowed
            else:
                mask = torch.where(allowed, mask, torch.tensor(float("-inf"), dtype=mask.dtype, device=mask.device))
        causal = False
    return q, k, v, mask, causal


def _run(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
    dropout_p: float,
    sliding_window: int | None,
    softcap: float | None,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    if softcap:
        raise ValueError(
            f"softcap={softcap} cannot be expressed in scaled_dot_product_attention; "
            "use torch_flex_attention, flash_attn_v2_attention or reference_attention"
        )
    if sinks is not None:
        raise ValueError("attention sinks (s_aux) are not supported by SDPA; use reference_attention")
    q, k, v, mask, causal = sdpa_inputs(query, key, value, attn_mask, is_causal, sliding_window)
    gqa = q.shape[1] != k.shape[1]
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=gqa
    )
    return out.transpose(1, 2)


@implements(ATTENTION)
def torch_sdpa_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks,
        enable_gqa):
    """SDPA with torch's own backend choice."""
    return _run(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks)


def _pinned(backend_name: str):
    @implements(ATTENTION)
    def kernel(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks, enable_gqa):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, backend_name)):
            return _run(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks)

    kernel.__name__ = f"torch_sdpa_{backend_name.lower()}"
    kernel.__doc__ = f"SDPA pinned to the {backend_name} backend (raises if it cannot run the call)."
    return kernel


torch_sdpa_flash_attention = _pinned("FLASH_ATTENTION")
torch_sdpa_efficient_attention = _pinned("EFFICIENT_ATTENTION")
torch_sdpa_cudnn_attention = _pinned("CUDNN_ATTENTION")
torch_sdpa_math_attention = _pinned("MATH")
