"""Adapter details of the torch kernels that the value-level conformance grid cannot see."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layerzero.kernels import reference as ref
from layerzero.kernels.torch_flex import _masked_mod, torch_flex_attention
from layerzero.kernels.torch_sdpa import sdpa_inputs


def _qkv(b=2, sq=5, sk=9, h=4, hkv=2, d=32):
    return torch.randn(b, sq, h, d), torch.randn(b, sk, hkv, d), torch.randn(b, sk, hkv, d)


def test_sdpa_inputs_are_views_and_causal_is_bottom_right():
    q, k, v = _qkv()
    tq, tk, tv, mask, causal = sdpa_inputs(q, k, v, None, True, None)
    assert tq.data_ptr() == q.data_ptr() and tq.shape == (2, 4, 5, 32)  # transpose view, no copy
    assert tk.data_ptr() == k.data_ptr() and tv.data_ptr() == v.data_ptr()
    # Sq < Sk: torch's is_causal would be top-left, so an explicit bottom-right mask replaces it
    assert causal is False and mask.dtype == torch.bool
    assert torch.equal(mask, ref.attention_allowed_mask(5, 9, True, None, "cpu"))
    assert bool(mask[-1].all()) and not bool(mask[0, 5:].any())


def test_sdpa_inputs_square_causal_stays_a_flag_and_decode_drops_it():
    q, k, v = _qkv(sq=7, sk=7)
    *_, mask, causal = sdpa_inputs(q, k, v, None, True, None)
    assert mask is None and causal is True
    q1, k1, v1 = _qkv(sq=1, sk=9)
    *_, mask, causal = sdpa_inputs(q1, k1, v1, None, True, None)
    assert mask is None and causal is False  # one query at the end sees every key


def test_sdpa_inputs_merge_caller_mask_with_causality():
    q, k, v = _qkv(sq=6, sk=6)
    pad = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    pad[0, ..., :2] = False
    *_, mask, causal = sdpa_inputs(q, k, v, pad, True, None)
    assert causal is False and mask.shape == (2, 1, 6, 6)
    assert not bool(mask[0, 0, 5, 0]) and bool(mask[1, 0, 5, 0]) and not bool(mask[1, 0, 0, 1])
    additive = torch.zeros(2, 4, 6, 6)
    *_, mask, _ = sdpa_inputs(q, k, v, additive, True, 3)
    assert mask.dtype == torch.float32 and torch.isinf(mask[0, 0, 5, 0]) and mask[0, 0, 5, 4] == 0


def test_flex_reuses_one_score_mod_across_masks_and_stays_exact():
    q, k, v = _qkv(b=1, sq=6, sk=6, h=2, hkv=2, d=32)
    slot, mod = _masked_mod(None, True)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        m = torch.rand(1, 1, 6, 6, generator=g) > 0.4
        m[..., 0] = True
        out = torch_flex_attention(q, k, v, attn_mask=m)
        assert torch.allclose(out, ref.attention(q, k, v, attn_mask=m), atol=1e-5)
        assert _masked_mod(None, True) == (slot, mod)  # the same function object every call
        assert slot.mask is None  # the caller's mask is not kept alive after the call


def test_flex_runs_under_no_grad_when_no_input_needs_grad(monkeypatch):
    """Compiled Flex guards on the global grad mode: calls alternating grad-enabled and no_grad would compile
    every shape twice. Without a tensor that needs grad the kernel always runs under no_grad."""
    from layerzero.kernels import torch_flex

    seen = []
    real = torch_flex._flex_fn(torch.empty(0), torch.empty(0), torch.empty(0), {}, False)

    def spy(*args, **kwargs):
        seen.append(torch.is_grad_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_flex, "_flex_fn", lambda q, k, v, kwargs, with_lse: spy)
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    out = torch_flex.torch_flex_attention(q, k, v, is_causal=True)
    with torch.no_grad():
        torch_flex.torch_flex_attention(q, k, v, is_causal=True)
    assert seen == [False, False] and not out.requires_grad


def test_compiled_flex_gives_each_call_variant_its_own_entry_point(monkeypatch):
    """torch._dynamo counts its recompile limit (8) per code object: one compiled entry point shared by every
    call variant (score_mods, masks, dtypes, devices) hit it in one GPU test session. Each variant gets a
    compiled function with a code object of its own; the same variant gets the same one back."""
    from layerzero.kernels import torch_flex

    monkeypatch.setattr(torch_flex, "_compile_on_cpu", True)
    monkeypatch.setattr(torch_flex, "_compiled", {})
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append((fn, kw)) or fn)
    q = torch.empty(2, 2, 8, 16)
    causal = {"block_mask": object(), "enable_gqa": False, "score_mod": None}
    capped = {**causal, "score_mod": torch_flex._softcap_mod(5.0)}
    first = torch_flex._flex_fn(q, q, q, causal, False)
    assert torch_flex._flex_fn(q, q.clone(), q, dict(causal), False) is first
    # what a symbolic graph cannot absorb: score_mod, lse, dtype; one query token, batch 1 (dynamo
    # specializes size 1); a transposed cache view (strides are guarded)
    kv_view = torch.empty(2, 8, 2, 16).transpose(1, 2)
    others = [torch_flex._flex_fn(q, q, q, capped, False), torch_flex._flex_fn(q, q, q, causal, True),
              torch_flex._flex_fn(q.to(torch.bfloat16), q, q, causal, False),
              torch_flex._flex_fn(q[:, :, :1], q, q, causal, False), torch_flex._flex_fn(q[:1], q[:1], q[:1], causal, False),
              torch_flex._flex_fn(q, kv_view, kv_view, causal, False)]
    codes = {fn.__code__ for fn, _ in compiled}
    assert len(compiled) == 7 and len(codes) == 7 and all(kw == {"dynamic": None} for _, kw in compiled)
    assert all(fn is not first for fn in others)


def test_rms_norm_derived_weight_is_computed_once_per_parameter_version():
    """Gemma's fp32 ``1 + w`` is two ATen calls per norm call; it is kept per parameter until the parameter
    changes (in place, via ``.data``) and is never kept alive by the cache."""
    import gc
    import weakref

    from layerzero.kernels import torch_ops

    x = torch.randn(3, 16, dtype=torch.bfloat16)
    w = torch.nn.Parameter(torch.randn(16, dtype=torch.bfloat16) * 0.1, requires_grad=False)

    def run():
        return torch_ops.torch_rms_norm(x, w, 1e-6, 1.0, "gemma", None)

    def expected():
        return (F.rms_norm(x.float(), (16,), 1.0 + w.detach().float(), 1e-6)).to(torch.bfloat16)

    first = run()
    derived = torch_ops._DERIVED.get(w, 1.0, torch.float32)
    assert torch_ops._DERIVED.get(w, 1.0, torch.float32) is derived  # cached
    assert torch.equal(first, expected())
    w.mul_(2)  # in-place update bumps the version: recomputed
    assert torch_ops._DERIVED.get(w, 1.0, torch.float32) is not derived and torch.equal(run(), expected())
    w.data = torch.randn(16, dtype=torch.bfloat16)  # new storage: recomputed
    assert torch.equal(run(), expected())
    ref = weakref.ref(w)
    del w, run, expected
    gc.collect()
    assert ref() is None


def test_rms_norm_derived_weight_is_not_cached_for_a_weight_that_needs_a_gradient():
    from layerzero.kernels import torch_ops

    w = torch.nn.Parameter(torch.randn(16))
    first = torch_ops._DERIVED.get(w, 1.0, torch.float32)
    assert first.requires_grad and torch_ops._DERIVED.get(w, 1.0, torch.float32) is not first


@pytest.mark.gpu
def test_rms_norm_in_a_cuda_graph_follows_weight_updates():
    """A CUDA graph replays what it captured: a derived weight captured from the cache would keep the old
    values after an in-place update; computed inside the graph, it follows the parameter."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the device machine with -m gpu)")
    from layerzero.kernels import torch_ops

    x = torch.randn(8, 2304, device="cuda", dtype=torch.bfloat16)
    w = torch.nn.Parameter(torch.randn(2304, device="cuda", dtype=torch.bfloat16) * 0.1, requires_grad=False)
    torch_ops.torch_rms_norm(x, w, 1e-6, 1.0, "gemma", None)  # fills the cache outside the graph
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch_ops.torch_rms_norm(x, w, 1e-6, 1.0, "gemma", None)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch_ops.torch_rms_norm(x, w, 1e-6, 1.0, "gemma", None)
    w.mul_(3)
    graph.replay()
    expected = F.rms_norm(x.float(), (2304,), 1.0 + w.float(), 1e-6).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_rms_norm_derived_weight_is_not_cached_for_a_tensor_subclass():
    from layerzero.kernels import torch_ops

    class Wrapped(torch.Tensor):
        pass

    w = torch.randn(16).as_subclass(Wrapped)
    with torch.no_grad():
        assert torch_ops._DERIVED.get(w, 1.0, torch.float32) is not torch_ops._DERIVED.get(w, 1.0, torch.float32)
