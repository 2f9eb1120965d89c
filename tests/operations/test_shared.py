"""``shared``: one opaque buffer under torch.compile, the identity eagerly."""

from __future__ import annotations

import torch

from layerzero.operations.shared import shared


def test_identity_eagerly():
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
    assert shared(mask) is mask


def test_a_copy_with_the_same_values_under_compile():
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
    torch._dynamo.reset()
    copied = torch.compile(lambda m: shared(m & m), fullgraph=True, backend="eager")(mask)
    assert copied is not mask and torch.equal(copied, mask)
    torch._dynamo.reset()


def test_left_out_of_an_exported_graph():
    """``torch.export`` graphs run elsewhere: they keep the plain tensor, not a LayerZero op."""

    class Mask(torch.nn.Module):
        def forward(self, x):
            return shared(x & x)

    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
    program = torch.export.export(Mask(), (mask,))
    assert "layerzero" not in str(program.graph)
    assert torch.equal(program.module()(mask), mask)

# What the op is for (one buffer where Inductor would rebuild a tensor per consumer) shows only in a model's
# graph: tests/hf/test_attention.py::test_inductor_builds_the_mask_and_the_rope_tables_once_per_forward.
