"""Catalogue entries for LayerZero's own Triton kernels.

This module must not import triton: the catalogue lists every kernel without touching optional backends,
and the kernels themselves are imported lazily through their ``impl`` paths on first call.

Why these constraints:

- ``platforms``: CUDA always; CPU only under the Triton interpreter (``TRITON_INTERPRET=1`` set before the
  kernel module is first imported, because ``@triton.jit`` decides at decoration time whether it builds an
  interpreted function). The CPU path exists for conformance tests, not speed.
- ``supports_grad=False``: the kernels are forward-only (inference); a training call with
  ``requires_grad`` inputs must go to a kernel with a backward.
- ``supports_compile=True``: the wrappers only read shapes/strides and launch user-defined Triton kernels,
  which dynamo traces as ``triton_kernel_wrapper_functional`` (checked by ``tests/kernels`` GPU tests with
  ``torch.compile(fullgraph=True)``).
- Priorities (higher wins among kernels that pass every check, see README "Kernel table"): set from the
  H100 bandwidth benchmark ``benchmarks/triton_bandwidth.py`` (results in ``benchmarks/results/``); the
  reasoning for each is next to the constants below.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from layerzero.kernels.checks import gqa_ratio_ok
from layerzero.kernels.triton.attention_args import offsets_fit_int32
from layerzero.registry.constraints import KernelConstraints
from layerzero.registry.kernel_spec import KernelSpec

if TYPE_CHECKING:
    from layerzero.context.call_context import SelectionContext

_DTYPES = frozenset({"float16", "bfloat16", "float32"})
_PLATFORMS = frozenset({"cuda", "cpu"})

# Priorities, grounded in benchmarks/results/triton_bandwidth_h100.md and triton_tuning_h100.json (H100,
# bf16, device time with the host queued ahead; catalogue peers: torch_rms_norm 80, liger_* 60-70,
# torch_rope / torch_swiglu / torch_geglu 50):
# - rms_norm: device time 1.0-3.4x faster than F.rms_norm at every measured shape (2.8-3.0 TB/s, F.rms_norm
#   0.8-2.5) and level with Liger / torch.compile (+-2%). But a Python Triton launch costs ~50 us of host
#   time against ~15 us for F.rms_norm, so eager calls with few rows (decode) are host-bound and F.rms_norm
#   wins them on wall clock. Hence 75: above Liger (same device time, heavier autograd launch), below
#   F.rms_norm by default; the policy should prefer triton_rms_norm for large row counts
#   (``batch_size_gte: 1024``), where it is measured faster.
# - rope: ~10x HF eager (one launch for q and k instead of ~10), within 1-4% of Liger's device time at
#   prefill (Liger writes in place into its contiguous copy), level at decode, and it supports interleaved
#   rotary and never mutates inputs: 75, above liger_rope (70).
# - swiglu: 3.04 TB/s after tuning, level with Liger (3.02) and torch.compile (3.04), 1.7x eager: 65, above
#   Liger (60). Small activations are launch-bound; the default policy already routes them to torch.
# - geglu: 2.94 TB/s vs Liger 2.50 and eager 1.82: 65.
# - decode_attention (one query per sequence; catalogue peers: torch_sdpa_attention 90, pinned cuDNN 85,
#   FA3 84, FA2 80, torch_flex_attention 60, flashinfer_decode 60): 70. It exists for what SDPA cannot
#   run — soft-capping (Gemma-2), sinks — where selection used to fall to FlexAttention, which recompiles
#   for every new key length at decode (a Gemma2-2B-shaped model decoded at 0.23x HF sdpa on an H200), so
#   it must rank above Flex; it compiles once for every key length. Plain decode stays with SDPA (90:
#   measured within 3% of FlashInfer decode on the H100, and no Triton launch overhead), and the
#   flash-attn builds (80/84), tuned CUDA kernels with their own split-KV decode, keep precedence when
#   installed. Above flashinfer_decode (60), which JIT-builds a module per configuration and takes no mask.
# - prefill_attention (many queries; same peers): 70. It exists for the soft-capped prefill SDPA cannot run
#   (Gemma-2), where the next kernel was FlexAttention: on an H200, bf16, causal, softcap 50, it takes
#   1.33-1.53x the time of SDPA *without* the softcap at head_dim 128 and 1.48-1.67x at 256, where Flex takes
#   2.94-3.32x and 2.32-2.53x (``benchmarks/results/2026-12-03-triton-prefill-attention-h200-2fa460a.md``): above
#   Flex (60). Plain causal prefill stays with SDPA (90; this kernel 1.19-1.46x its time there) and FlashInfer's
#   prefill (80; 1.17-1.23x SDPA with the softcap, measured the same day) keeps precedence where installed.
#   Measured cost tables order them per bucket where they hold rows for all of them.
RMS_NORM_PRIORITY = 75
ROPE_PRIORITY = 75
SWIGLU_PRIORITY = 65
GEGLU_PRIORITY = 65
DECODE_ATTENTION_PRIORITY = 70
PREFILL_ATTENTION_PRIORITY = 70
# Register tiles of the attention kernels hold a whole head (padded to a power of two).
DECODE_MAX_HEAD_DIM = 256
PREFILL_MAX_HEAD_DIM = 256

def interpreter_enabled() -> bool:
    """True when Triton kernels would be built for the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def cpu_needs_interpreter(ctx: "SelectionContext") -> str | None:
    """triton on cpu needs TRITON_INTERPRET=1"""
    if ctx.platform == "cpu" and not interpreter_enabled():
        return "triton on cpu needs TRITON_INTERPRET=1 (set it before the first Triton kernel is imported)"
    return None


def _rope_head_dim(ctx: "SelectionContext") -> str | None:
    """rotary_dim must be even and <= head_dim"""
    if ctx.rotary_dim is None:
        return None
    if ctx.rotary_dim % 2:
        return f"rotary_dim {ctx.rotary_dim} is odd (rotation works on pairs; pass an even cos/sin width)"
    if ctx.head_dim is not None and ctx.rotary_dim > ctx.head_dim:
        return f"rotary_dim {ctx.rotary_dim} > head_dim {ctx.head_dim}"
    return None


def _decode_only(ctx: "SelectionContext") -> str | None:
    """seq_len_q == 1"""
    if ctx.seq_len_q is not None and ctx.seq_len_q != 1:
        return f"seq_len_q {ctx.seq_len_q} != 1 (triton_decode_attention is decode-only)"
    return None


def _prefill_only(ctx: "SelectionContext") -> str | None:
    """seq_len_q > 1"""
    if ctx.seq_len_q == 1:
        return "seq_len_q 1 (decode): triton_decode_attention serves it"
    return None


def triton_kernels() -> list[KernelSpec]:
    """The Triton kernels LayerZero ships (rms_norm, rope, swiglu, geglu, decode and prefill attention)."""
    base = dict(platforms=_PLATFORMS, dtypes=_DTYPES, supports_grad=False, supports_compile=True)
    return [
        KernelSpec(
            "triton_rms_norm",
            "rms_norm",
            backend="triton",
            impl="layerzero.kernels.triton.rms_norm:rms_norm",
            constraints=KernelConstraints(
                **base,
                casting_modes=frozenset({"llama", "gemma", "none"}),
                supports_norm_offset=True,
                supports_fused_residual=True,
                max_hidden_size=1 << 20,
                custom=(cpu_needs_interpreter,),
            ),
            priority=RMS_NORM_PRIORITY,
            tags=frozenset({"triton", "fused"}),
            description="LayerZero Triton RMSNorm: fp32 accumulation, llama/gemma/none casting, weight "
            "offset, fused residual add (one pass), any leading shape and row stride; forward only.",
        ),
        KernelSpec(
            "triton_rope",
            "rope",
            backend="triton",
            impl="layerzero.kernels.triton.rope:rope",
            constraints=KernelConstraints(
                **base,
                layouts=frozenset({"bhsd", "bshd"}),
                supports_partial_rotary=True,
                supports_interleaved=True,
                supports_gqa=True,
                max_head_dim=1024,
                custom=(cpu_needs_interpreter, _rope_head_dim),
            ),
            priority=ROPE_PRIORITY,
            tags=frozenset({"triton", "fused"}),
            description="LayerZero Triton RoPE: q and k rotated in one launch (GQA), rotate_half or "
            "interleaved pairs, partial rotary, either layout, strided inputs; new outputs; forward only.",
        ),
        KernelSpec(
            "triton_swiglu",
            "swiglu",
            backend="triton",
            impl="layerzero.kernels.triton.swiglu:swiglu",
            constraints=KernelConstraints(**base, custom=(cpu_needs_interpreter,)),
            priority=SWIGLU_PRIORITY,
            tags=frozenset({"triton", "fused"}),
            description="LayerZero Triton SwiGLU: silu(gate) * up in fp32, one pass, strided rows "
            "(e.g. halves of a fused gate_up projection); forward only.",
        ),
        KernelSpec(
            "triton_geglu",
            "geglu",
            backend="triton",
            impl="layerzero.kernels.triton.swiglu:geglu",
            constraints=KernelConstraints(**base, custom=(cpu_needs_interpreter,)),
            priority=GEGLU_PRIORITY,
            tags=frozenset({"triton", "fused"}),
            description="LayerZero Triton GeGLU: gelu(gate, 'tanh' or 'none') * up in fp32, one pass; "
            "forward only.",
        ),
        KernelSpec(
            "triton_decode_attention",
            ("attention.*",),
            backend="triton",
            impl="layerzero.kernels.triton.decode_attention:decode_attention",
            constraints=KernelConstraints(
                **base,
                max_head_dim=DECODE_MAX_HEAD_DIM,
                supports_dropout=False,
                supports_softcap=True,
                supports_sliding_window=True,
                supports_sinks=True,
                custom=(cpu_needs_interpreter, _decode_only, gqa_ratio_ok, offsets_fit_int32),
            ),
            priority=DECODE_ATTENTION_PRIORITY,
            tags=frozenset({"triton", "decode"}),
            description="LayerZero Triton flash-decoding (Sq = 1): split-KV partials + one reduce, GQA group "
            "per program, softcap, sliding window, sinks, bool/additive masks, strided KV-cache views; one "
            "compiled variant for every key length; forward only.",
        ),
        KernelSpec(
            "triton_prefill_attention",
            ("attention.*",),
            backend="triton",
            impl="layerzero.kernels.triton.prefill_attention:prefill_attention",
            constraints=KernelConstraints(
                **base,
                max_head_dim=PREFILL_MAX_HEAD_DIM,
                supports_dropout=False,
                supports_softcap=True,
                supports_sliding_window=True,
                supports_bool_mask=False,
                supports_additive_mask=False,
                supports_mask_with_causal=False,
                custom=(cpu_needs_interpreter, _prefill_only, gqa_ratio_ok, offsets_fit_int32),
            ),
            priority=PREFILL_ATTENTION_PRIORITY,
            tags=frozenset({"triton", "prefill"}),
            description="LayerZero Triton flash attention forward (Sq > 1): bottom-right causal, sliding window, "
            "GQA, softcap with the hardware tanh (no masks, no sinks); strided (B, S, H, D) views; forward only.",
        ),
    ]
