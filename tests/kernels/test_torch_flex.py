"""Which calls get FlexAttention's measured kernel options (the kernel's numbers are checked by the GPU
conformance tier, which includes a Gemma-2 prefill shape that uses them)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from layerzero.kernels import torch_flex


def _tensor(device="cuda", dtype=torch.bfloat16, queries=1024, head_dim=256, requires_grad=False):
    """What kernel_options_for reads of a (B, H, S, D) tensor, without needing a GPU."""
    return SimpleNamespace(device=torch.device(device), dtype=dtype, shape=(8, 8, queries, head_dim),
                           requires_grad=requires_grad)


@pytest.fixture
def hopper(monkeypatch):
    monkeypatch.setattr(torch_flex, "_capability_major", lambda device: 9)


def test_measured_options_for_a_half_precision_prefill_on_the_measured_device(hopper):
    q = _tensor()
    assert torch_flex.kernel_options_for(q, q) == torch_flex.TUNED_KERNEL_OPTIONS[(9, 256)]
    assert torch_flex.kernel_options_for(_tensor(dtype=torch.float16), q) is not None


@pytest.mark.parametrize("q, why", [
    (_tensor(device="cpu"), "not CUDA"),
    (_tensor(dtype=torch.float32), "fp32 tiles of that size do not fit"),
    (_tensor(queries=1), "decode runs Flex's decoding kernel"),
    (_tensor(queries=127), "below the prefill threshold"),
    (_tensor(head_dim=128), "head_dim not measured"),
    (_tensor(requires_grad=True), "the backward has block sizes of its own"),
])
def test_defaults_everywhere_else(hopper, q, why):
    assert torch_flex.kernel_options_for(q, q) is None, why


def test_defaults_on_an_unmeasured_device_class(monkeypatch):
    monkeypatch.setattr(torch_flex, "_capability_major", lambda device: 8)
    q = _tensor()
    assert torch_flex.kernel_options_for(q, q) is None


def test_value_head_dim_must_match(hopper):
    assert torch_flex.kernel_options_for(_tensor(), _tensor(head_dim=128)) is None
