"""torch_eager_attention beyond the shared conformance grid: the paths only it has (the decode-window
slice, finite fully-masked rows, autograd) and its place in selection on the CPU."""

from __future__ import annotations

import pytest
import torch

from layerzero.kernels.reference import attention as reference_attention
from layerzero.kernels.torch_eager import torch_eager_attention


def _qkv(b, sq, sk, h, hkv, d, dtype=torch.float32, hf_layout=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    if hf_layout:  # Transformers' (B, H, S, D) tensors seen through the contract's (B, S, H, D) view
        q = torch.randn(b, h, sq, d, generator=g, dtype=dtype).transpose(1, 2)
        k = torch.randn(b, hkv, sk, d, generator=g, dtype=dtype).transpose(1, 2)
        v = torch.randn(b, hkv, sk, d, generator=g, dtype=dtype).transpose(1, 2)
    else:
        q, k, v = (torch.randn(b, s, n, d, generator=g, dtype=dtype) for s, n in ((sq, h), (sk, hkv), (sk, hkv)))
    return q, k, v


def _call(fn, q, k, v, **kw):
    args = dict(attn_mask=None, is_causal=False, scale=None, dropout_p=0.0, sliding_window=None, softcap=None,
                sinks=None, enable_gqa=True)
    args.update(kw)
    return fn(q, k, v, **args)


@pytest.mark.parametrize("hf_layout", [True, False])
def test_decode_window_slice_with_padding_mask_matches_reference(hf_layout):
    # one query, a window shorter than the cache (the slice path), a per-sequence bool padding mask and
    # an additive one, softcap and GQA 4: every option a Gemma-2 sliding layer passes in decode
    q, k, v = _qkv(2, 1, 40, 8, 2, 32, hf_layout=hf_layout)
    pad = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    pad[1, ..., :7] = False  # the second sequence is left-padded by 7
    for mask in (pad, torch.where(pad, 0.0, -1e4)):
        kw = dict(attn_mask=mask, is_causal=True, sliding_window=16, softcap=50.0)
        torch.testing.assert_close(_call(torch_eager_attention, q, k, v, **kw),
                                   _call(reference_attention, q, k, v, **kw), atol=1e-5, rtol=1e-5)


def test_sinks_and_per_head_mask_match_reference():
    q, k, v = _qkv(1, 5, 9, 4, 2, 16)
    mask = torch.rand(1, 4, 5, 9, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., -1] = True
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    kw = dict(attn_mask=mask, is_causal=True, sinks=sinks, softcap=20.0)
    torch.testing.assert_close(_call(torch_eager_attention, q, k, v, **kw),
                               _call(reference_attention, q, k, v, **kw), atol=1e-5, rtol=1e-5)


def test_a_row_that_may_attend_to_nothing_stays_finite():
    # a left-pad query in prefill: -inf masking would give NaN there, and NaN in a padded position's
    # hidden state reaches real positions through 0 * NaN in later layers' value matmul
    q, k, v = _qkv(1, 4, 4, 2, 2, 8)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 0, :] = False
    out = _call(torch_eager_attention, q, k, v, attn_mask=mask, is_causal=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 1:], _call(reference_attention, q, k, v, attn_mask=mask, is_causal=True)[:, 1:])


def test_gradients_match_reference():
    q, k, v = _qkv(1, 3, 6, 4, 2, 8, hf_layout=False)
    grads = []
    for fn in (torch_eager_attention, reference_attention):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        _call(fn, *leaves, is_causal=True, softcap=10.0).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rejects_dropout():
    q, k, v = _qkv(1, 1, 4, 2, 2, 8)
    with pytest.raises(ValueError, match="dropout_p=0.5"):
        _call(torch_eager_attention, q, k, v, dropout_p=0.5)


def test_on_the_cpu_it_ranks_ahead_of_uncompiled_flex():
    # SDPA cannot softcap or take sinks; uncompiled Flex is ~3x slower than this kernel on the CPU (benchmarks/decode_softcap.py --device cpu)
    from layerzero.dispatch import get_global_orchestrator

    orch = get_global_orchestrator()
    for facts in (dict(softcap=50.0), dict(has_sinks=True)):
        report = orch.explain("attention.decode", batch_size=1, seq_len=1, seq_len_q=1, seq_len_k=12,
                              num_heads=4, num_kv_heads=2, head_dim=16, dtype="float32", device="cpu",
                              platform="cpu", is_causal=True, **facts)
        rank = {c.kernel_id: c.rank for c in report.candidates if c.rank is not None}
        assert "torch_sdpa_attention" not in rank
        assert rank["torch_eager_attention"] < rank["torch_flex_attention"], rank
