"""``layerzero_hf.from_pretrained`` loads with LayerZero attention and patches in one call."""

from __future__ import annotations

import pytest
import torch

import layerzero_hf

transformers = pytest.importorskip("transformers")


def test_from_pretrained_loads_and_patches(tiny_model_dir):
    path = tiny_model_dir("llama")
    model = layerzero_hf.from_pretrained(path, patch={"kernels": {"rms_norm": "reference_rms_norm"}}).eval()
    assert model.config._attn_implementation == "layerzero"
    report = layerzero_hf.patch_report(model)
    assert report is not None and report.counts()["rms_norm"] > 0
    assert report.kernels == {"rms_norm": "reference_rms_norm"}
    plain = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ids = torch.randint(3, 100, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, atol=1e-4, rtol=1e-4)
    layerzero_hf.unpatch(model)
