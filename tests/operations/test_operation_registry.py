"""layerzero.operations: the registry of Operation objects, the name helpers kept for callers, the generic
output check and the custom-op declarations (schemas and fakes)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from layerzero import operations
from layerzero.operations import (
    ATTENTION_OPS,
    CONTRACTS,
    OPERATIONS,
    Operation,
    check_outputs,
    contract,
    custom_op,
    custom_ops,
    expand,
    find,
    get,
    is_attention,
    matches,
)
from layerzero.tuning.sweep import TuneShape


def test_every_operation_is_one_object_in_a_stable_order():
    assert OPERATIONS == ("attention.causal", "attention.prefill", "attention.cross", "attention.decode", "rms_norm",
                          "layer_norm", "rope", "swiglu", "geglu")
    assert [op.name for op in operations.all_operations()] == list(OPERATIONS)
    for name in OPERATIONS:
        op = get(name)
        assert isinstance(op, Operation) and op.name == name and find(name) is op
        assert CONTRACTS[name] is op.contract is contract(name)


def test_name_helpers_keep_working():
    assert ATTENTION_OPS == OPERATIONS[:4]
    assert is_attention("attention.decode") and not is_attention("rope")
    assert matches("attention.*", "attention.cross") and not matches("attention.*", "rms_norm")
    assert expand("attention.*") == ATTENTION_OPS and expand("*_norm") == ("rms_norm", "layer_norm")
    assert contract("rms_norm").parameters == {"x", "weight", "eps", "offset", "casting", "residual"}


def test_unknown_operations():
    with pytest.raises(KeyError, match="unknown operation 'nope'; known operations: attention.causal"):
        get("nope")
    with pytest.raises(KeyError, match="unknown operation"):
        contract("nope")
    assert find("nope") is None and find(None) is None


def test_check_outputs_counts_shapes_dtypes_and_nan():
    x = torch.randn(3, 8)
    assert check_outputs("rms_norm", {"x": x}, torch.randn(3, 8)) is None
    assert check_outputs("rms_norm", {"x": x}, (torch.randn(3, 8), torch.randn(3, 8))) is None  # residual variant
    assert check_outputs("rms_norm", {"x": x}, torch.randn(3, 4)) == "output 0 has shape (3, 4), expected (3, 8)"
    assert check_outputs("rms_norm", {"x": x}, x.double()) == "output 0 has dtype torch.float64, expected torch.float32"
    assert check_outputs("swiglu", {"gate": x}, torch.full((3, 8), float("nan"))) == "output 0 contains NaN or Inf"
    assert check_outputs("swiglu", {"gate": x}, [1]) == "output 0 is list, not a tensor"
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 1, 5, 8)
    assert check_outputs("rope", {"q": q, "k": k}, q) == "returned 1 tensors, expected 2"
    assert check_outputs("rope", {"q": q, "k": k}, (q, k)) is None
    # unknown operations: type and NaN/Inf checks only
    assert check_outputs("custom.op", {}, torch.randn(2)) is None
    assert check_outputs("custom.op", {}, torch.tensor([float("inf")])) == "output 0 contains NaN or Inf"


def test_custom_ops_are_declared_with_schemas_and_fakes():
    names = {c.name for c in custom_ops()}
    assert names == {"attention", "rms_norm", "rms_norm_residual", "layer_norm", "rope", "swiglu", "geglu"}
    assert custom_op("rms_norm_residual").tensor_names == ("x", "weight", "residual")
    assert custom_op("attention").tensor_names == ("query", "key", "value", "attn_mask", "sinks")
    assert custom_op("rope").arg_names[-1] == "orchestrator"
    with FakeTensorMode():
        x = torch.empty(4, 32, dtype=torch.bfloat16)
        normed, summed = torch.ops.layerzero.rms_norm_residual(x, None, x.float(), 1e-6, 0.0, "llama", None)
        assert normed.dtype == torch.bfloat16 and summed.dtype == torch.float32 and summed.shape == (4, 32)
        q, k = torch.empty(1, 4, 6, 16), torch.empty(1, 2, 6, 16)
        qo, ko = torch.ops.layerzero.rope(q, k, torch.empty(6, 16), torch.empty(6, 16), "bhsd", False, None)
        assert qo.shape == q.shape and ko.shape == k.shape
        assert torch.ops.layerzero.geglu(x, x, "tanh", None).shape == (4, 32)


def test_custom_op_maps_its_arguments_to_a_dispatcher_call():
    x, w, r = torch.randn(2, 8), torch.randn(8), torch.randn(2, 8)
    spec = custom_op("rms_norm_residual")
    args = dict(zip(spec.arg_names, (x, w, r, 1e-6, 1.0, "gemma", None)))
    operation, inputs, options = spec.to_call(args)
    assert operation == "rms_norm" and set(inputs) == {"x", "weight"}
    assert options == {"eps": 1e-6, "offset": 1.0, "casting": "gemma", "residual": r}
    assert spec.out_dtypes(args) == (torch.float32, torch.float32)


@pytest.mark.parametrize("name", OPERATIONS)
def test_sample_inputs_validate_and_the_reference_meets_the_output_check(name):
    from layerzero.validation import problems

    op = get(name)
    shape = TuneShape(name, "float32", batch=2, seq_q=6, heads=4, kv_heads=2, head_dim=16, tokens=5, hidden=12)
    inputs, kwargs = op.sample_inputs(shape, torch.device("cpu"), torch.float32)
    assert problems(name, inputs, kwargs) == []
    out = op.reference(**inputs, **kwargs, **op.call_defaults())
    assert check_outputs(name, inputs, out) is None
    assert op.shape_label(shape).startswith(name)


def test_custom_ops_need_layerzero_ops_for_their_implementation():
    """The schema lives with the operation; the implementation (the dispatcher) is bound by layerzero.ops."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "import layerzero.operations\n"
        "assert 'layerzero.ops' not in sys.modules and 'layerzero.dispatch' not in sys.modules\n"
        "g = torch.randn(2, 4)\n"
        "try:\n"
        "    torch.ops.layerzero.swiglu(g, g, None)\n"
        "except Exception as e:\n"
        "    assert 'import layerzero.ops' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('an unbound custom op ran')\n"
        "import layerzero.ops\n"
        "torch.testing.assert_close(torch.ops.layerzero.swiglu(g, g, None), torch.nn.functional.silu(g) * g)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_reference_kernels_are_the_operations_references():
    from layerzero.kernels import reference

    x, w = torch.randn(3, 8), torch.randn(8)
    assert reference.rms_norm(x, w).equal(get("rms_norm").reference(x=x, weight=w))
    assert reference.swiglu(x, w).equal(get("swiglu").reference(gate=x, up=w))
    for name in ("attention", "rms_norm", "layer_norm", "rope", "swiglu", "geglu", "rotate_half", "rope_broadcast",
                 "attention_allowed_mask", "expand_kv_heads", "rotate_interleaved"):
        assert getattr(reference, name).__module__.startswith("layerzero.operations.")
