"""The Triton kernels' catalogue entries: lazy imports, honest constraints, contract-shaped calls."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from layerzero.kernels import reference
from layerzero.kernels.triton.specs import cpu_needs_interpreter, triton_kernels
from layerzero.operations import contract
from layerzero.context.call_context import SelectionContext

IDS = {"triton_rms_norm": "rms_norm", "triton_rope": "rope", "triton_swiglu": "swiglu", "triton_geglu": "geglu",
       "triton_decode_attention": "attention.decode", "triton_prefill_attention": "attention.prefill"}


def test_specs_do_not_import_triton():
    code = (
        "import sys; from layerzero.kernels.triton.specs import triton_kernels; ks = triton_kernels(); "
        "assert 'triton' not in sys.modules, 'specs imported triton'; print(len(ks))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(IDS))


def test_ids_operations_and_backend():
    specs = {k.kernel_id: k for k in triton_kernels()}
    assert set(specs) == set(IDS)
    for kid, op in IDS.items():
        assert specs[kid].serves(op) and specs[kid].backend == "triton"


def test_cpu_needs_the_interpreter(monkeypatch):
    ctx = SelectionContext(operation="rms_norm", dtype="float32", device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = cpu_needs_interpreter(ctx)
    assert reason and "TRITON_INTERPRET=1" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert cpu_needs_interpreter(ctx) is None
    assert cpu_needs_interpreter(ctx.replace(device="cuda:0", platform="cuda")) is None


def test_constraints_reject_what_the_kernels_cannot_do(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    specs = {k.kernel_id: k for k in triton_kernels()}
    base = SelectionContext(operation="rms_norm", dtype="bfloat16", device="cuda:0", casting="gemma", norm_offset=1.0)
    assert specs["triton_rms_norm"].constraints.check(base) == []
    assert any("autograd" in r for r in specs["triton_rms_norm"].constraints.check(base.replace(requires_grad=True)))
    assert any("float64" in r for r in specs["triton_rms_norm"].constraints.check(base.replace(dtype="float64")))
    rope_ctx = SelectionContext(operation="rope", dtype="float16", device="cuda:0", head_dim=128, rotary_dim=64,
                                num_heads=32, num_kv_heads=8, layout="bshd", interleaved=True)
    assert specs["triton_rope"].constraints.check(rope_ctx) == []
    assert any("odd" in r for r in specs["triton_rope"].constraints.check(rope_ctx.replace(rotary_dim=63)))
    assert any("layout" in r for r in specs["triton_rope"].constraints.check(rope_ctx.replace(layout="sbhd")))


def test_calls_through_the_spec_with_contract_arguments():
    specs = {k.kernel_id: k for k in triton_kernels()}
    x, w, r = torch.randn(3, 16), torch.randn(16), torch.randn(3, 16)
    args = specs["triton_rms_norm"].map_arguments({"x": x, "weight": w}, {"eps": 1e-6, "residual": r, "unknown": 1})
    assert set(args) <= contract("rms_norm").parameters
    normed, summed = specs["triton_rms_norm"](**args)
    torch.testing.assert_close(normed, reference.rms_norm(x, w, residual=r)[0])
    g, u = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(specs["triton_geglu"](gate=g, up=u, approximate="none"), reference.geglu(g, u, "none"))


@pytest.mark.gpu
def test_gpu_registry_lists_and_accepts_the_kernels():
    from layerzero.registry import get_global_kernel_registry

    reg = get_global_kernel_registry()
    ctx = SelectionContext(operation="swiglu", dtype="bfloat16", device="cuda:0")
    for kid in IDS:
        assert kid in reg
    assert reg.get("triton_swiglu").check(ctx) == []
