"""The conformance harness on a CUDA device: every available kernel, fp16 and bf16, GPU-sized shapes.

Run on the device machine with ``pytest -m gpu tests/kernels``. A kernel whose constraints accept a case
must compute it within tolerance; a constraint that is too loose (the library raises) fails here."""

from __future__ import annotations

import pytest
import torch

from lz_kernel_harness import ATTN_SHAPES_GPU, registry_kernels, representative_operation, run_conformance

pytestmark = pytest.mark.gpu

GPU_DTYPES = (torch.float16, torch.bfloat16)
BF16 = (torch.bfloat16,)
# Kernels that compile per configuration get a reduced grid: FlexAttention compiles per shape and
# score_mod; FlashInfer JIT-builds one module per (dtype, head_dim, mask mode, window, softcap, single or
# batch), 1-4 min each. Its grid uses head_dim 64, causal, bf16: the modules the parity matrix and the
# in-context replay also load (benchmarks/flashinfer_warmup.py, shape "small"), so the GPU tier compiles
# each once. The head counts and lengths vary (they are run-time arguments, not module parameters).
LIMITS: dict[str, dict] = {
    # the last shape is Gemma-2's attention at prefill (head_dim 256, >= 128 queries): the tuned kernel options
    "torch_flex_attention": dict(shapes=[ATTN_SHAPES_GPU[1], ATTN_SHAPES_GPU[4], (2, 256, 256, 8, 4, 256)], dtypes=BF16,
                                 variants=("causal", "softcap", "sliding_window", "sinks", "bool_mask")),
    "flashinfer_prefill_attention": dict(shapes=[(2, 128, 128, 8, 2, 64), (1, 48, 200, 8, 8, 64)], dtypes=BF16,
                                         variants=("causal",)),
    "flashinfer_decode_attention": dict(shapes=[(4, 1, 300, 8, 2, 64), (1, 1, 500, 8, 2, 64)], dtypes=BF16,
                                        variants=("causal",)),
    "flashinfer_rms_norm": dict(dtypes=BF16),
    "flashinfer_rope": dict(dtypes=BF16),
    "flashinfer_swiglu": dict(dtypes=BF16),
}
MUST_RUN = {"torch_sdpa_attention", "torch_sdpa_cudnn_attention", "torch_sdpa_flash_attention",
            "torch_sdpa_math_attention", "torch_flex_attention", "torch_rms_norm", "torch_rope", "torch_swiglu"}


@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("spec", registry_kernels(), ids=lambda s: s.kernel_id)
def test_kernel_matches_reference_on_gpu(spec, dtype):
    limits = LIMITS.get(spec.kernel_id, {})
    if dtype not in limits.get("dtypes", GPU_DTYPES):
        pytest.skip(f"{spec.kernel_id}: {dtype} not in its reduced GPU grid (JIT/compile cost)")
    op = representative_operation(spec)
    outcome = run_conformance(spec, op, dtype, "cuda", limits.get("shapes", ATTN_SHAPES_GPU),
                              variants=limits.get("variants"))
    assert not outcome.failures, "\n".join(outcome.failures[:10])
    if spec.kernel_id in MUST_RUN:
        assert outcome.ran, f"{spec.kernel_id} ran nothing on this GPU: {outcome.skipped}"
    if not outcome.ran:
        pytest.skip(f"{spec.kernel_id} cannot run here: {next(iter(outcome.skipped))}")
    print(f"{spec.kernel_id} {dtype}: ran {len(outcome.ran)}/{outcome.total}")
