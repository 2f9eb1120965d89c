"""Kernel adapters take their operation's signature from the operation (``implements``), never restate it."""

from __future__ import annotations

import inspect

import pytest
import torch

from layerzero.kernels.catalog import builtin_kernels
from layerzero.operations import expand, get, implements
from layerzero.operations.norm import RMS_NORM


def test_implements_copies_defaults_and_types_from_the_reference() -> None:
    @implements(RMS_NORM)
    def my_norm(x, weight, eps, offset, casting, residual, *, _config=None):
        return x, weight, eps, offset, casting, residual, _config

    x = torch.ones(2, 4)
    assert my_norm(x)[1:] == (None, 1e-6, 0.0, "llama", None, None)
    sig = inspect.signature(my_norm)
    assert sig.parameters["eps"].annotation is float
    assert list(sig.parameters)[-1] == "_config"


def test_implements_rejects_other_names_order_or_restated_defaults() -> None:
    with pytest.raises(TypeError, match="whose parameters are"):
        @implements(RMS_NORM)
        def swapped(x, eps, weight, offset, casting, residual):
            return x

    with pytest.raises(TypeError, match="restates defaults for \\['casting', 'residual'\\]"):
        @implements(RMS_NORM)
        def drifting(x, weight, eps, offset, casting="gemma", residual=None):
            return x


def test_every_registered_kernel_accepts_exactly_its_operations_signature() -> None:
    """The dispatcher calls the kernels of an operation interchangeably: same names, order and defaults."""
    checked = 0
    for spec in builtin_kernels():
        params = [p for p in inspect.signature(spec.impl).parameters.values()
                  if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        for op_name in {op for pattern in spec.operations for op in expand(pattern)}:
            canonical = get(op_name).signature
            assert [(p.name, p.default) for p in params] == [
                (p.name, p.default) for p in canonical.parameters.values()], (spec.kernel_id, op_name)
            checked += 1
    assert checked > 20
