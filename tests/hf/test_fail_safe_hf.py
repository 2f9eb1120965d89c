"""A patched model answers a malformed request like the unpatched one (an error naming the problem) and keeps
serving valid requests: bad input never opens a kernel's breaker."""

from __future__ import annotations

import pytest
import torch

import layerzero_hf
from layerzero.errors import InvalidInputError

transformers = pytest.importorskip("transformers")


def test_malformed_requests_do_not_take_the_model_down(tiny_model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), attn_implementation="sdpa")
    model.eval()
    ids = torch.randint(3, 100, (1, 6))
    with torch.no_grad():
        expected = model(ids).logits
    layerzero_hf.patch(model, attention=True)
    try:
        bad = torch.randn(1, 6, 32)  # hidden 32 where the model's is 64
        for _ in range(8):  # more than any breaker's failure threshold
            with pytest.raises((InvalidInputError, RuntimeError)):
                with torch.no_grad():
                    model(inputs_embeds=bad)
        with torch.no_grad():
            got = model(ids).logits
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        snap = layerzero_hf.model_telemetry(model)["snapshot"]
        assert snap.failure_count == 0 and snap.fallback_count == 0
    finally:
        layerzero_hf.unpatch(model)
