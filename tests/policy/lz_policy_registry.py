"""A registry shaped like the architecture's catalogue, built here so policy tests do not depend on which
backends the global catalogue has wired up yet (and never import a backend). Named uniquely because test
directories are not packages."""

from __future__ import annotations

from pathlib import Path

from layerzero.registry import KernelConstraints, KernelRegistry, KernelSpec

REPO = Path(__file__).resolve().parents[2]
SEED_YAML = REPO / "configs" / "examples" / "seed_kernels.yaml"

ATTN = "attention.*"
_CUDA = KernelConstraints(platforms=frozenset({"cuda"}))  # the CPU only under the Triton interpreter
_CUDA_HALF = KernelConstraints(platforms=frozenset({"cuda"}), dtypes=frozenset({"float16", "bfloat16"}))

# (id, operations, backend, priority, aliases, tags, constraints)
KERNELS = [
    ("reference_attention", ATTN, "torch", 0, (), {"reference"}, None),
    ("torch_sdpa_attention", ATTN, "torch", 70, ("torch_sdpa",), (), None),
    ("torch_sdpa_math_attention", ATTN, "torch", 10, (), (), None),
    ("torch_sdpa_cudnn_attention", ATTN, "torch", 90, (), (), _CUDA_HALF),
    ("torch_sdpa_flash_attention", ATTN, "torch", 78, (), (), _CUDA_HALF),
    ("torch_sdpa_efficient_attention", ATTN, "torch", 40, (), (), None),
    ("torch_flex_attention", ATTN, "torch", 60, (), (), None),
    ("torch_eager_attention", ATTN, "torch", 65, (), (), None),
    ("triton_prefill_attention", ATTN, "triton", 70, (), (), _CUDA),
    ("flash_attn_v2_attention", ATTN, "flash_attn", 85, ("flash_attention_v2",), (), _CUDA_HALF),
    ("flash_attn_v3_attention", ATTN, "flash_attn_3", 95, ("flash_attention_v3",), (), _CUDA_HALF),
    ("flashinfer_prefill_attention", ("attention.causal", "attention.prefill"), "flashinfer", 80, (), (), _CUDA_HALF),
    ("flashinfer_decode_attention", ("attention.decode",), "flashinfer", 80, ("flashinfer_decode",), (), _CUDA_HALF),
    ("xformers_attention", ATTN, "xformers", 65, ("xformers_memory_efficient",), (), _CUDA_HALF),
    ("reference_rms_norm", "rms_norm", "torch", 0, (), {"reference"}, None),
    ("torch_rms_norm", "rms_norm", "torch", 80, (), (), None),
    ("liger_rms_norm", "rms_norm", "liger", 70, (), (), _CUDA_HALF),
    ("triton_rms_norm", "rms_norm", "triton", 60, (), (), None),
    ("reference_swiglu", "swiglu", "torch", 0, (), {"reference"}, None),
    ("torch_swiglu", "swiglu", "torch", 50, (), (), None),
    ("torch_rope", "rope", "torch", 50, (), (), None),
    ("reference_rope", "rope", "torch", 0, (), {"reference"}, None),
    ("torch_layer_norm", "layer_norm", "torch", 80, (), (), None),
    ("reference_layer_norm", "layer_norm", "torch", 0, (), {"reference"}, None),
    ("torch_geglu", "geglu", "torch", 50, (), (), None),
    ("reference_geglu", "geglu", "torch", 0, (), {"reference"}, None),
    ("attn_experimental", ATTN, "torch", 99, (), (), None),
    ("rms_norm_debug", "rms_norm", "torch", 99, (), (), None),
]


def _impl(**kwargs):  # never called by policy tests; KernelSpec just needs a callable
    raise AssertionError("policy tests must not run kernels")


def make_registry() -> KernelRegistry:
    return KernelRegistry(
        KernelSpec(kid, ops, backend, impl=_impl, constraints=cons, priority=prio, aliases=aliases, tags=tags)
        for kid, ops, backend, prio, aliases, tags, cons in KERNELS
    )
