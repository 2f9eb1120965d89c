"""Patched norms return the dtype the Transformers module returns, also for mixed-dtype weights."""

from __future__ import annotations

import pytest
import torch

import layerzero_hf

transformers = pytest.importorskip("transformers")


@pytest.fixture
def model(tiny_model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()


def test_llama_norm_with_fp32_weight_and_bf16_input_promotes_like_transformers(model):
    norm = model.model.norm
    x = torch.randn(2, 5, norm.weight.shape[0]).to(torch.bfloat16)
    expected = norm(x)  # Transformers: weight (fp32) * normed.to(bf16) -> fp32
    layerzero_hf.patch(model)
    try:
        got = norm(x)
    finally:
        layerzero_hf.unpatch(model)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected)
