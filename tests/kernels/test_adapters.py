"""Adapters of GPU-only libraries, exercised on CPU against stand-in modules (see lz_fake_backends).

The stand-ins follow each library's documented semantics, so these tests check that the adapter passes
the right layout, masks/windows/softcap translation and output conversion, over the same case grid as
the conformance harness, filtered by the kernel's own constraints."""

from __future__ import annotations

import pytest
import torch

from lz_fake_backends import install
from lz_kernel_harness import Case, registry_kernels, representative_operation, run_case, run_conformance

BACKENDS = ("flash_attn", "flash_attn_3", "flashinfer", "xformers", "liger")
SPECS = [s for s in registry_kernels() if s.backend in BACKENDS]


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=("bf16", "fp32"))
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kernel_id)
def test_adapter_matches_reference_with_stand_in(monkeypatch, spec, dtype):
    install(monkeypatch, spec.backend)
    outcome = run_conformance(spec, representative_operation(spec), dtype, "cpu", assume_cuda=True)
    assert not outcome.failures, "\n".join(outcome.failures[:8])
    if dtype == torch.bfloat16:
        assert outcome.ran, f"{spec.kernel_id} accepted no case: {outcome.skipped}"


def _attn(b, sq, sk, h, hkv, d, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return {"query": mk(b, sq, h, d), "key": mk(b, sk, hkv, d), "value": mk(b, sk, hkv, d)}


def test_flash_attn_passes_tensors_through_and_uses_kvcache_for_decode(monkeypatch):
    from layerzero.kernels.flash_attn import flash_attn_v2_attention

    log = install(monkeypatch, "flash_attn")
    t = _attn(2, 16, 16, 8, 2, 64)
    flash_attn_v2_attention(**t, is_causal=True, sliding_window=4, softcap=30.0)
    name, info = log[-1]
    assert name == "flash_attn_func" and info["q"] is t["query"]  # no copy, no transpose
    assert info["window_size"] == (3, 0) and info["causal"] is True and info["softcap"] == 30.0
    flash_attn_v2_attention(**_attn(2, 1, 40, 8, 2, 64), is_causal=True)
    assert log.names()[-1] == "flash_attn_with_kvcache"


def test_flash_attn_rejects_masks_with_a_fix(monkeypatch):
    from layerzero.kernels.flash_attn import flash_attn_v2_attention

    install(monkeypatch, "flash_attn")
    t = _attn(1, 4, 4, 2, 2, 64)
    with pytest.raises(ValueError, match="attn_mask is not supported.*torch_sdpa_attention"):
        flash_attn_v2_attention(**t, attn_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool))


def test_flashinfer_single_vs_batch_paths(monkeypatch):
    from layerzero.kernels import flashinfer as fi

    log = install(monkeypatch, "flashinfer")
    fi._wrappers.clear()
    fi.flashinfer_prefill_attention(**_attn(1, 8, 8, 4, 2, 64), is_causal=True)
    assert log.names()[-1] == "single_prefill_with_kv_cache"
    fi.flashinfer_prefill_attention(**_attn(3, 8, 8, 4, 2, 64), is_causal=True, sliding_window=5)
    plans = [i for n, i in log if n == "BatchPrefillWithRaggedKVCacheWrapper.plan"]
    assert plans[-1]["qo"] == [0, 8, 16, 24] and plans[-1]["wl"] == 4
    fi.flashinfer_prefill_attention(**_attn(3, 8, 8, 4, 2, 64), is_causal=True, sliding_window=5)
    assert len([n for n in log.names() if n.endswith(".plan")]) == 1, "planned wrapper must be reused"
    fi.flashinfer_decode_attention(**_attn(4, 1, 33, 8, 2, 64))
    decode_plan = [i for n, i in log if n == "BatchDecodeWithPagedKVCacheWrapper.plan"][-1]
    assert decode_plan["indices"] == [0, 1, 2, 3] and decode_plan["last"] == [33] * 4 and decode_plan["page"] == 33


@pytest.mark.parametrize("batch", (1, 3))
def test_flashinfer_decode_reads_a_transformers_cache_view_in_place(monkeypatch, batch):
    """A Transformers cache stores (B, H, S, D) and hands attention the transposed view; FlashInfer needs
    contiguous pages (the H200 replay of real decode calls failed with "k must be contiguous"). The
    adapter passes that storage as FlashInfer's "HND" layout, copies only a cache that is contiguous in
    neither layout, and matches the reference in every case."""
    from layerzero.kernels import flashinfer as fi
    from layerzero.operations.attention import reference_attention

    log = install(monkeypatch, "flashinfer")
    fi._wrappers.clear()
    g = torch.Generator().manual_seed(3)
    q = torch.randn(batch, 1, 8, 64, generator=g).bfloat16()
    cache_k, cache_v = (torch.randn(batch, 2, 40, 64, generator=g).bfloat16() for _ in range(2))
    views = {
        "HND": (cache_k.transpose(1, 2), cache_v.transpose(1, 2)),  # what the model passes
        "NHD": (cache_k.transpose(1, 2).contiguous(), cache_v.transpose(1, 2).contiguous()),
        "copy": (cache_k.transpose(1, 2)[:, ::2], cache_v.transpose(1, 2)[:, ::2]),  # strided both ways
    }
    for expected_layout, (k, v) in views.items():
        out = fi.flashinfer_decode_attention(q, k, v, softcap=5.0)
        ref = reference_attention(q.float(), k.float(), v.float(), softcap=5.0)
        torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
        layout = [i for n, i in log if "kv_layout" in i][-1]["kv_layout"]
        assert layout == ("NHD" if expected_layout == "copy" else expected_layout)


def test_flashinfer_swiglu_is_zero_copy_for_chunked_halves(monkeypatch):
    from layerzero.kernels.flashinfer import flashinfer_swiglu

    log = install(monkeypatch, "flashinfer")
    fused = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    gate, up = fused.chunk(2, dim=-1)
    flashinfer_swiglu(gate, up)
    assert log[-1][1]["data_ptr"] == fused.data_ptr()
    flashinfer_swiglu(gate.clone(), up.clone())
    assert log[-1][1]["data_ptr"] != fused.data_ptr()


def test_xformers_uses_bmghk_for_gqa(monkeypatch):
    from layerzero.kernels.xformers import xformers_attention

    log = install(monkeypatch, "xformers")
    xformers_attention(**_attn(2, 6, 9, 8, 2, 64), is_causal=True)
    # the stand-in folds BMGHK into a 4-D call of itself: the adapter's own call is the one before
    assert log[-2][1] == {"ndim": 5, "bias": "LowerTriangularFromBottomRightMask"}
    xformers_attention(**_attn(2, 6, 6, 4, 4, 64), sliding_window=3)
    assert log[-1][1] == {"ndim": 4, "bias": "LocalAttentionFromBottomRightMask"}


def test_liger_rope_never_writes_into_the_callers_tensors(monkeypatch):
    """Liger's RoPE writes in place into q.transpose(1, 2).contiguous(); with HF's transposed-view q that
    is the caller's own storage. The adapter must hand Liger a private copy."""
    from layerzero.kernels.liger import liger_rope

    install(monkeypatch, "liger")
    base_q = torch.randn(2, 5, 4, 64)
    base_k = torch.randn(2, 5, 2, 64)
    q, k = base_q.transpose(1, 2), base_k.transpose(1, 2)
    keep_q, keep_k = base_q.clone(), base_k.clone()
    cos, sin = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    q2, k2 = liger_rope(q, k, cos, sin)
    assert torch.equal(base_q, keep_q) and torch.equal(base_k, keep_k)
    assert q2.shape == q.shape and k2.shape == k.shape


def test_liger_geglu_rejects_exact_gelu(monkeypatch):
    from layerzero.kernels.liger import liger_geglu

    install(monkeypatch, "liger")
    with pytest.raises(ValueError, match="tanh-only.*torch_geglu"):
        liger_geglu(torch.randn(2, 8), torch.randn(2, 8), approximate="none")


def test_fa3_tuple_output_is_unwrapped(monkeypatch):
    from layerzero.registry import get_global_kernel_registry

    install(monkeypatch, "flash_attn_3")
    spec = get_global_kernel_registry().get("flash_attn_v3_attention")
    case = Case("fa3", _attn(1, 8, 8, 4, 2, 64), {"is_causal": True})
    assert run_case(spec, "attention.prefill", case, torch.bfloat16, assume_cuda=True) == ("ran", None)
