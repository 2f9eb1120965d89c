"""``use_kernels`` forces kernels inside a block (like ``torch.nn.attention.sdpa_kernel``), for direct dispatch
and for patched modules' bound call sites, and says why when the forced kernel cannot run."""

from __future__ import annotations

import pytest
import torch

import layerzero
from layerzero import ops
from layerzero.dispatch import DispatchConfig, create_orchestrator
from layerzero.errors import InvalidInputError, KernelNotFoundError, NoKernelAvailableError


def _x():
    return {"x": torch.randn(4, 64), "weight": torch.randn(64)}


def test_block_forces_the_kernel_and_restores_the_choice_after():
    orch = create_orchestrator(DispatchConfig())
    default = orch.dispatch("rms_norm", _x()).kernel_id
    with layerzero.use_kernels(rms_norm="reference_rms_norm"):
        assert orch.dispatch("rms_norm", _x()).kernel_id == "reference_rms_norm"
        with layerzero.use_kernels({"rms_*": "torch_rms_norm"}):  # nested: the innermost wins
            assert orch.dispatch("rms_norm", _x()).kernel_id == "torch_rms_norm"
        assert orch.dispatch("rms_norm", _x()).kernel_id == "reference_rms_norm"
    assert orch.dispatch("rms_norm", _x()).kernel_id == default


def test_bound_call_sites_obey_the_block():
    orch = create_orchestrator(DispatchConfig())
    ops.register_orchestrator("lz_test_use_kernels", orch)
    try:
        site = ops.call_site("lz_test_use_kernels")
        x = _x()
        ops.rms_norm(x["x"], x["weight"], orchestrator=site)  # binds the site to the default plan
        with layerzero.use_kernels(rms_norm="reference_rms_norm"):
            ops.rms_norm(x["x"], x["weight"], orchestrator=site)
        snap = orch.get_telemetry()
        seen = {k for k, v in snap.per_kernel.items() if v.calls}
    finally:
        ops.unregister_orchestrator("lz_test_use_kernels")
    assert seen == {"torch_rms_norm", "reference_rms_norm"}, seen  # the bound plan, then the forced kernel


def test_a_kernel_that_cannot_run_raises_with_the_reason():
    orch = create_orchestrator(DispatchConfig())
    with layerzero.use_kernels(rms_norm="liger_rms_norm"):
        with pytest.raises(NoKernelAvailableError, match="liger_rms_norm"):
            orch.dispatch("rms_norm", _x())


def test_bad_blocks_are_refused_up_front():
    with pytest.raises(InvalidInputError, match="matches no operation"):
        with layerzero.use_kernels(rms_nrom="torch_rms_norm"):
            pass
    orch = create_orchestrator(DispatchConfig())
    with layerzero.use_kernels(rms_norm="torch_rms_nrom"):
        with pytest.raises(KernelNotFoundError, match="did you mean 'torch_rms_norm'"):
            orch.dispatch("rms_norm", _x())
