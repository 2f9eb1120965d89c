"""The attention operations: contract, input checks, selection facts, cache key, expected output, the fp32
reference (against PyTorch's SDPA math) and the custom op's fake."""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from layerzero.context.buckets import Bucketer
from layerzero.context.keys import make_keyer
from layerzero.operations import get
from layerzero.operations.attention import (
    attention_allowed_mask,
    attention_options,
    default_is_causal,
    expand_kv_heads,
    reference_attention,
)
from layerzero.validation import problems


def _qkv(b=2, sq=5, sk=7, h=4, hkv=2, d=16, dv=16):
    return torch.randn(b, sq, h, d), torch.randn(b, sk, hkv, d), torch.randn(b, sk, hkv, dv)


def test_the_four_operations_share_one_contract():
    ops = [get(n) for n in ("attention.causal", "attention.prefill", "attention.cross", "attention.decode")]
    assert {op.family for op in ops} == {"attention"}
    assert all(op.contract.inputs == ("query", "key", "value") for op in ops)
    assert "sinks" in ops[0].contract.options and ops[0].tensor_options == ("attn_mask", "sinks")
    assert [default_is_causal(op.name) for op in ops] == [True, True, False, False]


def test_input_checks_name_the_argument_and_the_fix():
    q, k, v = _qkv()
    assert problems("attention.cross", {"query": q, "key": k, "value": v}, {}) == []
    found = problems("attention.cross", {"query": q[0], "key": k, "value": v}, {})
    assert found[0][0] == "query" and "transpose(1, 2)" in found[0][2]
    found = problems("attention.cross", {"query": q, "key": k[:, :, :1].expand(2, 7, 3, 16), "value": v}, {})
    assert any("grouped-query" in m for _, _, m in found)
    found = problems("attention.cross", {"query": q, "key": k, "value": v},
                     {"attn_mask": torch.ones(5, 7, dtype=torch.int64), "scale": -1.0, "dropout_p": 1.0,
                      "sliding_window": 0, "softcap": 0.0, "sinks": torch.zeros(3), "is_causal": 1})
    assert [p[0] for p in found] == ["attn_mask", "is_causal", "scale", "dropout_p", "sliding_window", "softcap",
                                     "sinks"]
    assert "mask.bool()" in found[0][2]


def test_selection_facts_and_cache_key():
    q, k, v = _qkv(dv=8)
    inputs = {"query": q, "key": k, "value": v}
    values: dict = {}
    get("attention.prefill").selection_facts(inputs, {"softcap": 30.0, "sinks": torch.zeros(4)}, values)
    assert (values["batch_size"], values["seq_len_q"], values["seq_len_k"], values["num_heads"],
            values["num_kv_heads"], values["head_dim"], values["head_dim_v"]) == (2, 5, 7, 4, 2, 16, 8)
    assert values["is_causal"] and values["softcap"] == 30.0 and values["has_sinks"]
    keyer = make_keyer({"batch_size": Bucketer(), "seq_len_q": Bucketer(), "seq_len_k": Bucketer()})
    key = keyer("attention.prefill", inputs, {"is_causal": True})
    assert key[0] == "attention.prefill" and key == keyer("attention.prefill", inputs, {"is_causal": True})
    assert key != keyer("attention.prefill", inputs, {"is_causal": False})


def test_described_facts_default_causality_by_name():
    facts = get("attention.decode").described_facts({"batch": 2, "seq_q": 1, "seq_k": 64, "heads": 8})
    assert facts["is_causal"] is False and facts["seq_len_k"] == 64 and facts["num_heads"] == 8
    assert get("attention.causal").described_facts({})["is_causal"] is True


def test_expected_output_has_the_value_head_dim_and_query_dtype():
    q, k, v = _qkv(dv=8)
    assert get("attention.cross").expected_outputs({"query": q, "key": k, "value": v}, 1) == [((2, 5, 4, 8),
                                                                                                torch.float32)]


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_sdpa_math(causal):
    q, k, v = _qkv(sq=7)
    out = reference_attention(q, k, v, is_causal=causal)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), expand_kv_heads(k, 4).transpose(1, 2),
                                              expand_kv_heads(v, 4).transpose(1, 2), is_causal=causal)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)
    assert get("attention.cross").reference(query=q, key=k, value=v, is_causal=causal).equal(out)


def test_allowed_mask_is_bottom_right_aligned():
    allowed = attention_allowed_mask(2, 4, True, None, "cpu")
    assert allowed.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert attention_allowed_mask(2, 4, False, None, "cpu") is None


def test_options_pass_only_what_is_set():
    q, k, _ = _qkv()
    assert attention_options(q, k, None, True, None, 0.0, None, None, None) == {"is_causal": True, "enable_gqa": True}
    opts = attention_options(q, k, None, False, 0.5, 0.1, 16, 30.0, None)
    assert list(opts) == ["is_causal", "enable_gqa", "scale", "dropout_p", "sliding_window", "softcap"]


def test_fake_shape():
    with FakeTensorMode():
        q, k, v = torch.empty(2, 3, 4, 16), torch.empty(2, 7, 2, 16), torch.empty(2, 7, 2, 8)
        out = torch.ops.layerzero.attention(q, k, v, None, False, None, 0.0, None, None, None, "attention.cross", None)
        assert out.shape == (2, 3, 4, 8)
