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


def test_inductor_computes_a_shared_input_once_for_many_consumers():
    """The point of the op: a cheap pointwise tensor read by several opaque consumers is built once (Inductor
    would otherwise inline its computation into each consumer), and the graph's results stay exact."""
    from torch._inductor.utils import run_and_get_code

    def f(x, y):
        table = torch.cos(x) * 2 + 1
        return sum(torch.ops.aten.mm(shared(table), y + i) for i in range(4))

    x, y = torch.randn(16, 16), torch.randn(16, 16)
    torch._dynamo.reset()
    got, (code, *_) = run_and_get_code(torch.compile(f, fullgraph=True, backend="inductor"), x, y)
    torch._dynamo.reset()
    torch.testing.assert_close(got, f(x, y))
    assert code.count("torch.ops.layerzero.shared.default(") == 4
    assert code.count("cos") >= 1
