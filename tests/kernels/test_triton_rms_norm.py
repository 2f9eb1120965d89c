"""Conformance of the Triton RMSNorm against the fp32 reference.

On CPU these run through the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on tiny
shapes; the interpreter truncates fp32->bf16 instead of rounding to nearest, so bf16 tolerances allow a
couple of ulps. GPU tests (``-m gpu``) use model-sized shapes.
"""

from __future__ import annotations

import pytest
import torch

from layerzero.kernels import reference
from layerzero.kernels.triton.rms_norm import launch_config, rms_norm

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (2e-2, 2e-2)}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    rtol, atol = TOL[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("casting,offset", [("llama", 0.0), ("llama", 1.0), ("gemma", 1.0), ("gemma", 0.0), ("none", 0.0)])
def test_matches_reference(dtype, casting, offset):
    x = torch.randn(2, 3, 40, dtype=dtype)  # non-power-of-two hidden, 3-d input
    w = torch.randn(40, dtype=dtype)
    x0 = x.clone()
    out = rms_norm(x, w, eps=1e-5, offset=offset, casting=casting)
    _close(out, reference.rms_norm(x, w, eps=1e-5, offset=offset, casting=casting))
    assert torch.equal(x, x0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("config", [None, (0, 16, 4, 1), (2, 64, 4, 3)], ids=["default", "long-row-loop", "row-tiles"])
def test_fused_residual(dtype, config):
    x = torch.randn(5, 50, dtype=dtype)
    r = torch.randn(5, 50, dtype=dtype)
    w = torch.randn(50, dtype=dtype)
    x0, r0 = x.clone(), r.clone()
    normed, summed = rms_norm(x, w, eps=1e-6, offset=1.0, casting="gemma", residual=r, _config=config)
    exp_normed, exp_summed = reference.rms_norm(x, w, eps=1e-6, offset=1.0, casting="gemma", residual=r)
    _close(summed, exp_summed)
    if dtype == torch.float32:
        assert torch.equal(summed, exp_summed)
    # normalising the kernel's own sum isolates the norm from the interpreter's bf16 truncation of the sum
    _close(normed, reference.rms_norm(summed, w, eps=1e-6, offset=1.0, casting="gemma"))
    _close(normed, exp_normed)
    assert torch.equal(x, x0) and torch.equal(r, r0)


def test_packs_many_short_rows_with_a_partial_last_block():
    x = torch.randn(37, 24)
    w = torch.randn(24)
    block_m, block_n, _, _ = launch_config(37, 24)
    assert block_m > 1 and 37 % block_m and block_n == 32
    _close(rms_norm(x, w), reference.rms_norm(x, w))


def test_long_row_loop_matches():
    x = torch.randn(3, 100)
    w = torch.randn(100)
    _close(rms_norm(x, w, casting="llama", _config=(0, 32, 4, 1)), reference.rms_norm(x, w))
    assert launch_config(4, 20000)[0] == 0  # rows past 16384 elements take the loop


def test_strided_rows_and_columns():
    base = torch.randn(6, 64)
    x = base[:, :48]  # row stride 64: addressed in place, no copy
    w = torch.randn(48)
    _close(rms_norm(x, w), reference.rms_norm(x, w))
    xt = torch.randn(48, 6).t()  # column stride 6
    _close(rms_norm(xt, w), reference.rms_norm(xt, w))
    x4 = torch.randn(2, 3, 4, 16).transpose(1, 2)  # leading dims not collapsible: reshaped
    w16 = torch.randn(16)
    _close(rms_norm(x4, w16), reference.rms_norm(x4, w16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transposed_heads_are_normalised_in_memory_order(dtype):
    """Gemma-3 normalises q/k after the (B, S, H, D) -> (B, H, S, D) transpose: the kernel reads the block
    as it lies (no copy) and returns an output with the input's strides, like Transformers' own norm."""
    from layerzero.kernels.triton import rms_norm as mod

    w = torch.randn(16, dtype=dtype)
    big = torch.randn(3, 5, 4, 16, dtype=dtype)
    for x in (big.transpose(1, 2), big[1:].transpose(1, 2), big.permute(2, 0, 1, 3)):  # with a storage offset too
        assert not x.is_contiguous() and mod._permuted_dense(x, 16)
        out = rms_norm(x, w, eps=1e-6, offset=1.0, casting="gemma")
        assert out.stride() == x.stride()
        _close(out, reference.rms_norm(x, w, eps=1e-6, offset=1.0, casting="gemma"))
    x = big.transpose(1, 2)
    r = torch.randn(3, 5, 4, 16, dtype=dtype).transpose(1, 2)  # same strides: fused in memory order
    normed, summed = rms_norm(x, w, eps=1e-6, residual=r)
    assert normed.stride() == summed.stride() == x.stride()
    _close(summed, reference.rms_norm(x, w, eps=1e-6, residual=r)[1])
    _close(normed, reference.rms_norm(summed, w, eps=1e-6))
    r_other = torch.randn(3, 4, 5, 16, dtype=dtype)  # other strides: the reshape path, contiguous outputs
    normed, summed = rms_norm(x, w, eps=1e-6, residual=r_other)
    assert normed.is_contiguous() and summed.is_contiguous()
    _close(normed, reference.rms_norm(x, w, eps=1e-6, residual=r_other)[0])
    gappy = big[:, :, :3].transpose(1, 2)  # a slice of the heads: not one dense block
    assert not mod._permuted_dense(gappy, 16)
    _close(rms_norm(gappy, w), reference.rms_norm(gappy, w))


def test_without_weight():
    x = torch.randn(4, 33)
    _close(rms_norm(x, None), reference.rms_norm(x, None))
    _close(rms_norm(x, None, offset=1.0, casting="gemma"), reference.rms_norm(x, None, offset=1.0, casting="gemma"))


def test_empty_input():
    out, summed = rms_norm(torch.randn(0, 8), torch.ones(8), residual=torch.randn(0, 8))
    assert out.shape == (0, 8) and summed.shape == (0, 8)


def test_errors_name_the_field():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="casting"):
        rms_norm(x, casting="fp32")
    with pytest.raises(ValueError, match="weight shape"):
        rms_norm(x, torch.ones(7))
    with pytest.raises(ValueError, match="residual shape"):
        rms_norm(x, residual=torch.randn(2, 9))
    with pytest.raises(ValueError, match="residual dtype"):
        rms_norm(x, residual=torch.randn(2, 8, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4, 2048, 4096), (8192, 8192), (3, 777, 5120), (64, 20000), (16384, 128)])
@pytest.mark.parametrize("casting,offset", [("llama", 0.0), ("gemma", 1.0)])
def test_gpu_large(dtype, shape, casting, offset):
    x = torch.randn(shape, dtype=dtype, device="cuda")
    r = torch.randn(shape, dtype=dtype, device="cuda")
    w = torch.randn(shape[-1], dtype=dtype, device="cuda")
    _close(rms_norm(x, w, offset=offset, casting=casting), reference.rms_norm(x, w, offset=offset, casting=casting))
    normed, summed = rms_norm(x, w, offset=offset, casting=casting, residual=r)
    exp_normed, exp_summed = reference.rms_norm(x, w, offset=offset, casting=casting, residual=r)
    assert torch.equal(summed, exp_summed)  # on GPU the bf16 rounding of the sum is exact
    _close(normed, exp_normed)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_gemma3_transposed_qk_norm(dtype):
    """Gemma-3's q/k norm input as the model passes it: (B, H, S, D) transposed from the projection."""
    x = torch.randn(2, 1024, 16, 128, dtype=dtype, device="cuda").transpose(1, 2)
    w = torch.randn(128, dtype=dtype, device="cuda")
    out = rms_norm(x, w, eps=1e-6, offset=1.0, casting="gemma")
    assert out.stride() == x.stride()
    _close(out, reference.rms_norm(x, w, eps=1e-6, offset=1.0, casting="gemma"))


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    x = torch.randn(4, 256, 2048, dtype=torch.bfloat16, device="cuda")
    r = torch.randn_like(x)
    w = torch.randn(2048, dtype=torch.bfloat16, device="cuda")

    def f(x, r, w):
        normed, summed = rms_norm(x, w, eps=1e-6, residual=r)
        return normed * 2, summed

    compiled = torch.compile(f, fullgraph=True)
    got = compiled(x, r, w)
    exp = f(x, r, w)
    assert torch.equal(got[1], exp[1])
    torch.testing.assert_close(got[0], exp[0], rtol=0, atol=0)


@pytest.mark.parametrize("m,n", [(3, 128), (5, 2048), (2, 8192), (3, 24000)],
                         ids=["packed-128", "one-row-2048", "one-row-8192", "long-row-loop"])
def test_gpu_launch_configs_under_the_interpreter(m, n, monkeypatch):
    """The tile shapes the CUDA heuristics pick (the interpreter picks its own otherwise): the same
    kernel code with the GPU's BLOCK_M/BLOCK_N, checked for correctness on CPU. Warps and cache hints
    only matter on hardware (-m gpu)."""
    import layerzero.kernels.triton.rms_norm as mod

    monkeypatch.setattr(mod, "_INTERPRETED", False)
    cfg = mod.launch_config(m, n)
    monkeypatch.undo()
    x, w, r = torch.randn(m, n), torch.randn(n), torch.randn(m, n)
    _close(rms_norm(x, w, eps=1e-6, _config=cfg), reference.rms_norm(x, w, eps=1e-6))
    normed, summed = rms_norm(x, w, eps=1e-6, residual=r, _config=cfg)
    exp_normed, exp_summed = reference.rms_norm(x, w, eps=1e-6, residual=r)
    _close(normed, exp_normed)
    _close(summed, exp_summed)
