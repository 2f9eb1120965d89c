"""swiglu and geglu: input checks, facts (geglu's non-tanh flag), key, references and fakes."""

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from layerzero.operations import get
from layerzero.operations.activation import reference_geglu, reference_swiglu
from layerzero.validation import problems


def test_input_checks():
    g = torch.randn(3, 8)
    assert problems("swiglu", {"gate": g, "up": g}, {}) == []
    found = problems("geglu", {"gate": g, "up": torch.randn(3, 4).double()}, {"approximate": "erf"})
    assert [p[0] for p in found] == ["up", "up", "approximate"]
    assert problems("swiglu", {"gate": g, "up": g}, {"approximate": "tanh"})[0][2].startswith("unknown argument")


def test_facts_flag_a_non_tanh_geglu():
    g = torch.randn(2, 3, 8)
    values: dict = {}
    get("geglu").selection_facts({"gate": g}, {"approximate": "none"}, values)
    assert (values["batch_size"], values["hidden_size"], values["extra"]) == (6, 8, (("approximate", "none"),))
    values = {}
    get("swiglu").selection_facts({"gate": g}, {}, values)
    assert "extra" not in values


def test_references():
    g, u = torch.randn(4, 8, dtype=torch.float16), torch.randn(4, 8, dtype=torch.float16)
    out = reference_swiglu(g, u)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, (F.silu(g.float()) * u.float()).half())
    torch.testing.assert_close(get("geglu").reference(gate=g, up=u, approximate="none"),
                               (F.gelu(g.float()) * u.float()).half())
    assert reference_geglu(g, u).equal(get("geglu").reference(gate=g, up=u))


def test_fakes():
    with FakeTensorMode():
        g = torch.empty(4, 8, dtype=torch.bfloat16)
        assert torch.ops.layerzero.swiglu(g, g, None).shape == (4, 8)
        assert torch.ops.layerzero.geglu(g, g, "none", None).dtype == torch.bfloat16
