"""Every kernel, dispatched with its tensors on ``cuda:1`` while ``cuda:0`` is the current device.

A model split over two GPUs with an accelerate device map runs half its layers on ``cuda:1`` while the
process's current device stays ``cuda:0``. Kernels that launch on the current device (Triton, FlashInfer,
Liger) then read ``cuda:1`` memory from a ``cuda:0`` stream, unordered with the producer: wrong logits. The
dispatcher's runner makes the tensors' GPU current around every kernel; this test holds it to that for
every kernel that can run the case, through the same runner patched models use. Output verification is
off here, so a wrong result is served and seen rather than quietly replaced by the next kernel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
from lz_kernel_harness import (  # noqa: E402
    REFERENCE,
    compare_to_reference,
    cases_for,
    family,
    registry_kernels,
    representative_operation,
)

from layerzero.dispatch import DispatchConfig, DispatchMode, create_orchestrator  # noqa: E402
from layerzero.selection import SelectionContext  # noqa: E402

pytestmark = pytest.mark.gpu

TWO_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2
# Kernels that JIT-compile per configuration (FlashInfer) or per shape (Flex) would dominate the run: the
# guard is the same code for every kernel, so they are covered by their first case only.
FIRST_CASE_ONLY = ("flashinfer_", "torch_flex_")


@pytest.mark.skipif(not TWO_GPUS, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("spec", registry_kernels(), ids=lambda s: s.kernel_id)
def test_kernel_on_second_gpu_while_first_is_current(spec):
    op = representative_operation(spec)
    dtype = torch.bfloat16
    orch = create_orchestrator(DispatchConfig(
        mode=DispatchMode.STATIC, static_kernel_map={op: spec.kernel_id}, verify_kernels=False,
        verify_sample_every=0, enable_fallback=False, circuit_breaker_enabled=False))
    cases = cases_for(op, dtype, "cuda:1")
    if spec.kernel_id.startswith(FIRST_CASE_ONLY):
        cases = cases[:1]
    ran = 0
    torch.cuda.set_device(0)
    for case in cases:
        ctx = SelectionContext.from_inputs(op, case.inputs, **case.kwargs)
        if spec.check(ctx):
            continue
        with torch.no_grad():
            result = orch.dispatch(op, case.inputs, **case.kwargs)
        if result.kernel_id != spec.kernel_id:
            continue
        assert torch.cuda.current_device() == 0, "the guard must restore the caller's current device"
        outs = result.output if isinstance(result.output, tuple) else (result.output,)
        assert all(o.device == torch.device("cuda:1") for o in outs)
        args = spec.map_arguments(case.inputs, case.kwargs)
        expected = REFERENCE[family(op)](**{k: v for k, v in args.items() if k != "enable_gqa"})
        torch.cuda.synchronize(1)
        why = compare_to_reference(result.output, expected, dtype, family(op))
        assert why is None, f"{spec.kernel_id} on cuda:1 with cuda:0 current: {case.name}: {why}"
        ran += 1
    if not ran:
        pytest.skip(f"{spec.kernel_id} runs none of the {op} cases on this machine")
