"""Conformance of the Triton SwiGLU / GeGLU against the fp32 reference (interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

from layerzero.kernels import reference
from layerzero.kernels.triton.swiglu import geglu, swiglu

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (2e-2, 2e-2)}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    rtol, atol = TOL[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 7, 33), (5000,), ()], ids=["3d-npot", "multi-block", "scalar"])
def test_swiglu_matches_reference(dtype, shape):
    g = torch.randn(shape, dtype=dtype) * 3
    u = torch.randn(shape, dtype=dtype)
    g0, u0 = g.clone(), u.clone()
    _close(swiglu(g, u), reference.swiglu(g, u))
    assert torch.equal(g, g0) and torch.equal(u, u0)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # interpreter: exp(+big) = inf
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_geglu_matches_reference(dtype, approximate):
    g = torch.randn(4, 50, dtype=dtype) * 4  # wide range: tanh saturates, large negative inputs
    u = torch.randn(4, 50, dtype=dtype)
    _close(geglu(g, u, approximate), reference.geglu(g, u, approximate))


def test_halves_of_a_fused_projection_run_without_a_copy():
    gu = torch.randn(2, 5, 2 * 40)
    g, u = gu.chunk(2, dim=-1)  # row stride 80, Phi-3 gate_up_proj style
    assert not g.is_contiguous()
    _close(swiglu(g, u, _config=(16, 4)), reference.swiglu(g, u))
    _close(geglu(g, u), reference.geglu(g, u))


def test_transposed_inputs_are_handled():
    g = torch.randn(24, 6).t()
    u = torch.randn(6, 24)
    out = swiglu(g, u)
    assert out.is_contiguous()
    _close(out, reference.swiglu(g, u))


def test_errors_name_the_field():
    g = torch.randn(2, 8)
    with pytest.raises(ValueError, match="up shape"):
        swiglu(g, torch.randn(2, 9))
    with pytest.raises(ValueError, match="up dtype"):
        swiglu(g, torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="approximate"):
        geglu(g, g, approximate="erf")


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(16384, 14336), (3, 1000, 8192), (7, 11008)])
def test_gpu_large(dtype, shape):
    g = torch.randn(shape, dtype=dtype, device="cuda") * 3
    u = torch.randn(shape, dtype=dtype, device="cuda")
    _close(swiglu(g, u), reference.swiglu(g, u))
    _close(geglu(g, u), reference.geglu(g, u))
    gu = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype, device="cuda")
    a, b = gu.chunk(2, -1)
    _close(swiglu(a, b), reference.swiglu(a, b))


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    g = torch.randn(64, 4096, dtype=torch.bfloat16, device="cuda")
    u = torch.randn_like(g)

    def f(g, u):
        return swiglu(g, u) * 2 + geglu(g, u)

    assert torch.equal(torch.compile(f, fullgraph=True)(g, u), f(g, u))


@pytest.mark.parametrize("contiguous", [True, False], ids=["flat", "rows"])
def test_gpu_block_size_under_the_interpreter(contiguous):
    """The CUDA block size (flat: _FLAT_BLOCK elements per program; rows: up to _FLAT_BLOCK columns) on a
    size that leaves a partial last block."""
    import layerzero.kernels.triton.swiglu as mod

    blk = mod._FLAT_BLOCK
    if contiguous:
        gate, up = torch.randn(3, blk + 77), torch.randn(3, blk + 77)
    else:
        both = torch.randn(3, 2 * (blk + 77))
        gate, up = both[:, : blk + 77], both[:, blk + 77:]
    out = swiglu(gate, up, _config=(blk, mod._num_warps(blk)))
    torch.testing.assert_close(out, reference.swiglu(gate, up), rtol=1e-5, atol=1e-5)
