"""When a torch profiler records, each dispatch shows as a range named after the kernel that ran."""

from __future__ import annotations

import torch

from layerzero.dispatch import DispatchConfig, create_orchestrator


def _orch():
    return create_orchestrator(DispatchConfig())


def test_profiler_ranges_are_named_after_the_kernel_that_ran():
    orch = _orch()
    x, w = torch.randn(4, 64), torch.randn(64)
    kernel = orch.dispatch("rms_norm", {"x": x, "weight": w}).kernel_id
    with torch.profiler.profile() as prof:
        orch.dispatch("rms_norm", {"x": x, "weight": w})
    assert f"layerzero::{kernel}" in {e.key for e in prof.key_averages()}
