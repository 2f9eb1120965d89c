"""TuneShape inputs come from the operations' sample inputs; default grids and labels loop over operations."""

import pytest
import torch

from layerzero.operations import OPERATIONS
from layerzero.tuning.shapes import default_shapes, shape_label
from layerzero.tuning.sweep import TuneShape


def test_default_grids_cover_every_operation_family():
    cpu = default_shapes("cpu")
    assert [s.operation for s in cpu] == ["attention.causal", "attention.decode", "rms_norm", "layer_norm", "rope",
                                          "swiglu", "geglu"]
    assert {s.dtype for s in cpu} == {"float32"} and {s.dtype for s in default_shapes("cuda")} == {"bfloat16"}
    assert len(default_shapes("cuda:0")) == 8


@pytest.mark.parametrize("operation", OPERATIONS)
def test_inputs_follow_the_contract(operation):
    from layerzero.operations import contract

    inputs, kwargs = TuneShape(operation, "bf16", seq_q=4, heads=2, head_dim=8, tokens=3, hidden=16).inputs(
        torch.device("cpu"))
    assert set(inputs) <= set(contract(operation).inputs) and kwargs == {}
    assert all(t.dtype == torch.bfloat16 for t in inputs.values())


def test_unknown_operation_and_labels():
    with pytest.raises(ValueError, match="cannot build inputs for 'nope'"):
        TuneShape("nope").inputs(torch.device("cpu"))
    assert shape_label(TuneShape("nope", tokens=2, hidden=3)) == "nope t2 h3 bfloat16"
    assert shape_label(TuneShape("rope", "float32", seq_q=7)) == "rope b1 s7 h8/8 d64 float32"
    assert shape_label(TuneShape("attention.decode", seq_q=1, seq_k=9)) == "attention.decode b1 sq1 sk9 h8/8 d64 bfloat16"
