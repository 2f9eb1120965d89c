"""rms_norm and layer_norm: input checks, facts, keys, expected outputs, references and fakes."""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from layerzero.context.buckets import Bucketer
from layerzero.context.keys import make_keyer
from layerzero.operations import get
from layerzero.operations.norm import reference_layer_norm, reference_rms_norm
from layerzero.validation import problems


def test_contracts_and_optional_inputs():
    assert get("rms_norm").contract.inputs == ("x", "weight") and get("rms_norm").optional_inputs == {"weight"}
    assert get("layer_norm").optional_inputs == {"weight", "bias"}
    assert problems("rms_norm", {"x": torch.randn(2, 8)}, {}) == []
    assert problems("layer_norm", {"x": torch.randn(2, 8), "weight": None, "bias": None}, {}) == []


def test_input_checks():
    x = torch.randn(3, 8)
    found = problems("rms_norm", {"x": x, "weight": torch.ones(4)}, {"eps": 0, "casting": "x", "offset": "1",
                                                                     "residual": torch.randn(3, 5)})
    assert [p[0] for p in found] == ["weight", "eps", "casting", "offset", "residual"]
    assert found[0][2] == "expected shape (8,), the last dimension of x (3, 8)"
    found = problems("layer_norm", {"x": x, "weight": None, "bias": torch.ones(3)}, {})
    assert found == [("bias", (3,), "expected shape (8,), the last dimension of x")]
    found = problems("rms_norm", {"x": x, "weight": None}, {"residual": [1.0]})
    assert found == [("residual", "list", "expected a torch.Tensor")]


def test_facts_and_key():
    x = torch.randn(2, 3, 16)
    values: dict = {}
    get("rms_norm").selection_facts({"x": x}, {"offset": 1.0, "casting": "gemma", "residual": x}, values)
    assert (values["hidden_size"], values["batch_size"], values["norm_offset"], values["casting"],
            values["fused_residual"]) == (16, 6, 1.0, "gemma", True)
    keyer = make_keyer({"batch_size": Bucketer(), "seq_len_q": Bucketer(), "seq_len_k": Bucketer()})
    assert keyer("rms_norm", {"x": x}, {}) != keyer("rms_norm", {"x": x}, {"residual": x})
    assert keyer("layer_norm", {"x": x}, {})[:3] == ("layer_norm", Bucketer()(6), 16)
    assert get("rms_norm").described_facts({"tokens": 7, "hidden": 64, "casting": "llama"})["batch_size"] == 7


@pytest.mark.parametrize("casting", ["llama", "gemma", "none"])
def test_rms_reference_matches_torch(casting):
    x, w = torch.randn(4, 32), torch.randn(32)
    torch.testing.assert_close(reference_rms_norm(x, w, eps=1e-6, casting=casting), F.rms_norm(x, (32,), w, 1e-6))
    normed, summed = get("rms_norm").reference(x=x, weight=w, residual=x, casting=casting)
    torch.testing.assert_close(summed, 2 * x)
    torch.testing.assert_close(normed, F.rms_norm(2 * x, (32,), w, 1e-6))


def test_layer_norm_reference_and_expected_outputs():
    x, w, b = torch.randn(4, 32, dtype=torch.bfloat16), torch.randn(32), torch.randn(32)
    out = reference_layer_norm(x, w, b)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.layer_norm(x.float(), (32,), w, b), rtol=2e-2, atol=2e-2)
    assert get("layer_norm").expected_outputs({"x": x}, 1) == [((4, 32), torch.bfloat16)]
    assert get("rms_norm").expected_outputs({"x": x}, 2) == [((4, 32), torch.bfloat16)] * 2


def test_fakes():
    with FakeTensorMode():
        x = torch.empty(4, 32, dtype=torch.float16)
        assert torch.ops.layerzero.rms_norm(x, None, 1e-6, 0.0, "llama", None).shape == (4, 32)
        assert torch.ops.layerzero.layer_norm(x, None, None, 1e-5, None).dtype == torch.float16
