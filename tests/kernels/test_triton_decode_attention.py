"""Conformance of the Triton decode attention against the fp32 reference, and its place in selection.

CPU runs go through the Triton interpreter on small shapes; GPU tests (``-m gpu``) use Gemma2-2B decode
shapes and check that a decode loop over growing key lengths never compiles a new kernel variant.
"""

from __future__ import annotations

import pytest
import torch

from layerzero.kernels import reference
from layerzero.kernels.triton.decode_attention import compiled_variants, decode_attention
from layerzero.context.call_context import SelectionContext
from layerzero.validation import tolerance
from lz_triton_helpers import LaunchRecorder, compiles_for_sm90


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    atol, rtol = tolerance("attention.decode", expected.dtype)
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def _qkv(b, h, hkv, d, sk, dtype, device="cpu", dv=None, hf_cache=True):
    """q (B, 1, H, D); k/v as Transformers' cache hands them over: (B, Hkv, Sk, D) contiguous, seen as a
    transposed (B, Sk, Hkv, D) view (``hf_cache``), or plain contiguous (B, Sk, Hkv, D)."""
    dv = d if dv is None else dv
    q = torch.randn(b, 1, h, d, dtype=dtype, device=device)
    if hf_cache:
        k = torch.randn(b, hkv, sk, d, dtype=dtype, device=device).transpose(1, 2)
        v = torch.randn(b, hkv, sk, dv, dtype=dtype, device=device).transpose(1, 2)
    else:
        k = torch.randn(b, sk, hkv, d, dtype=dtype, device=device)
        v = torch.randn(b, sk, hkv, dv, dtype=dtype, device=device)
    return q, k, v


def _left_padding(b, sk, pads, device="cpu") -> torch.Tensor:
    """(B, 1, 1, Sk) bool, True = attend; sequence i has ``pads[i]`` padded keys on the left."""
    keep = torch.ones(b, 1, 1, sk, dtype=torch.bool, device=device)
    for i, p in enumerate(pads):
        keep[i, ..., :p] = False
    return keep


def _check(q, k, v, _config=None, **kw) -> None:
    got = decode_attention(q, k, v, _config=_config, **kw)
    expected = reference.attention(q, k, v, **kw)
    _close(got, expected)


# ---------------------------------------------------------------------------------------------- CPU
# (name, batch, heads, kv_heads, head_dim, value head_dim, seq_k, options)
CASES = [
    ("mha", 2, 4, 4, 64, 64, 37, {}),
    ("gqa4_softcap", 2, 8, 2, 64, 64, 37, {"softcap": 5.0}),
    ("window_bites", 2, 4, 2, 32, 32, 50, {"sliding_window": 7, "softcap": 3.0}),
    ("window_wider_than_keys", 1, 4, 2, 32, 32, 20, {"sliding_window": 64}),
    ("sinks", 2, 4, 2, 32, 32, 19, {"sinks": "yes", "softcap": 4.0}),
    ("scale_odd_head_dim", 1, 6, 3, 80, 80, 23, {"scale": 0.3}),
    ("value_dim_differs", 2, 4, 2, 64, 48, 21, {}),
    ("one_key", 2, 4, 2, 64, 64, 1, {"softcap": 2.0}),
    ("causal_flag_is_a_no_op", 1, 4, 4, 32, 32, 9, {"is_causal": True}),
]


def _options(opts: dict, h: int) -> dict:
    kw = dict(opts)
    if kw.get("sinks"):
        kw["sinks"] = torch.randn(h)
    return kw


@pytest.mark.parametrize("name,b,h,hkv,d,dv,sk,opts", CASES, ids=[c[0] for c in CASES])
def test_matches_reference_fp32(name, b, h, hkv, d, dv, sk, opts):
    q, k, v = _qkv(b, h, hkv, d, sk, torch.float32, dv=dv)
    _check(q, k, v, **_options(opts, h))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_gemma_like(dtype):
    q, k, v = _qkv(2, 8, 4, 256, 45, dtype)
    _check(q, k, v, softcap=50.0, sliding_window=40, attn_mask=_left_padding(2, 45, [0, 6]))


def test_contiguous_canonical_layout():
    q, k, v = _qkv(2, 4, 2, 64, 33, torch.float32, hf_cache=False)
    _check(q, k, v, softcap=10.0)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_left_padded_masks(kind):
    b, h, hkv, sk = 3, 4, 2, 29
    q, k, v = _qkv(b, h, hkv, 64, sk, torch.float32)
    keep = _left_padding(b, sk, [0, 5, 17])
    if kind == "bool":
        mask = keep
    else:  # Transformers' additive form: 0 where attended, the dtype's minimum where padded
        mask = torch.zeros(b, 1, 1, sk).masked_fill(~keep, torch.finfo(torch.float32).min)
    _check(q, k, v, attn_mask=mask, softcap=20.0)


def test_per_head_additive_mask_and_sinks():
    b, h, hkv, sk = 2, 4, 2, 26
    q, k, v = _qkv(b, h, hkv, 32, sk, torch.float32)
    mask = torch.randn(b, h, 1, sk)
    _check(q, k, v, attn_mask=mask, sinks=torch.randn(h))


@pytest.mark.parametrize("window", [None, 10])
def test_several_splits_with_empty_ones(window):
    """Three splits of 16-key blocks over 37 keys (a window of 10 leaves two splits without keys), and a
    key length that is not a multiple of the block."""
    q, k, v = _qkv(2, 4, 2, 32, 37, torch.float32)
    mask = _left_padding(2, 37, [0, 30])
    _check(q, k, v, _config=(3, 16, 4, 1), attn_mask=mask, sliding_window=window, softcap=6.0, sinks=torch.randn(4))


@pytest.mark.parametrize("config", [None, (2, 16, 4, 1)], ids=["single-pass", "two-splits"])
def test_row_that_sees_no_key_returns_zeros(config):
    q, k, v = _qkv(2, 4, 2, 32, 12, torch.float32)
    mask = _left_padding(2, 12, [0, 12])  # sequence 1 may attend to nothing
    got = decode_attention(q, k, v, attn_mask=mask, _config=config)
    assert torch.equal(got[1], torch.zeros_like(got[1]))
    _close(got, reference.attention(q, k, v, attn_mask=mask))


def test_inputs_are_not_modified():
    q, k, v = _qkv(1, 4, 2, 32, 10, torch.float32)
    before = [t.clone() for t in (q, k, v)]
    decode_attention(q, k, v, softcap=5.0)
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v)))


@pytest.mark.parametrize(
    "q_shape,k_shape,kwargs,match",
    [
        ((2, 2, 4, 32), (2, 10, 2, 32), {}, "seq_len_q=2"),
        ((2, 1, 4, 32), (2, 10, 2, 32), dict(dropout_p=0.1), "dropout_p=0.1"),
        ((2, 1, 4, 32), (2, 10, 2, 32), dict(attn_mask=torch.ones(2, 1, 3, 10, dtype=torch.bool)), "attn_mask shape"),
        ((2, 1, 4, 32), (2, 10, 3, 32), {}, "must divide query heads"),
        ((2, 1, 4, 320), (2, 10, 2, 320), {}, "head_dim 320"),
    ],
    ids=["prefill", "dropout", "mask-shape", "gqa-ratio", "head-dim"],
)
def test_errors_name_the_argument_and_the_fix(q_shape, k_shape, kwargs, match):
    q, k = torch.randn(q_shape), torch.randn(k_shape)
    with pytest.raises(ValueError, match=match):
        decode_attention(q, k, k, **kwargs)


# ---------------------------------------------------------------------------------------------- one variant
def _jit_options(kernel) -> tuple[list[str], set[str]]:
    """(parameter names, do_not_specialize names) of a compiled or interpreted Triton kernel."""
    import inspect

    params = list(inspect.signature(kernel.fn).parameters)
    dns = getattr(kernel, "do_not_specialize", None)
    if dns is None:  # InterpretedFunction keeps the decorator's keyword arguments
        dns = kernel.kwargs.get("do_not_specialize") or ()
    return params, {params[i] if isinstance(i, int) else i for i in dns}


def test_every_argument_that_changes_per_decode_step_is_not_specialised(monkeypatch):
    """Two decode steps (Sk 100 then 101, Transformers' cache views, a new mask each step): every integer
    argument that differs must be in ``do_not_specialize`` and every ``constexpr`` must be equal, else
    Triton would compile a new variant per key length."""
    import layerzero.kernels.triton.decode_attention as mod

    kernels = {"_decode_partial": mod._decode_partial, "_decode_reduce": mod._decode_reduce}
    recorders = {name: LaunchRecorder() for name in kernels}
    for name, rec in recorders.items():
        monkeypatch.setattr(mod, name, rec)
    monkeypatch.setattr(mod, "_INTERPRETED", False)
    cfg = mod.launch_config(8, 4, 256)  # the GPU launch configuration
    monkeypatch.setattr(mod, "_INTERPRETED", True)
    for sk in (100, 101):
        q, k, v = _qkv(8, 8, 4, 256, sk, torch.bfloat16)
        mask = _left_padding(8, sk, [0, 3] * 4)
        mod.decode_attention(q, k, v, attn_mask=mask, softcap=50.0, sliding_window=96, _config=cfg)
    for name, kernel in kernels.items():
        params, dns = _jit_options(kernel)
        (args0, kw0), (args1, kw1) = recorders[name].calls
        assert kw0 == kw1, f"{name}: constexpr / launch options differ between steps"
        changed = {params[i] for i, (a, b) in enumerate(zip(args0, args1))
                   if isinstance(a, int) and not isinstance(a, bool) and a != b}
        if name == "_decode_partial":  # the key length and the cache / mask strides that contain it
            assert {"Sk", "sk_b", "sk_h", "sm_b"} <= changed, f"steps differ only in {sorted(changed)}"
        assert changed <= dns, f"{name}: specialised on per-step arguments {sorted(changed - dns)}"


def test_wrapper_traces_under_torch_compile_fullgraph(monkeypatch):
    """The host code only reads shapes/strides and launches: dynamo traces it without a graph break, with
    static and dynamic shapes (the launches are stand-ins here; the GPU test compiles the real kernels)."""
    import layerzero.kernels.triton.decode_attention as mod

    monkeypatch.setattr(mod, "_decode_partial", LaunchRecorder())
    monkeypatch.setattr(mod, "_decode_reduce", LaunchRecorder())
    q, k, v = _qkv(2, 4, 2, 32, 9, torch.float32)
    mask, sinks = _left_padding(2, 9, [0, 2]), torch.randn(4)

    def f(q, k, v, mask, sinks):
        return mod.decode_attention(q, k, v, attn_mask=mask, softcap=5.0, sliding_window=4, sinks=sinks).shape

    for dynamic in (False, True):
        torch._dynamo.reset()
        shape = torch.compile(f, backend="eager", fullgraph=True, dynamic=dynamic)(q, k, v, mask, sinks)
        assert tuple(shape) == (2, 1, 4, 32)


# Compiles the kernels for sm90 without a GPU (Triton's own ptxas), in a process without TRITON_INTERPRET:
# the code path the CPU interpreter never takes (for-loop over a runtime bound, half-precision tl.dot).
_COMPILE_FOR_SM90 = """
import inspect, os, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import layerzero.kernels.triton.decode_attention as da

def build(kernel, types, constexprs, **options):
    sig = {p: "constexpr" if p in constexprs else types.get(p, "i32") for p in inspect.signature(kernel.fn).parameters}
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32), options=options)

ptrs = dict(M_OUT="*fp32", L_OUT="*fp32", ACC_OUT="*fp32", scale="fp32", softcap="fp32")
for (dt, mask, d, g), final in ((c, f) for c in (("bf16", "*u8", 256, 2), ("fp32", "*fp32", 80, 4)) for f in (False, True)):
    ce = dict(HKV=4, GROUP=g, BLOCK_G=16, D=d, DV=d, BLOCK_D=triton.next_power_of_2(d),
              BLOCK_DV=triton.next_power_of_2(d), BLOCK_N=32, HAS_MASK=True, MASK_BOOL=mask == "*u8",
              HAS_SOFTCAP=True, HAS_WINDOW=True, HAS_SINKS=True, FINAL=final, PRECISION="ieee" if dt == "fp32" else "tf32",
              DOT_F32=dt == "fp32", LOOP_WHILE=False)
    build(da._decode_partial, dict(Q="*" + dt, K="*" + dt, V="*" + dt, MASK=mask, SINKS="*fp32", O="*" + dt, **ptrs),
          ce, num_warps=4, num_stages=2)
ce = dict(H=8, DV=256, BLOCK_R=1, BLOCK_DV=256, BLOCK_S=64, CHUNK_S=8, HAS_SINKS=True)
build(da._decode_reduce, dict(M_IN="*fp32", L_IN="*fp32", ACC_IN="*fp32", SINKS="*fp32", O="*bf16"), ce, num_warps=4)
print("compiled")
"""


def test_kernels_compile_for_sm90_without_a_gpu():
    compiles_for_sm90(_COMPILE_FOR_SM90)


# ---------------------------------------------------------------------------------------------- selection
def _decode_ctx(**kw) -> SelectionContext:
    base = dict(operation="attention.decode", batch_size=8, seq_len_q=1, seq_len_k=513, num_heads=8,
                num_kv_heads=4, head_dim=256, dtype="bfloat16", device="cpu", sliding_window=4096)
    base.update(kw)
    return SelectionContext(**base)


@pytest.mark.parametrize("platform", ["cpu", "cuda"])
def test_selection_prefers_it_for_softcap_decode_only(platform):
    from layerzero.dispatch.orchestrator import create_orchestrator

    orch = create_orchestrator()
    extra = dict(device="cuda:0", platform="cuda", compute_capability=(9, 0)) if platform == "cuda" else {}
    softcap = orch.explain("attention.decode", _decode_ctx(softcap=50.0, **extra))
    assert softcap.chosen == "triton_decode_attention", str(softcap)
    order = softcap.fallback_order
    if "torch_flex_attention" in order:
        assert order.index("triton_decode_attention") < order.index("torch_flex_attention")
    plain = orch.explain("attention.decode", _decode_ctx(**extra))
    assert plain.chosen == "torch_sdpa_attention", str(plain)
    prefill = orch.explain("attention.prefill", _decode_ctx(operation="attention.prefill", seq_len_q=16,
                                                            is_causal=True, softcap=50.0, **extra))
    assert prefill.chosen != "triton_decode_attention"
    assert any("seq_len_q 16 != 1" in r for r in prefill["triton_decode_attention"].reasons)


def test_global_orchestrator_routes_a_softcap_decode_call_here():
    from layerzero.dispatch.api import get_global_orchestrator

    q, k, v = _qkv(2, 4, 2, 32, 11, torch.float32)
    spec = get_global_orchestrator().select("attention.decode", {"query": q, "key": k, "value": v}, softcap=30.0)
    assert spec.kernel_id == "triton_decode_attention"
    spec = get_global_orchestrator().select("attention.decode", {"query": q, "key": k, "value": v})
    assert spec.kernel_id == "torch_sdpa_attention"


# ---------------------------------------------------------------------------------------------- GPU
GEMMA2 = dict(b=8, h=8, hkv=4, d=256)


@pytest.mark.gpu
@pytest.mark.parametrize("sk", [17, 513, 4100])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_gemma2_decode_shapes(sk, dtype):
    g = GEMMA2
    q, k, v = _qkv(g["b"], g["h"], g["hkv"], g["d"], sk, dtype, "cuda")
    mask = _left_padding(g["b"], sk, [0, 3, 0, 9, 0, 0, 1, min(sk - 1, 40)], "cuda")
    _check(q, k, v, softcap=50.0, sliding_window=4096, scale=256 ** -0.5)
    _check(q, k, v, softcap=50.0, sliding_window=4096, attn_mask=mask)


@pytest.mark.gpu
def test_gpu_gemma2_options_fp32_and_sinks():
    g = GEMMA2
    q, k, v = _qkv(g["b"], g["h"], g["hkv"], g["d"], 700, torch.float32, "cuda")
    _check(q, k, v, softcap=50.0, sliding_window=300, sinks=torch.randn(g["h"], device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("sk", [900, 1500])
def test_gpu_single_pass_and_splits_agree(sk):
    """Up to _SINGLE_PASS_MAX_KEYS visible keys an eager call is one launch; the split path (forced here
    through ``_config``) and the reference give the same answer, with sinks, a padding mask and softcap."""
    import layerzero.kernels.triton.decode_attention as mod

    g = GEMMA2
    q, k, v = _qkv(g["b"], g["h"], g["hkv"], g["d"], sk, torch.bfloat16, "cuda")
    mask = _left_padding(g["b"], sk, [0, 3, 0, 9, 0, 0, 1, 40], "cuda")
    opts = dict(attn_mask=mask, softcap=50.0, sinks=torch.randn(g["h"], device="cuda"))
    assert (sk <= mod._SINGLE_PASS_MAX_KEYS) == (sk == 900)
    _check(q, k, v, **opts)
    _check(q, k, v, _config=mod.launch_config(g["b"], g["hkv"], g["d"]), **opts)


@pytest.mark.gpu
def test_gpu_one_compiled_variant_for_every_key_length():
    """A decode loop as Transformers runs it: each step a new, longer (B, Hkv, Sk, D) cache tensor seen as
    a transposed view, and a new (B, 1, 1, Sk) mask. After the first step nothing compiles again."""
    g = GEMMA2
    counts = []
    for sk in range(100, 141):
        q, k, v = _qkv(g["b"], g["h"], g["hkv"], g["d"], sk, torch.bfloat16, "cuda")
        mask = _left_padding(g["b"], sk, [0, 2, 0, 5, 0, 0, 1, 7], "cuda")
        out = decode_attention(q, k, v, attn_mask=mask, softcap=50.0, sliding_window=4096)
        if sk in (100, 117, 140):
            _close(out, reference.attention(q, k, v, attn_mask=mask, softcap=50.0, sliding_window=4096))
        counts.append(compiled_variants())
    assert counts[0] > 0
    assert counts == [counts[0]] * len(counts), f"variants per step: {counts}"


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    q, k, v = _qkv(2, 8, 4, 256, 77, torch.bfloat16, "cuda")

    def f(q, k, v):
        return decode_attention(q, k, v, softcap=50.0, sliding_window=64) + 1

    got = torch.compile(f, fullgraph=True)(q, k, v)
    torch.testing.assert_close(got, f(q, k, v))
