"""Conformance of the Triton prefill attention against the fp32 reference, and its place in selection.

CPU runs go through the Triton interpreter on small shapes (the softcap there is the exact exp form; the
GPU's ``tanh.approx`` path is compiled for sm90 below and run by the ``-m gpu`` tests on Gemma-2 shapes).
"""

from __future__ import annotations

import pytest
import torch

from layerzero.context.call_context import SelectionContext
from layerzero.kernels import reference
from layerzero.kernels.triton.prefill_attention import launch_config, prefill_attention
from layerzero.validation import tolerance
from lz_triton_helpers import LaunchRecorder, compiles_for_sm90


def _qkv(b, sq, sk, h, hkv, d, dtype=torch.float32, device="cpu", dv=None, bhsd=True):
    """(B, S, H, D) query/key/value; ``bhsd``: as Transformers hands them over, transposed views of
    contiguous (B, H, S, D) tensors."""
    dv = d if dv is None else dv

    def make(s, heads, width):
        if bhsd:
            return torch.randn(b, heads, s, width, dtype=dtype, device=device).transpose(1, 2)
        return torch.randn(b, s, heads, width, dtype=dtype, device=device)

    return make(sq, h, d), make(sk, hkv, d), make(sk, hkv, dv)


def _check(q, k, v, _config=None, **kw) -> torch.Tensor:
    got = prefill_attention(q, k, v, None, kw.get("is_causal", False), kw.get("scale"), 0.0,
                            kw.get("sliding_window"), kw.get("softcap"), None, True, _config=_config)
    expected = reference.attention(q, k, v, enable_gqa=True, **kw)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    atol, rtol = tolerance("attention.prefill", expected.dtype)
    torch.testing.assert_close(got.float(), expected.float(), atol=atol, rtol=rtol)
    return got


# ---------------------------------------------------------------------------------------------- CPU
# (name, batch, seq_q, seq_k, heads, kv_heads, head_dim, value head_dim, options, config)
SMALL = (16, 16, 4, 1)  # 16-row tiles: several blocks per program, the diagonal, window and edge ranges
CASES = [
    ("causal_gqa", 2, 37, 37, 4, 2, 32, 32, {"is_causal": True}, None),
    ("softcap_window", 1, 70, 70, 2, 1, 64, 64, {"is_causal": True, "softcap": 5.0, "sliding_window": 9}, None),
    ("small_tiles_every_range", 1, 130, 130, 2, 1, 32, 32, {"is_causal": True, "sliding_window": 17, "softcap": 3.0},
     SMALL),
    ("chunk_after_cache", 2, 5, 40, 4, 2, 32, 32, {"is_causal": True, "softcap": 4.0}, SMALL),
    ("more_queries_than_keys", 1, 40, 20, 2, 2, 32, 32, {"is_causal": True}, SMALL),
    ("non_causal_window_scale", 1, 33, 50, 4, 2, 16, 24, {"sliding_window": 5, "softcap": 2.0, "scale": 0.3}, None),
    ("cross_attention", 2, 9, 23, 4, 4, 32, 32, {}, None),
    ("odd_head_dim", 1, 19, 19, 6, 3, 80, 80, {"is_causal": True, "scale": 0.2}, None),
    ("window_wider_than_keys", 1, 21, 21, 2, 1, 32, 32, {"is_causal": True, "sliding_window": 64}, SMALL),
]


@pytest.mark.parametrize("name,b,sq,sk,h,hkv,d,dv,opts,config", CASES, ids=[c[0] for c in CASES])
def test_matches_reference_fp32(name, b, sq, sk, h, hkv, d, dv, opts, config):
    q, k, v = _qkv(b, sq, sk, h, hkv, d, dv=dv)
    _check(q, k, v, _config=config, **opts)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_gemma_like(dtype):
    """Gemma-2's call: head_dim 256, softcap 50, its query_pre_attn_scalar scale, a window that does not bite."""
    q, k, v = _qkv(1, 24, 24, 8, 4, 256, dtype)
    _check(q, k, v, is_causal=True, softcap=50.0, sliding_window=4096, scale=256 ** -0.5)


def test_contiguous_canonical_layout():
    q, k, v = _qkv(2, 17, 17, 4, 2, 64, bhsd=False)
    _check(q, k, v, is_causal=True, softcap=10.0)


def test_query_that_sees_no_key_returns_zeros():
    """More queries than keys, causal bottom-right: the first Sq - Sk queries sit before every key."""
    q, k, v = _qkv(1, 12, 4, 2, 2, 16)
    got = _check(q, k, v, _config=SMALL, is_causal=True)
    assert torch.equal(got[:, :8], torch.zeros_like(got[:, :8]))


def test_inputs_are_not_modified():
    q, k, v = _qkv(1, 10, 10, 4, 2, 32)
    before = [t.clone() for t in (q, k, v)]
    prefill_attention(q, k, v, None, True, None, 0.0, None, 5.0, None, True)
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v)))


@pytest.mark.parametrize(
    "q_shape,k_shape,kwargs,match",
    [
        ((2, 3, 4, 32), (2, 10, 2, 32), dict(dropout_p=0.1), "dropout_p=0.1"),
        ((2, 3, 4, 32), (2, 10, 2, 32), dict(attn_mask=torch.ones(2, 1, 3, 10, dtype=torch.bool)), "takes no attn_mask"),
        ((2, 3, 4, 32), (2, 10, 2, 32), dict(sinks=torch.zeros(4)), "takes no sinks"),
        ((2, 3, 4, 32), (2, 10, 3, 32), {}, "must divide query heads"),
        ((2, 3, 4, 320), (2, 10, 2, 320), {}, "head_dim 320"),
        ((2, 3, 4, 32), (1, 10, 2, 32), {}, "does not match query"),
    ],
    ids=["dropout", "mask", "sinks", "gqa-ratio", "head-dim", "batch"],
)
def test_errors_name_the_argument_and_the_fix(q_shape, k_shape, kwargs, match):
    q, k = torch.randn(q_shape), torch.randn(k_shape)
    args = dict(attn_mask=None, is_causal=True, scale=None, dropout_p=0.0, sliding_window=None, softcap=None,
                sinks=None, enable_gqa=True)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        prefill_attention(q, k, k, **args)


def test_wrapper_traces_under_torch_compile_fullgraph(monkeypatch):
    """The host code only reads shapes/strides and launches: dynamo traces it without a graph break, with
    static and dynamic shapes (the launch is a stand-in here; the GPU test compiles the real kernel)."""
    import layerzero.kernels.triton.prefill_attention as mod

    monkeypatch.setattr(mod, "_prefill_attention", LaunchRecorder())
    q, k, v = _qkv(2, 9, 9, 4, 2, 32)

    def f(q, k, v):
        return mod.prefill_attention(q, k, v, None, True, None, 0.0, 4, 5.0, None, True).shape

    for dynamic in (False, True):
        torch._dynamo.reset()
        shape = torch.compile(f, backend="eager", fullgraph=True, dynamic=dynamic)(q, k, v)
        assert tuple(shape) == (2, 9, 4, 32)


def test_launch_config_never_depends_on_sequence_lengths(monkeypatch):
    import layerzero.kernels.triton.prefill_attention as mod

    monkeypatch.setattr(mod, "_INTERPRETED", False)
    assert mod.launch_config(128, torch.bfloat16) == (64, 64, 4, 3)
    assert mod.launch_config(256, torch.bfloat16) == (128, 64, 8, 2)
    assert mod.launch_config(256, torch.float32)[0] <= 64


# Compiles the kernel for sm90 without a GPU (Triton's own ptxas), in a process without TRITON_INTERPRET: the
# code paths the CPU interpreter never takes (the hardware tanh's inline PTX, for-loops over runtime bounds,
# half-precision tl.dot).
_COMPILE_FOR_SM90 = """
import inspect, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import layerzero.kernels.triton.prefill_attention as pa

def build(types, constexprs, **options):
    sig = {p: "constexpr" if p in constexprs else types.get(p, "i32")
           for p in inspect.signature(pa._prefill_attention.fn).parameters}
    return triton.compile(ASTSource(fn=pa._prefill_attention, signature=sig, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32), options=options)

for dt, d, (bm, bn, warps, stages) in (("bf16", 256, (128, 64, 8, 2)), ("bf16", 128, (64, 64, 4, 3)),
                                       ("fp32", 80, (64, 32, 4, 2))):
    ce = dict(H=8, GROUP=2, D=d, DV=d, BLOCK_D=triton.next_power_of_2(d), BLOCK_DV=triton.next_power_of_2(d),
              BLOCK_M=bm, BLOCK_N=bn, IS_CAUSAL=True, HAS_WINDOW=True, HAS_SOFTCAP=True, FAST_TANH=True,
              PRECISION="ieee" if dt == "fp32" else "tf32", DOT_F32=dt == "fp32", LOOP_WHILE=False)
    types = dict(Q="*" + dt, K="*" + dt, V="*" + dt, O="*" + dt, qk_scale="fp32", cap_pre="fp32", cap_post="fp32")
    kernel = build(types, ce, num_warps=warps, num_stages=stages)
    assert "tanh.approx.f32" in kernel.asm["ptx"], "the softcap must use the hardware tanh"
print("compiled")
"""


def test_kernel_compiles_for_sm90_without_a_gpu():
    compiles_for_sm90(_COMPILE_FOR_SM90)


# ---------------------------------------------------------------------------------------------- selection
def _prefill_ctx(**kw) -> SelectionContext:
    base = dict(operation="attention.prefill", batch_size=8, seq_len_q=1024, seq_len_k=1024, num_heads=8,
                num_kv_heads=4, head_dim=256, dtype="bfloat16", device="cuda:0", platform="cuda",
                compute_capability=(9, 0), is_causal=True)
    base.update(kw)
    return SelectionContext(**base)


def test_selection_ranks_it_above_flex_for_soft_capped_prefill_only():
    from layerzero.dispatch.orchestrator import create_orchestrator

    orch = create_orchestrator()
    softcap = orch.explain("attention.prefill", _prefill_ctx(softcap=50.0))
    order = softcap.fallback_order
    if "flashinfer_prefill_attention" not in order:  # FlashInfer, where installed, ranks first
        assert softcap.chosen == "triton_prefill_attention", str(softcap)
    if "torch_flex_attention" in order:
        assert order.index("triton_prefill_attention") < order.index("torch_flex_attention")
    plain = orch.explain("attention.prefill", _prefill_ctx())
    assert plain.chosen.startswith("torch_sdpa"), str(plain)
    decode = orch.explain("attention.decode", _prefill_ctx(operation="attention.decode", seq_len_q=1, softcap=50.0))
    assert decode.chosen == "triton_decode_attention"
    assert any("seq_len_q 1" in r for r in decode["triton_prefill_attention"].reasons)
    masked = orch.explain("attention.prefill", _prefill_ctx(softcap=50.0, attn_mask="bool"))
    assert masked.chosen != "triton_prefill_attention"


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("b,s", [(2, 1024), (1, 4099), (8, 77)])
@pytest.mark.parametrize("d,h,hkv", [(256, 8, 4), (128, 16, 8), (64, 32, 8)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_gemma_shapes(b, s, d, h, hkv, dtype):
    q, k, v = _qkv(b, s, s, h, hkv, d, dtype, "cuda")
    _check(q, k, v, is_causal=True, softcap=50.0, sliding_window=4096, scale=d ** -0.5)
    _check(q, k, v, is_causal=True, softcap=50.0, sliding_window=300)
    _check(q, k, v, is_causal=True)


@pytest.mark.gpu
def test_gpu_fp32_chunked_prefill_and_cross():
    q, k, v = _qkv(2, 130, 700, 8, 4, 128, torch.float32, "cuda")
    _check(q, k, v, is_causal=True, softcap=30.0, sliding_window=200)
    _check(q, k, v, softcap=30.0)


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    q, k, v = _qkv(2, 300, 300, 8, 4, 256, torch.bfloat16, "cuda")

    def f(q, k, v):
        return prefill_attention(q, k, v, None, True, None, 0.0, 64, 50.0, None, True) + 1

    got = torch.compile(f, fullgraph=True)(q, k, v)
    torch.testing.assert_close(got, f(q, k, v))


# ---------------------------------------------------------------------------------------------- long sequences
@pytest.mark.parametrize("kernel", ["prefill", "decode"])
def test_rows_past_32_bit_offsets_are_refused_before_launch(kernel):
    """A (B, S, H, D) key whose rows within one head span 2**31 elements or more would wrap the kernels' 32-bit
    row offsets (silently reading other memory): refused by the argument check, naming the tensor and the way
    out. Meta tensors: the shapes and strides without the memory."""
    from layerzero.kernels.triton.decode_attention import decode_attention

    sq = 1 if kernel == "decode" else 4
    q = torch.empty(1, sq, 8, 128, device="meta")
    k = torch.empty_strided((1, 2**22, 8, 128), (2**32, 1024, 128, 1), device="meta")  # contiguous (B, S, H, D)
    call = decode_attention if kernel == "decode" else prefill_attention
    with pytest.raises(ValueError, match=r"key of shape .* past the 32-bit row offsets"):
        call(q, k, k, None, True, None, 0.0, None, None, None, True)


def test_selection_leaves_contexts_past_32_bit_offsets_to_other_kernels():
    from layerzero.dispatch.orchestrator import create_orchestrator

    orch = create_orchestrator()
    huge = orch.explain("attention.prefill", _prefill_ctx(seq_len_q=2**21, seq_len_k=2**21, num_heads=16,
                                                          num_kv_heads=8, head_dim=128, softcap=50.0))
    assert huge.chosen != "triton_prefill_attention"
    assert any("2**31" in r for r in huge["triton_prefill_attention"].reasons)
    decode = orch.explain("attention.decode", _prefill_ctx(operation="attention.decode", seq_len_q=1,
                                                           seq_len_k=2**22, num_kv_heads=8, head_dim=128, softcap=50.0))
    assert any("2**31" in r for r in decode["triton_decode_attention"].reasons)
