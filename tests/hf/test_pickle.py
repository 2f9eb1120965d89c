"""A patched model pickles and ``torch.save``s; it loads unpatched (documented), gives the same logits, and
``patch()`` patches it again."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

import layerzero_hf

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_patched_model_round_trips(tiny_model_dir, attention, how):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    ids = torch.randint(3, 100, (1, 7))
    layerzero_hf.patch(model, attention=attention)
    with torch.no_grad():
        expected = model(ids).logits
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(model))
    else:
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
    assert layerzero_hf.is_patched(model)
    assert not layerzero_hf.is_patched(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-4, rtol=1e-4)
    report = layerzero_hf.patch(loaded, attention=attention)  # patches again, nothing left alone
    assert report.counts()["rms_norm"] > 0 and not report.skipped
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-4, rtol=1e-4)
    layerzero_hf.unpatch(loaded)
    layerzero_hf.unpatch(model)
