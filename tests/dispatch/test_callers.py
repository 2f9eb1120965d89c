"""Keyword callers: a kernel call spelled out for one set of argument names is the same call as
``impl(**inputs, **kwargs)`` for exactly those names, and declines (without calling) any other names."""

from __future__ import annotations

import pytest
import torch

from layerzero.dispatch import DispatchConfig, Dispatcher
from layerzero.dispatch.callers import OTHER_NAMES, keyword_caller, unwritten
from layerzero.registry import KernelRegistry, KernelSpec


def _seen(**kwargs):
    return kwargs


def test_a_caller_passes_exactly_its_names_in_any_dict_order():
    call = keyword_caller(("x", "weight"), ("eps", "casting"))
    inputs, kwargs = {"weight": 2, "x": 1}, {"casting": "llama", "eps": 1e-6}
    assert call(_seen, inputs, kwargs) == _seen(**inputs, **kwargs)
    assert keyword_caller(("x", "weight"), ("eps", "casting")) is call  # one caller per set of names


@pytest.mark.parametrize("inputs, kwargs", [
    ({"x": 1, "weight": 2}, {"eps": 1e-6}),                                   # one name fewer
    ({"x": 1, "weight": 2}, {"eps": 1e-6, "casting": "llama", "offset": 0}),  # one name more
    ({"x": 1, "weight": 2}, {"eps": 1e-6, "castng": "llama"}),                # a misspelt name
    ({"x": 1, "bias": 2}, {"eps": 1e-6, "casting": "llama"}),                 # a name moved
])
def test_other_names_never_reach_the_kernel(inputs, kwargs):
    def kernel(**kw):
        raise AssertionError("called")

    assert keyword_caller(("x", "weight"), ("eps", "casting"))(kernel, inputs, kwargs) is OTHER_NAMES
    assert unwritten(kernel, inputs, kwargs) is OTHER_NAMES


@pytest.mark.parametrize("inputs, options", [(("x", "eps"), ("eps",)), (("x",), ("lambda",)), (("x",), ("a-b",))])
def test_names_a_keyword_call_cannot_spell_get_no_caller(inputs, options):
    assert keyword_caller(inputs, options) is None


def test_a_bound_call_follows_its_argument_names_as_they_change():
    seen = []

    def kernel(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        seen.append((eps, offset, casting))
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (weight if weight is not None else 1)

    reg = KernelRegistry([KernelSpec("lz_seen_norm", "rms_norm", "torch", kernel, priority=90)])
    d = Dispatcher(DispatchConfig(verify_kernels=False, verify_sample_every=0), kernel_registry=reg)
    bound = d.bind("rms_norm")
    inp = {"x": torch.randn(2, 8), "weight": torch.ones(8)}
    for kwargs in ({"eps": 1e-5}, {"eps": 1e-5}, {}, {}, {"eps": 1e-3}):  # eps is not in the key: one plan
        bound(inp, kwargs)
    assert seen == [(1e-5, 0.0, "llama")] * 2 + [(1e-6, 0.0, "llama")] * 2 + [(1e-3, 0.0, "llama")]
    assert bound.binds == 1 and d.telemetry.snapshot().dispatch_count == 5
