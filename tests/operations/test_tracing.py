"""``is_compile_tracing``: True only inside a torch.compile trace, never eagerly or under torch.export."""

from __future__ import annotations

import pytest
import torch

from layerzero.operations.tracing import is_compile_tracing


def _traced(x: torch.Tensor) -> torch.Tensor:
    return x + 1 if is_compile_tracing() else x - 1


def test_false_eagerly():
    assert is_compile_tracing() is False
    assert torch.equal(_traced(torch.zeros(2)), -torch.ones(2))


def test_true_inside_torch_compile():
    torch._dynamo.reset()
    try:
        got = torch.compile(_traced, fullgraph=True, backend="eager")(torch.zeros(2))
    finally:
        torch._dynamo.reset()
    assert torch.equal(got, torch.ones(2))


@pytest.mark.parametrize("strict", [False, True])
def test_false_inside_torch_export(strict):
    class M(torch.nn.Module):
        def forward(self, x):
            return _traced(x)

    program = torch.export.export(M(), (torch.zeros(2),), strict=strict)
    assert torch.equal(program.module()(torch.zeros(2)), -torch.ones(2))


def test_reads_the_export_flag_not_dynamos_folded_answer(monkeypatch):
    """Up to torch 2.12 Dynamo folds ``torch.compiler.is_exporting()`` to True in every trace; the answer
    must come from the flag torch.export sets, so a compile trace still counts as one."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)  # the folded answer
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", False)
    assert is_compile_tracing() is True
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", True)
    assert is_compile_tracing() is False
