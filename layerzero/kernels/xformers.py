"""xFormers ``memory_efficient_attention``.

xFormers takes BMHK tensors (the canonical layout). Grouped-query attention uses its 5-D BMGHK form:
query ``(B, M, G, H/G, K)`` and key/value ``(B, M, G, 1, K)`` expanded (stride 0) over the heads of a group,
so nothing is copied. Causality and windows are attention-bias objects: ``LowerTriangularFromBottomRightMask``
(bottom-right causal, the contract's meaning) and ``LowerTriangularFromBottomRightLocalAttentionMask(w)``
whose materialisation is ``triu(diagonal = Sk - Sq - w + 1)``, i.e. exactly ``i_abs - j < w``. A non-causal
window is ``LocalAttentionFromBottomRightMask(w - 1, Sk)``. Tensor biases need xFormers' alignment rules,
so arbitrary masks are left to SDPA/Flex (constraints reject them).
"""

from __future__ import annotations

from layerzero.kernels.checks import gqa_ratio_ok
from layerzero.operations.attention import ATTENTION
from layerzero.operations.base import implements
from layerzero.registry.constraints import KernelConstraints
from layerzero.registry.kernel_spec import KernelSpec

__all__ = ["kernel_specs", "xformers_attention"]


def _bias(fmha, is_causal: bool, sliding_window: int | None, sq: int, sk: int):
    ab = fmha.attn_bias
    if sliding_window is not None:
        if is_causal:
            return ab.LowerTriangularFromBottomRightLocalAttentionMask(int(sliding_window))
        return ab.LocalAttentionFromBottomRightMask(window_left=int(sliding_window) - 1, window_right=sk)
    if is_causal and sq > 1:  # one query, bottom-right aligned, sees every key
        return ab.LowerTriangularFromBottomRightMask()
    return None


@implements(ATTENTION)
def xformers_attention(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks,
        enable_gqa):
    """``xformers.ops.memory_efficient_attention`` with BMHK, or BMGHK when kv has fewer heads."""
    if attn_mask is not None:
        raise ValueError("xformers_attention: attn_mask is not supported here; use torch_sdpa_attention")
    if softcap:
        raise ValueError(f"xformers_attention: softcap={softcap} is not supported; use torch_flex_attention")
    if sinks is not None:
        raise ValueError("xformers_attention: attention sinks are not supported; use torch_flex_attention")
    from xformers.ops import fmha

    b, sq, h, d = query.shape
    sk, hkv = key.shape[1], key.shape[2]
    bias = _bias(fmha, bool(is_causal), sliding_window, sq, sk)
    if hkv == h:
        return fmha.memory_efficient_attention(query, key, value, attn_bias=bias, p=float(dropout_p), scale=scale)
    if h % hkv:
        raise ValueError(f"xformers_attention: num_heads {h} not divisible by num_kv_heads {hkv}")
    g = h // hkv
    q5 = query.reshape(b, sq, hkv, g, d)
    k5 = key.unsqueeze(3).expand(b, sk, hkv, g, d)
    v5 = value.unsqueeze(3).expand(b, sk, hkv, g, value.shape[-1])
    out = fmha.memory_efficient_attention(q5, k5, v5, attn_bias=bias, p=float(dropout_p), scale=scale)
    return out.reshape(b, sq, h, value.shape[-1])


XFORMERS_CONSTRAINTS = KernelConstraints(
    platforms=frozenset({"cuda"}),
    dtypes=frozenset({"float16", "bfloat16", "float32"}),
    max_head_dim=256,
    supports_bool_mask=False,
    supports_additive_mask=False,
    supports_sliding_window=True,
    custom=(gqa_ratio_ok,),
)


def kernel_specs() -> list[KernelSpec]:
    return [
        KernelSpec(
            "xformers_attention", ("attention.*",), "xformers", xformers_attention,
            XFORMERS_CONSTRAINTS, 50, aliases=("xformers_memory_efficient",),
            description="xFormers memory_efficient_attention (cutlass/flash dispatch inside xFormers); "
                        "not measured here, ranked with SDPA mem-efficient, its torch port",
        )
    ]
