"""Conformance of the Triton RoPE against the fp32 reference (HF ``apply_rotary_pos_emb`` semantics).

CPU runs go through the Triton interpreter on tiny shapes; GPU tests (``-m gpu``) use Llama-sized ones.
"""

from __future__ import annotations

import pytest
import torch

from layerzero.kernels import reference
from layerzero.kernels.triton.rope import rope

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (2e-2, 2e-2)}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    rtol, atol = TOL[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol)


def _cos_sin(batch, seq, rot, interleaved, dtype, device="cpu"):
    """HF-style full-width cos/sin: duplicated halves, or repeated pairs when interleaved."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float32, device=device) / rot))
    pos = torch.arange(seq, dtype=torch.float32, device=device)[None, :] + torch.arange(batch, device=device)[:, None] * 3
    ang = pos[..., None] * inv_freq
    emb = ang.repeat_interleave(2, -1) if interleaved else torch.cat((ang, ang), -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _qk(batch, seq, hq, hk, d, layout, dtype, device="cpu", hf_views=True):
    """q/k in ``layout``; for bhsd, HF's transposed views of (B, S, H, D) projections (non-contiguous)."""
    q = torch.randn(batch, seq, hq, d, dtype=dtype, device=device)
    k = torch.randn(batch, seq, hk, d, dtype=dtype, device=device)
    if layout == "bhsd":
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if not hf_views:
            q, k = q.contiguous(), k.contiguous()
    return q, k


CASES = {  # batch, seq, q heads, kv heads, head_dim, rot_dim
    "mha-full": (2, 5, 4, 4, 16, 16),
    "gqa-full": (2, 3, 6, 2, 32, 32),
    "gqa-partial": (1, 4, 4, 1, 24, 8),
    "partial-npot": (2, 3, 3, 3, 40, 20),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
def test_matches_reference(case, layout, interleaved):
    b, s, hq, hk, d, rot = CASES[case]
    q, k = _qk(b, s, hq, hk, d, layout, torch.float32)
    cos, sin = _cos_sin(b, s, rot, interleaved, torch.float32)
    q0, k0 = q.clone(), k.clone()
    qo, ko = rope(q, k, cos, sin, layout=layout, interleaved=interleaved)
    eq, ek = reference.rope(q, k, cos, sin, layout=layout, interleaved=interleaved)
    _close(qo, eq)
    _close(ko, ek)
    assert torch.equal(q, q0) and torch.equal(k, k0)  # inputs never modified
    assert qo.data_ptr() != q.data_ptr() and ko.data_ptr() != k.data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    q, k = _qk(2, 4, 4, 2, 32, "bhsd", dtype)
    cos, sin = _cos_sin(2, 4, 32, False, dtype)
    qo, ko = rope(q, k, cos, sin)
    eq, ek = reference.rope(q, k, cos, sin)
    _close(qo, eq)
    _close(ko, ek)
    assert qo.stride() == q.stride()  # output keeps the input's memory layout


def test_cos_broadcasts_over_batch_and_accepts_2d_and_unsqueezed():
    q, k = _qk(3, 4, 2, 2, 16, "bhsd", torch.float32, hf_views=False)
    cos, sin = _cos_sin(1, 4, 16, False, torch.float32)
    exp = reference.rope(q, k, cos, sin)
    for c, s_ in ((cos, sin), (cos[0], sin[0]), (cos.unsqueeze(1), sin.unsqueeze(1))):
        qo, ko = rope(q, k, c, s_)
        _close(qo, exp[0])
        _close(ko, exp[1])


def test_unsqueeze_dim_names_the_layout():
    q, k = _qk(2, 3, 4, 2, 16, "bshd", torch.float32)
    cos, sin = _cos_sin(2, 3, 16, False, torch.float32)
    qo, ko = rope(q, k, cos, sin, unsqueeze_dim=2)
    eq, ek = reference.rope(q, k, cos, sin, unsqueeze_dim=2)
    _close(qo, eq)
    _close(ko, ek)


@pytest.mark.parametrize("config", [(2, 2, 2, 4), (1, 8, 4, 4)], ids=["2-tokens-head-tiles", "gpu-default-shape"])
def test_token_and_head_tiling(config):
    q, k = _qk(1, 3, 5, 3, 16, "bshd", torch.float32)  # 3 tokens: the last token tile is partial
    cos, sin = _cos_sin(1, 3, 16, False, torch.float32)
    # (tokens per program, q-head tile, k-head tile, warps): 3 tiles of q heads and 2 of k heads, or one each
    qo, ko = rope(q, k, cos, sin, layout="bshd", _config=config)
    eq, ek = reference.rope(q, k, cos, sin, layout="bshd")
    _close(qo, eq)
    _close(ko, ek)


def test_errors_name_the_field():
    q, k = _qk(1, 2, 2, 2, 8, "bhsd", torch.float32)
    cos, sin = _cos_sin(1, 2, 8, False, torch.float32)
    with pytest.raises(ValueError, match="layout"):
        rope(q, k, cos, sin, layout="sbhd")
    with pytest.raises(ValueError, match="rot_dim"):
        rope(q, k, cos[..., :5], sin[..., :5])
    with pytest.raises(ValueError, match="rot_dim"):
        rope(q, k, torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    with pytest.raises(ValueError, match="unsqueeze_dim"):
        rope(q, k, cos, sin, unsqueeze_dim=3)
    with pytest.raises(ValueError, match="seq"):
        rope(q, k, cos[:, :1], sin[:, :1])


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize(
    "shape", [(4, 1024, 32, 8, 128, 128), (2, 512, 32, 32, 96, 32), (8, 1, 64, 8, 128, 128), (1, 300, 16, 16, 256, 256)]
)
@pytest.mark.parametrize("interleaved", [False, True])
def test_gpu_large(dtype, layout, shape, interleaved):
    b, s, hq, hk, d, rot = shape
    q, k = _qk(b, s, hq, hk, d, layout, dtype, "cuda")
    cos, sin = _cos_sin(b, s, rot, interleaved, dtype, "cuda")
    qo, ko = rope(q, k, cos, sin, layout=layout, interleaved=interleaved)
    eq, ek = reference.rope(q, k, cos, sin, layout=layout, interleaved=interleaved)
    _close(qo, eq)
    _close(ko, ek)


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    q, k = _qk(2, 64, 8, 2, 64, "bhsd", torch.bfloat16, "cuda")
    cos, sin = _cos_sin(2, 64, 64, False, torch.bfloat16, "cuda")

    def f(q, k, cos, sin):
        qo, ko = rope(q, k, cos, sin)
        return qo + 1, ko

    got = torch.compile(f, fullgraph=True)(q, k, cos, sin)
    exp = f(q, k, cos, sin)
    assert torch.equal(got[0], exp[0]) and torch.equal(got[1], exp[1])


@pytest.mark.parametrize("hq,hk,d", [(32, 8, 128), (32, 8, 64), (12, 4, 96)])
def test_gpu_launch_configs_under_the_interpreter(hq, hk, d, monkeypatch):
    """The tiles the CUDA heuristics pick for Llama/Qwen-like heads, run by the interpreter on 3 tokens."""
    import layerzero.kernels.triton.rope as mod

    monkeypatch.setattr(mod, "_INTERPRETED", False)
    cfg = mod.launch_config(3, hq, hk, d // 2)
    monkeypatch.undo()
    q, k = _qk(1, 3, hq, hk, d, "bhsd", torch.float32)
    cos, sin = _cos_sin(1, 3, d, False, torch.float32)
    qo, ko = rope(q, k, cos, sin, layout="bhsd", _config=cfg)
    eq, ek = reference.rope(q, k, cos, sin, layout="bhsd")
    _close(qo, eq)
    _close(ko, ek)
