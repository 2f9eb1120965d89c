"""FlashAttention 2 (``flash_attn``) and FlashAttention 3 (``flash_attn_interface``, Hopper) kernels.

The canonical (B, S, H, D) layout *is* flash-attn's, so the adapters pass tensors straight through. What
the contract maps onto (from flash-attn's own docstrings, flash_attn_interface.py):
- ``causal=True`` is bottom-right aligned since 2.1, exactly the contract's meaning.
- ``window_size=(left, right)``: query i sees keys in ``[i + Sk - Sq - left, i + Sk - Sq + right]``; the
  contract's ``i_abs - j < window`` is ``left = window - 1``, ``right = 0`` when causal, unbounded otherwise.
- ``softcap`` (2.6+), ``dropout_p`` (FA2 only), GQA/MQA natively (Hkv divides H).
- No arbitrary mask and no sinks: constraints reject them. Head dims up to 256 (FA2 pads to a multiple
  of 8 itself); fp16/bf16; FA2 needs sm80+, FA3 is built for sm90 (Hopper).
Decode (``Sq == 1``) goes through ``flash_attn_with_kvcache``, whose split-KV scheduling is built for it.
"""

from __future__ import annotations

from layerzero.kernels.checks import gqa_ratio_ok
from layerzero.operations.attention import ATTENTION
from layerzero.operations.base import implements
from layerzero.registry.constraints import KernelConstraints
from layerzero.registry.kernel_spec import KernelSpec

__all__ = ["flash_attn_v2_attention", "flash_attn_v3_attention", "kernel_specs"]

_HALF = frozenset({"float16", "bfloat16"})


def _window(sliding_window: int | None, causal: bool, seq_k: int) -> tuple[int, int]:
    if sliding_window is None:
        return (-1, -1)
    return (max(int(sliding_window) - 1, 0), 0 if causal else max(seq_k, 1))


def _reject(attn_mask, sinks, kernel: str) -> None:
    if attn_mask is not None:
        raise ValueError(
            f"{kernel}: attn_mask is not supported (flash-attn takes no arbitrary mask); "
            "use torch_sdpa_attention or torch_flex_attention for masked calls"
        )
    if sinks is not None:
        raise ValueError(f"{kernel}: attention sinks are not supported; use torch_flex_attention")


@implements(ATTENTION)
def flash_attn_v2_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks,
        enable_gqa):
    """FlashAttention 2: ``flash_attn_func``, or ``flash_attn_with_kvcache`` for one-token decode."""
    _reject(attn_mask, sinks, "flash_attn_v2_attention")
    import flash_attn

    causal = bool(is_causal)
    window = _window(sliding_window, causal, key.shape[1])
    cap = float(softcap) if softcap else 0.0
    if (
        query.shape[1] == 1
        and not dropout_p
        and query.shape[-1] % 8 == 0  # flash_attn_with_kvcache does not pad the head dim itself
        and hasattr(flash_attn, "flash_attn_with_kvcache")
    ):
        # One query token: bottom-right causal sees every key; split-KV decode kernel.
        return flash_attn.flash_attn_with_kvcache(
            query, key, value, softmax_scale=scale, causal=causal, window_size=window, softcap=cap
        )
    return flash_attn.flash_attn_func(
        query, key, value, dropout_p=float(dropout_p), softmax_scale=scale, causal=causal,
        window_size=window, softcap=cap,
    )


@implements(ATTENTION)
def flash_attn_v3_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks,
        enable_gqa):
    """FlashAttention 3 (Hopper): ``flash_attn_interface.flash_attn_func``; no dropout."""
    _reject(attn_mask, sinks, "flash_attn_v3_attention")
    if dropout_p:
        raise ValueError(f"flash_attn_v3_attention: dropout_p={dropout_p} is not supported by FlashAttention 3")
    import flash_attn_interface

    causal = bool(is_causal)
    out = flash_attn_interface.flash_attn_func(
        query, key, value, softmax_scale=scale, causal=causal,
        window_size=_window(sliding_window, causal, key.shape[1]), softcap=float(softcap) if softcap else 0.0,
    )
    # Early FA3 releases return (out, softmax_lse); later ones return out unless asked for more.
    return out[0] if isinstance(out, tuple) else out


def _fa2_training_head_dim(ctx) -> str | None:
    """FA2 backward on sm86/sm89 fails for head_dim in (192, 256]"""
    cc = ctx.compute_capability
    if ctx.requires_grad and cc is not None and cc[0] == 8 and cc[1] in (6, 9) and (ctx.head_dim or 0) > 192:
        return f"training with head_dim {ctx.head_dim} > 192 not supported by FlashAttention 2 on sm{cc[0]}{cc[1]}"
    return None


FA2_CONSTRAINTS = KernelConstraints(
    platforms=frozenset({"cuda"}),
    dtypes=_HALF,
    min_compute_capability=(8, 0),
    max_head_dim=256,
    supports_bool_mask=False,
    supports_additive_mask=False,
    supports_softcap=True,
    supports_sliding_window=True,
    supports_different_v_dim=False,
    custom=(gqa_ratio_ok, _fa2_training_head_dim),
)

FA3_CONSTRAINTS = KernelConstraints(
    platforms=frozenset({"cuda"}),
    dtypes=_HALF,
    min_compute_capability=(9, 0),
    max_compute_capability=(9, 0),
    max_head_dim=256,
    head_dim_multiple=8,
    supports_bool_mask=False,
    supports_additive_mask=False,
    supports_dropout=False,
    supports_softcap=True,
    supports_sliding_window=True,
    supports_different_v_dim=False,
    custom=(gqa_ratio_ok,),
)


def kernel_specs() -> list[KernelSpec]:
    return [
        KernelSpec(
            "flash_attn_v2_attention", ("attention.*",), "flash_attn", flash_attn_v2_attention,
            FA2_CONSTRAINTS, 80, aliases=("flash_attention_v2",),
            description="FlashAttention 2 (flash_attn_func / flash_attn_with_kvcache): 250–340 TFLOP/s class "
                        "(SDPA's FA2 kernel measured), bottom-right causal, window, softcap",
        ),
        KernelSpec(
            "flash_attn_v3_attention", ("attention.*",), "flash_attn_3", flash_attn_v3_attention,
            FA3_CONSTRAINTS, 84, aliases=("flash_attention_v3",),
            description="FlashAttention 3 for Hopper (not measured here: ranked between cuDNN and FA2)",
        ),
    ]
