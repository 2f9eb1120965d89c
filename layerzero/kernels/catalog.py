"""The built-in catalogue: every backend and kernel LayerZero ships, described without importing any of them.

A kernel here is data: its id, the operations it serves, the backend it needs, its function, what it can do (constraints, from the libraries' own docs and source) and a priority.
Priorities order kernels that pass every check when no policy decides; they follow the H100 measurements
(H100) and are explained kernel by kernel in ``docs/kernels.md``:

- attention on CUDA (H100 sweep, benchmarks/results/*-kernels-*.md): SDPA with torch's own choice
  (it picks cuDNN on sm90 itself; 480/314/108 TFLOP/s on our three prefill shapes) > SDPA pinned to cuDNN
  (same kernel plus the ``sdpa_kernel`` switch: 398/273/97; other H100 runs: 440–585) > FA3 (not measured) >
  FA2 / FlashInfer prefill (466/257/61) > SDPA flash (252/174/62) > FlexAttention (278/154/48, compiles
  per shape) = FlashInfer decode (0.39 ms vs SDPA 0.38 ms at 64x4096) > xFormers > SDPA mem-efficient (no
  GQA) > SDPA math (30x slower) > fp32 reference (0).
- RMSNorm: ``F.rms_norm`` (1.5–2.6 TB/s) > FlashInfer > Liger (1.2–1.9 TB/s) > reference.
- RoPE: Liger (0.50 ms) > FlashInfer > HF-style eager torch (1.12 ms) > reference.
- SwiGLU/GeGLU: Liger (2.5 TB/s at 16k tokens) > eager torch (1.8 TB/s; wins below ~128 tokens, a policy
  rule can prefer it there) > FlashInfer (needs gate/up adjacent, else a copy) > reference.

Nothing in this module imports an optional backend: probes run when selection first asks. Kernels name
their function directly, since every adapter module imports its library inside the kernel function; only
LayerZero's Triton kernels (``triton/specs.py``) keep ``"module:function"`` paths, because their modules
import triton to define the kernels and must not be imported until the first call.
"""

from __future__ import annotations

import os

from layerzero.context.call_context import SelectionContext
from layerzero.kernels import (
    flash_attn,
    flashinfer,
    liger,
    reference,
    torch_eager,
    torch_flex,
    torch_ops,
    torch_sdpa,
    xformers,
)
from layerzero.kernels.checks import gqa_ratio_ok
from layerzero.kernels.triton.specs import triton_kernels
from layerzero.registry.backends import BackendSpec
from layerzero.registry.constraints import KernelConstraints
from layerzero.registry.kernel_spec import KernelSpec

__all__ = ["builtin_backends", "builtin_kernels"]

ATTN = ("attention.*",)
HALF = frozenset({"float16", "bfloat16"})
FLOATS = frozenset({"float16", "bfloat16", "float32"})
ANY_FLOAT = frozenset({"float16", "bfloat16", "float32", "float64"})
CUDA = frozenset({"cuda"})


# ----------------------------------------------------------------------------------------------- backends
def _cuda_required() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def _triton_check() -> str | None:
    """Triton kernels run on a CUDA device, or on CPU through the interpreter (``TRITON_INTERPRET=1``)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    reason = _cuda_required()
    if reason:
        return f"{reason}; set TRITON_INTERPRET=1 to run Triton kernels on CPU through the interpreter"
    return None


def _flex_check() -> str | None:
    import torch

    if not hasattr(torch.nn.attention, "flex_attention"):
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs torch >= 2.5)"
    return None


def builtin_backends() -> list[BackendSpec]:
    """Every optional library LayerZero knows. Probes are lazy: constructing these imports nothing."""
    return [
        BackendSpec("torch", modules=("torch",), description="PyTorch built-ins (SDPA, F.rms_norm, eager ops)"),
        BackendSpec(
            "torch_flex",
            modules=("torch.nn.attention.flex_attention",),
            description="torch FlexAttention (compiled block-sparse attention)",
            version_module="torch",
            extra_check=_flex_check,
        ),
        BackendSpec(
            "triton",
            modules=("triton",),
            description="LayerZero's own Triton kernels",
            install_hint="pip install triton",
            precheck=_triton_check,
        ),
        BackendSpec(
            "flash_attn",
            modules=("flash_attn",),
            description="FlashAttention 2 (Dao-AILab/flash-attention)",
            install_hint="pip install flash-attn --no-build-isolation",
            min_version="2.1",
            extra_check=_cuda_required,
        ),
        BackendSpec(
            "flash_attn_3",
            modules=("flash_attn_interface",),
            description="FlashAttention 3 for Hopper (flash-attention/hopper)",
            install_hint="build flash-attention/hopper: cd hopper && python setup.py install",
            version_module="flash_attn_3",
            extra_check=_cuda_required,
        ),
        BackendSpec(
            "flashinfer",
            modules=("flashinfer",),
            description="FlashInfer attention / norm / rope / activation kernels (JIT on first use)",
            install_hint="pip install flashinfer-python",
            extra_check=_cuda_required,
        ),
        BackendSpec(
            "xformers",
            modules=("xformers", "xformers.ops"),
            description="xFormers memory-efficient attention",
            install_hint="pip install xformers (the wheel must match your torch)",
            extra_check=_cuda_required,
        ),
        BackendSpec(
            "liger",
            modules=("liger_kernel",),
            description="Liger-Kernel Triton kernels",
            install_hint="pip install liger-kernel",
            version_module="liger_kernel",
            extra_check=_cuda_required,
        ),
    ]


# ----------------------------------------------------------------------------------------------- custom checks
def _full_rotary_only(ctx: SelectionContext) -> str | None:
    """rotary_dim must equal head_dim"""
    if ctx.rotary_dim is not None and ctx.head_dim is not None and ctx.rotary_dim != ctx.head_dim:
        return f"partial rotary (rotary_dim {ctx.rotary_dim} < head_dim {ctx.head_dim}) not supported"
    return None


def _cudnn_shapes_ok(ctx: SelectionContext) -> str | None:
    """cuDNN SDPA: key length > 1, dropout a multiple of 1/16 and not with one query (torch sdp_utils.cpp)"""
    if ctx.seq_len_k is not None and ctx.seq_len_k < 2:
        return "seq_len_k 1 not supported by SDPA cuDNN (torch check_cudnn_tensor_shapes)"
    if ctx.dropout_p:
        if ctx.dropout_p * 16 != int(ctx.dropout_p * 16):
            return f"dropout_p {ctx.dropout_p} not a multiple of 1/16 (cuDNN dropout resolution)"
        if ctx.seq_len_q == 1:
            return "dropout with seq_len_q 1 not supported by SDPA cuDNN"
    return None


def _efficient_alignment(ctx: SelectionContext) -> str | None:
    """SDPA mem-efficient: head dims multiple of 8 (fp16/bf16) or 4 (fp32) on sm80+"""
    need = 4 if ctx.dtype == "float32" else 8
    for name, d in (("head_dim", ctx.head_dim), ("value head_dim", ctx.head_dim_v)):
        if d is not None and d % need:
            return f"{name} {d} not a multiple of {need} (SDPA mem-efficient GEMM alignment for {ctx.dtype})"
    return None


# Longest query the eager kernel takes on CUDA: decode and speculative verification. Longer queries are
# prefill, where it would materialise an fp32 (B, H, Sq, Sk) score matrix that Flex and FlashInfer never
# build, and its launches-per-call saving no longer matters next to the device time.
EAGER_ATTENTION_MAX_QUERY_ON_CUDA = 16


def _short_query_on_cuda(ctx: SelectionContext) -> str | None:
    """on CUDA: queries of at most 16 tokens (decode)"""
    if ctx.platform == "cuda" and ctx.seq_len_q is not None and ctx.seq_len_q > EAGER_ATTENTION_MAX_QUERY_ON_CUDA:
        return (f"seq_len_q {ctx.seq_len_q} > {EAGER_ATTENTION_MAX_QUERY_ON_CUDA} on CUDA (torch_eager_attention "
                "materialises the fp32 score matrix: a decode kernel there)")
    return None


def _even_rotary_dim(ctx: SelectionContext) -> str | None:
    """rotary dim must be even"""
    if ctx.rotary_dim is not None and ctx.rotary_dim % 2:
        return f"rotary_dim {ctx.rotary_dim} is odd"
    return None


# ----------------------------------------------------------------------------------------------- kernels
def _reference_kernels() -> list[KernelSpec]:
    ref = reference
    tags = frozenset({"reference"})
    attention_limits = KernelConstraints(
        supports_softcap=True, supports_sliding_window=True, supports_sinks=True, custom=(gqa_ratio_ok,)
    )
    return [
        KernelSpec("reference_attention", ATTN, "torch", ref.attention, attention_limits, 0, tags=tags,
                   description="fp32 math attention: the oracle and last resort (every contract feature)"),
        KernelSpec("reference_rms_norm", "rms_norm", "torch", ref.rms_norm, None, 0, tags=tags,
                   description="fp32 RMSNorm, all casting modes, offset and fused residual"),
        KernelSpec("reference_layer_norm", "layer_norm", "torch", ref.layer_norm, None, 0, tags=tags,
                   description="F.layer_norm in fp32"),
        KernelSpec("reference_rope", "rope", "torch", ref.rope, KernelConstraints(custom=(_even_rotary_dim,)), 0,
                   tags=tags, description="HF apply_rotary_pos_emb in fp32, partial and interleaved"),
        KernelSpec("reference_swiglu", "swiglu", "torch", ref.swiglu, None, 0, tags=tags,
                   description="silu(gate) * up in fp32"),
        KernelSpec("reference_geglu", "geglu", "torch", ref.geglu, None, 0, tags=tags,
                   description="gelu(gate) * up in fp32"),
    ]


def _torch_kernels() -> list[KernelSpec]:
    sdpa, ops = torch_sdpa, torch_ops
    generic = KernelConstraints(
        dtypes=ANY_FLOAT, supports_sliding_window=True, custom=(gqa_ratio_ok,)
    )
    flash = KernelConstraints(
        platforms=CUDA,
        dtypes=HALF,
        min_compute_capability=(8, 0),
        max_head_dim=256,
        supports_bool_mask=False,
        supports_additive_mask=False,
        supports_bottom_right_causal=False,
        supports_different_v_dim=False,
        custom=(gqa_ratio_ok,),
    )
    efficient = KernelConstraints(
        platforms=CUDA,
        dtypes=FLOATS,
        min_compute_capability=(5, 0),
        supports_gqa=False,
        supports_sliding_window=True,
        custom=(_efficient_alignment,),
    )
    cudnn = KernelConstraints(
        platforms=CUDA,
        dtypes=HALF,
        min_compute_capability=(8, 0),
        max_head_dim=128,
        head_dim_multiple=8,
        supports_sliding_window=True,
        supports_different_v_dim=False,
        custom=(gqa_ratio_ok, _cudnn_shapes_ok),
    )
    math = KernelConstraints(dtypes=ANY_FLOAT, supports_sliding_window=True, custom=(gqa_ratio_ok,))
    eager = KernelConstraints(
        dtypes=ANY_FLOAT, supports_dropout=False, supports_softcap=True, supports_sliding_window=True,
        supports_sinks=True, custom=(gqa_ratio_ok, _short_query_on_cuda),
    )
    return [
        KernelSpec("torch_sdpa_attention", ATTN, "torch", sdpa.torch_sdpa_attention, generic, 90,
                   aliases=("torch_sdpa",), tags={"sdpa"},
                   description="SDPA, torch picks its backend (cuDNN on sm90): fastest measured, 480 TFLOP/s at 1x4096"),
        KernelSpec("torch_sdpa_cudnn_attention", ATTN, "torch", sdpa.torch_sdpa_cudnn_attention, cudnn, 85,
                   tags={"sdpa"}, description="SDPA pinned to cuDNN (398 TFLOP/s at 1x4096 on an H100)"),
        KernelSpec("torch_sdpa_flash_attention", ATTN, "torch", sdpa.torch_sdpa_flash_attention, flash, 78,
                   tags={"sdpa"}, description="SDPA pinned to its FlashAttention-2 kernel (250–340 TFLOP/s)"),
        KernelSpec("torch_sdpa_efficient_attention", ATTN, "torch", sdpa.torch_sdpa_efficient_attention,
                   efficient, 40, tags={"sdpa"},
                   description="SDPA pinned to mem-efficient (xFormers-derived); masks and fp32, no GQA"),
        KernelSpec("torch_sdpa_math_attention", ATTN, "torch", sdpa.torch_sdpa_math_attention, math, 10,
                   tags={"sdpa"}, description="SDPA pinned to math: runs everything, ~30x slower"),
        KernelSpec("torch_eager_attention", ATTN, "torch", torch_eager.torch_eager_attention, eager, 65,
                   description="eager math attention in a few ATen calls (softcap, window, sinks, masks; GQA "
                               "without repeating K/V); the CPU choice where SDPA cannot run (uncompiled Flex "
                               "measured 3x slower there), a decode candidate on CUDA"),
        KernelSpec("torch_rms_norm", "rms_norm", "torch", ops.torch_rms_norm,
                   KernelConstraints(dtypes=ANY_FLOAT), 80,
                   description="F.rms_norm (fused on CUDA, 1.5–2.6 TB/s) with every casting mode"),
        KernelSpec("torch_layer_norm", "layer_norm", "torch", ops.torch_layer_norm,
                   KernelConstraints(dtypes=ANY_FLOAT), 80, description="F.layer_norm"),
        KernelSpec("torch_rope", "rope", "torch", ops.torch_rope,
                   KernelConstraints(dtypes=ANY_FLOAT, custom=(_even_rotary_dim,)), 50,
                   description="HF rotate_half RoPE in the input dtype (eager, 1.12 ms at 8x2048x32x128)"),
        KernelSpec("torch_swiglu", "swiglu", "torch", ops.torch_swiglu, KernelConstraints(dtypes=ANY_FLOAT), 50,
                   description="F.silu(gate) * up (eager; wins at small token counts)"),
        KernelSpec("torch_geglu", "geglu", "torch", ops.torch_geglu, KernelConstraints(dtypes=ANY_FLOAT), 50,
                   description="F.gelu(gate, approximate) * up (eager)"),
    ]


def _flex_kernels() -> list[KernelSpec]:
    return [
        KernelSpec("torch_flex_attention", ATTN, "torch_flex", torch_flex.torch_flex_attention,
                   torch_flex.FLEX_CONSTRAINTS, 60, tags={"compiled"},
                   description="FlexAttention with cached block masks and softcap score_mod (240–410 TFLOP/s, "
                               "compiles on first use)"),
    ]


def _optional_kernels() -> list[KernelSpec]:
    """Kernels of the optional libraries; their modules define constraints next to the adapters."""
    out: list[KernelSpec] = []
    for mod in (flash_attn, flashinfer, xformers, liger):
        out.extend(mod.kernel_specs())
    return out


def builtin_kernels() -> list[KernelSpec]:
    """Every built-in kernel spec. Imports only LayerZero modules (adapters import their library lazily)."""
    return _reference_kernels() + _torch_kernels() + _flex_kernels() + _optional_kernels() + triton_kernels()

