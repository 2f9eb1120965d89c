"""Every kernel in the global registry that can run here, against the fp32 reference (CPU: fp32 + bf16)."""

from __future__ import annotations

import pytest
import torch

from lz_kernel_harness import ATTN_SHAPES_CPU, registry_kernels, representative_operation, run_conformance

CPU_DTYPES = (torch.float32, torch.bfloat16)
KERNELS = registry_kernels()

# Kernels that must run most of the grid on CPU: the portable torch kernels and the references.
MUST_COVER = {
    "reference_attention": 1.0,
    "torch_sdpa_attention": 0.7,
    "torch_sdpa_math_attention": 0.7,
    "torch_flex_attention": 0.9,
    "torch_eager_attention": 1.0,
    "reference_rms_norm": 1.0,
    "torch_rms_norm": 1.0,
    "reference_layer_norm": 1.0,
    "torch_layer_norm": 1.0,
    "reference_rope": 1.0,
    "torch_rope": 1.0,
    "reference_swiglu": 1.0,
    "torch_swiglu": 1.0,
    "reference_geglu": 1.0,
    "torch_geglu": 1.0,
}


# FlexAttention on CPU runs its eager path, which re-traces per new shape and score_mod (~0.5-1 s per
# call on this machine): one shape per dtype (chunked bottom-right prefill, GQA prefill) keeps the file
# fast and still covers every variant; the GPU test runs Flex on more shapes.
REDUCED_SHAPES = {
    ("torch_flex_attention", torch.float32): [ATTN_SHAPES_CPU[5]],
    ("torch_flex_attention", torch.bfloat16): [ATTN_SHAPES_CPU[1]],
}


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("spec", KERNELS, ids=lambda s: s.kernel_id)
def test_kernel_matches_reference_on_cpu(spec, dtype):
    op = representative_operation(spec)
    outcome = run_conformance(spec, op, dtype, "cpu", REDUCED_SHAPES.get((spec.kernel_id, dtype)))
    assert not outcome.failures, "\n".join(outcome.failures[:10])
    need = MUST_COVER.get(spec.kernel_id)
    if need is not None:
        share = len(outcome.ran) / outcome.total
        assert share >= need, f"{spec.kernel_id} ran {len(outcome.ran)}/{outcome.total} cases; skipped: {outcome.skipped}"
    if not outcome.ran:
        pytest.skip(f"{spec.kernel_id} cannot run here: {next(iter(outcome.skipped))}")


def test_every_operation_has_a_portable_kernel():
    from layerzero.operations import OPERATIONS
    from layerzero.registry import get_global_kernel_registry

    reg = get_global_kernel_registry()
    for op in OPERATIONS:
        refs = [k for k in reg.get_by_operation(op) if k.is_reference]
        torch_ks = [k for k in reg.get_by_operation(op) if k.backend == "torch" and not k.is_reference]
        assert refs, f"{op} has no reference kernel"
        assert torch_ks, f"{op} has no torch kernel"
        assert refs[0].priority == 0 and all(k.priority > 0 for k in torch_ks)
