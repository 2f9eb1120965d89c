"""rope: input checks, facts in both layouts, key, expected outputs, reference and fake."""

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from layerzero.operations import get
from layerzero.operations.rope import reference_rope, rotate_half, rotate_interleaved
from layerzero.validation import problems


def _call(layout="bhsd", rot=16):
    q, k = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 6, 16)
    if layout == "bshd":
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    return {"q": q, "k": k, "cos": torch.randn(6, rot), "sin": torch.randn(6, rot)}


def test_input_checks():
    assert problems("rope", _call(), {}) == []
    assert problems("rope", _call(), {"layout": "sbhd"}) == [("layout", "sbhd", "expected 'bhsd' (Transformers) or "
                                                                              "'bshd'")]
    found = problems("rope", _call(rot=5), {"interleaved": "yes"})
    assert [p[0] for p in found] == ["cos", "interleaved"]
    assert "must be even and <= head_dim 16" in found[0][2]


def test_facts_in_both_layouts():
    for layout in ("bhsd", "bshd"):
        values: dict = {}
        get("rope").selection_facts(_call(layout, rot=8), {"layout": layout}, values)
        assert (values["num_heads"], values["num_kv_heads"], values["seq_len"], values["head_dim"],
                values["rotary_dim"], values["layout"]) == (4, 2, 6, 16, 8, layout)
    assert get("rope").described_facts({"head_dim": 64})["rotary_dim"] == 64


def test_reference_rotates_and_passes_the_rest_through():
    call = _call(rot=8)
    q_out, k_out = reference_rope(**call)
    c, s = call["cos"].unsqueeze(-3), call["sin"].unsqueeze(-3)
    q = call["q"]
    torch.testing.assert_close(q_out[..., :8], q[..., :8] * c + rotate_half(q[..., :8]) * s)
    torch.testing.assert_close(q_out[..., 8:], q[..., 8:])
    assert rotate_interleaved(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-2.0, 1.0, -4.0, 3.0]
    expected = get("rope").expected_outputs(call, 2)
    assert expected == [((1, 4, 6, 16), torch.float32), ((1, 2, 6, 16), torch.float32)]
    assert k_out.shape == expected[1][0]


def test_describe_and_fake():
    assert get("rope").describe_inputs(_call(rot=8)) == ["q 1x4x6x16", "k 1x2x6x16", "rot 8"]
    with FakeTensorMode():
        q, k = torch.empty(1, 6, 4, 16, dtype=torch.bfloat16), torch.empty(1, 6, 2, 16, dtype=torch.bfloat16)
        qo, ko = torch.ops.layerzero.rope(q, k, torch.empty(6, 16), torch.empty(6, 16), "bshd", True, None)
        assert (qo.shape, ko.shape, qo.dtype) == (q.shape, k.shape, torch.bfloat16)
