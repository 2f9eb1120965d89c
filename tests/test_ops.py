"""layerzero.ops: routing to orchestrators (global and named), eager results, and the torch.compile path
through the ``layerzero::*`` custom ops (fullgraph, no graph breaks, fake kernels, compiled backward)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from layerzero import ops
from layerzero.errors import LayerZeroError
from layerzero.kernels import reference as ref

_REFERENCE = {
    "attention.decode": ref.attention,
    "attention.prefill": ref.attention,
    "attention.causal": ref.attention,
    "attention.cross": ref.attention,
    "rms_norm": ref.rms_norm,
    "layer_norm": ref.layer_norm,
    "rope": ref.rope,
    "swiglu": ref.swiglu,
    "geglu": ref.geglu,
}


class RecordingOrchestrator:
    """Runs the fp32 references and records (operation, option names): lets the tests see exactly what
    the ops pass on, independent of policy and kernel availability."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def dispatch(self, operation, inputs, context=None, mode=None, **kwargs):
        self.calls.append((operation, dict(kwargs)))
        return SimpleNamespace(output=_REFERENCE[operation](**inputs, **kwargs), kernel_id="reference")


@pytest.fixture
def rec():
    o = RecordingOrchestrator()
    ops.register_orchestrator("test_rec", o)
    yield o
    ops.unregister_orchestrator("test_rec")


# This module tests the custom-op path under compile; tests of "inline" ask for it (inline_strategy).
pytestmark = pytest.mark.usefixtures("opaque_compile")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _qkv(b=2, sq=5, sk=5, h=4, hkv=2, d=16, dtype=torch.float32):
    return (torch.randn(b, sq, h, d, dtype=dtype), torch.randn(b, sk, hkv, d, dtype=dtype),
            torch.randn(b, sk, hkv, d, dtype=dtype))


# ---------------------------------------------------------------------------------------- orchestrators
def test_unknown_orchestrator_name_says_how_to_fix():
    q, k, v = _qkv()
    with pytest.raises(ops.OrchestratorNotFoundError, match="register_orchestrator") as ei:
        ops.attention(q, k, v, orchestrator="never_registered")
    assert ei.value.name == "never_registered"


def test_register_validates_name_and_object():
    with pytest.raises(ValueError, match="non-empty string"):
        ops.register_orchestrator("", RecordingOrchestrator())
    with pytest.raises(TypeError, match="dispatch"):
        ops.register_orchestrator("x", object())


def test_named_and_object_orchestrators_route_the_call(rec):
    x, w = torch.randn(3, 8), torch.randn(8)
    ops.rms_norm(x, w, orchestrator="test_rec")
    ops.rms_norm(x, w, orchestrator=rec)
    assert [c[0] for c in rec.calls] == ["rms_norm", "rms_norm"]
    assert ops.get_orchestrator("test_rec") is rec
    assert "test_rec" in ops.list_orchestrators()


def test_reregistering_a_name_replaces_the_orchestrator(rec):
    other = RecordingOrchestrator()
    ops.register_orchestrator("test_rec", other)
    ops.swiglu(torch.randn(4), torch.randn(4), orchestrator="test_rec")
    assert len(other.calls) == 1 and not rec.calls


# ---------------------------------------------------------------------------------------- eager semantics
@pytest.mark.parametrize(
    "sq, sk, is_causal, operation, expected_op, expected_causal",
    [
        (1, 7, None, None, "attention.decode", False),
        (5, 5, True, None, "attention.prefill", True),
        (5, 9, False, None, "attention.cross", False),
        (5, 5, None, "attention.causal", "attention.causal", True),
        (5, 5, None, "attention.prefill", "attention.prefill", True),
    ],
)
def test_attention_operation_and_causality_defaults(rec, sq, sk, is_causal, operation, expected_op, expected_causal):
    q, k, v = _qkv(sq=sq, sk=sk)
    out = ops.attention(q, k, v, is_causal=is_causal, operation=operation, orchestrator="test_rec")
    op, options = rec.calls[-1]
    assert (op, options["is_causal"]) == (expected_op, expected_causal)
    assert options["enable_gqa"] is True
    torch.testing.assert_close(out, ref.attention(q, k, v, is_causal=expected_causal))


def test_attention_passes_only_the_options_that_are_set(rec):
    q, k, v = _qkv(hkv=4)
    ops.attention(q, k, v, is_causal=True, orchestrator="test_rec")
    assert set(rec.calls[-1][1]) == {"is_causal", "enable_gqa"}
    sinks, mask = torch.randn(4), torch.ones(2, 1, 5, 5, dtype=torch.bool)
    ops.attention(q, k, v, attn_mask=mask, scale=0.3, sliding_window=3, softcap=2.0, sinks=sinks,
                  orchestrator="test_rec")
    options = rec.calls[-1][1]
    assert set(options) == {"is_causal", "enable_gqa", "attn_mask", "scale", "sliding_window", "softcap", "sinks"}
    assert options["enable_gqa"] is False


def test_attention_rejects_rank_three_and_names_the_layouts():
    q = torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match="rank-4 query/key/value in layout 'bshd'"):
        ops.attention(q, q, q)


def test_bad_options_name_the_field():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="casting='bogus'"):
        ops.rms_norm(x, casting="bogus")
    with pytest.raises(ValueError, match="layout='sbhd'"):
        ops.rope(x, x, x, x, layout="sbhd")
    with pytest.raises(ValueError, match="approximate='fast'"):
        ops.geglu(x, x, approximate="fast")


# ---------------------------------------------------------------------------------------- compiled path
def _op_cases():
    """(name, fn(orchestrator) -> callable, args) for every op; each callable returns a tensor or tuple."""
    q, k, v = _qkv()
    mask = torch.rand(2, 1, 5, 5) > 0.3
    mask[..., 0] = True
    x, w, b, res = torch.randn(2, 5, 32), torch.randn(32), torch.randn(32), torch.randn(2, 5, 32)
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)  # bhsd views, non-contiguous like Transformers'
    cos, sin = torch.randn(2, 5, 8), torch.randn(2, 5, 8)  # partial rotary (8 of 16)
    sinks = torch.randn(4)
    return [
        ("attention", lambda o: lambda q, k, v: ops.attention(q, k, v, is_causal=True, orchestrator=o), (q, k, v)),
        ("attention_masked", lambda o: lambda q, k, v, m, s: ops.attention(
            q, k, v, attn_mask=m, softcap=3.0, sinks=s, scale=0.2, orchestrator=o), (q, k, v, mask, sinks)),
        ("attention_decode", lambda o: lambda q, k, v: ops.attention(
            q[:, -1:], k, v, sliding_window=3, orchestrator=o), (q, k, v)),
        ("rms_norm", lambda o: lambda x, w: ops.rms_norm(x, w, eps=1e-5, orchestrator=o), (x, w)),
        ("rms_norm_gemma", lambda o: lambda x, w: ops.rms_norm(
            x, w, offset=1.0, casting="gemma", orchestrator=o), (x, w)),
        ("rms_norm_residual", lambda o: lambda x, w, r: ops.rms_norm(x, w, residual=r, orchestrator=o), (x, w, res)),
        ("layer_norm", lambda o: lambda x, w, b: ops.layer_norm(x, w, b, orchestrator=o), (x, w, b)),
        ("rope", lambda o: lambda q, k, c, s: ops.rope(q, k, c, s, orchestrator=o), (qh, kh, cos, sin)),
        ("rope_bshd", lambda o: lambda q, k, c, s: ops.rope(
            q, k, c, s, layout="bshd", interleaved=True, orchestrator=o), (q, k, cos, sin)),
        ("swiglu", lambda o: lambda g, u: ops.swiglu(g, u, orchestrator=o), (x, res)),
        ("geglu", lambda o: lambda g, u: ops.geglu(g, u, approximate="none", orchestrator=o), (x, res)),
    ]


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("case", _op_cases(), ids=lambda c: c[0])
def test_fullgraph_compile_matches_eager_without_graph_breaks(rec, case):
    _name, make, args = case
    fn = make("test_rec")
    eager = _as_tuple(fn(*args))
    n_eager = len(rec.calls)
    explanation = torch._dynamo.explain(fn)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    compiled = _as_tuple(torch.compile(fn, fullgraph=True, backend="aot_eager")(*args))
    assert len(rec.calls) > n_eager, "the compiled graph must still dispatch through the named orchestrator"
    assert len(compiled) == len(eager)
    for c, e in zip(compiled, eager):
        assert c.is_contiguous()
        torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-6)


@pytest.fixture
def inline_strategy():
    with ops.compile_strategy_set_to("inline"):
        yield


@pytest.mark.parametrize("case", [c for c in _op_cases() if not c[0].startswith("attention")], ids=lambda c: c[0])
def test_inline_strategy_traces_the_torch_kernel_into_the_graph(rec, inline_strategy, case):
    """"inline": Inductor sees ATen ops instead of the custom op (no dispatch inside the graph), fullgraph
    stays clean and the result equals eager dispatch."""
    _name, make, args = case
    fn = make("test_rec")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = _as_tuple(torch.compile(fn, fullgraph=True, backend=backend)(*args))
    assert rec.calls == [], "an inlined op must not dispatch"
    targets = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    assert not any("layerzero" in t for t in targets), targets
    expected = _as_tuple(make(None)(*args))  # eager, through the global dispatcher
    assert len(compiled) == len(expected)
    for c, e in zip(compiled, expected):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5)


def test_attention_stays_a_custom_op_under_inline(rec, inline_strategy):
    q, k, v = _qkv()
    torch.compile(lambda q, k, v: ops.attention(q, k, v, is_causal=True, orchestrator="test_rec"),
                  fullgraph=True, backend="aot_eager")(q, k, v)
    assert [c[0] for c in rec.calls] == ["attention.prefill"]


def test_compile_strategy_names_bad_values_and_restores():
    with pytest.raises(ValueError, match="'fused' is not one of 'opaque', 'inline'"):
        ops.set_compile_strategy("fused")
    with pytest.raises(ValueError, match=r"\['attention'\] cannot be inlined.*attention always stays"):
        ops.set_compile_strategy("inline", ["attention"])
    before = ops.compile_strategy()
    with ops.compile_strategy_set_to("opaque"):
        ops.set_compile_strategy("inline", ["rms_norm"])
        assert ops.compile_strategy()["rms_norm"] == "inline" and ops.compile_strategy()["rope"] == "opaque"
    assert ops.compile_strategy() == before  # restored after the block, whatever was set inside it


def test_inline_is_the_default_compile_strategy():
    """Measured faster on an H200 in every case (README, "Performance"); a fresh process starts with it."""
    import subprocess
    import sys

    code = "from layerzero import ops; print(sorted(set(ops.compile_strategy().values())))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['inline']"


@pytest.mark.parametrize("case", _op_cases(), ids=lambda c: c[0])
def test_global_dispatcher_eager_and_compiled_match_the_reference(rec, case):
    """orchestrator=None: the process-wide dispatcher picks real kernels; both paths agree with the
    fp32 reference (run through the recording orchestrator)."""
    _name, make, args = case
    expected = _as_tuple(make("test_rec")(*args))
    eager = _as_tuple(make(None)(*args))
    compiled = _as_tuple(torch.compile(make(None), fullgraph=True, backend="aot_eager")(*args))
    for e, c, x in zip(eager, compiled, expected):
        torch.testing.assert_close(e, x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c, x, rtol=1e-5, atol=1e-5)


def test_custom_ops_pass_opcheck(rec):
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of every custom op."""
    q, k, v = _qkv()
    x, w, b = torch.randn(2, 5, 32, requires_grad=True), torch.randn(32, requires_grad=True), torch.randn(32)
    cos, sin = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    cases = [
        (torch.ops.layerzero.attention.default,
         (q, k, v, None, True, None, 0.0, 4, 5.0, torch.randn(4), "attention.prefill", "test_rec")),
        (torch.ops.layerzero.rms_norm.default, (x, w, 1e-6, 0.0, "llama", "test_rec")),
        (torch.ops.layerzero.rms_norm_residual.default, (x, w, torch.randn(2, 5, 32), 1e-6, 1.0, "gemma", "test_rec")),
        (torch.ops.layerzero.layer_norm.default, (x, w, b, 1e-5, "test_rec")),
        (torch.ops.layerzero.rope.default, (q.transpose(1, 2), k.transpose(1, 2), cos, sin, "bhsd", False, "test_rec")),
        (torch.ops.layerzero.swiglu.default, (x, x.detach() * 2, "test_rec")),
        (torch.ops.layerzero.geglu.default, (x, x.detach() * 2, "tanh", "test_rec")),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_fake_kernels_follow_the_contract_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 3, 4, 16, dtype=torch.bfloat16)
        v = torch.empty(2, 7, 2, 8, dtype=torch.bfloat16)
        out = torch.ops.layerzero.attention(q, v.new_empty(2, 7, 2, 16), v, None, False, None, 0.0, None, None,
                                            None, "attention.cross", None)
        assert out.shape == (2, 3, 4, 8) and out.dtype == torch.bfloat16
        x = torch.empty(4, 32, dtype=torch.bfloat16)
        normed, summed = torch.ops.layerzero.rms_norm_residual(x, torch.empty(32), x, 1e-6, 0.0, "llama", None)
        assert normed.dtype == torch.bfloat16 and summed.shape == (4, 32)


def test_compiled_graph_refers_to_orchestrator_by_name(rec):
    """A per-model orchestrator object works under compile once registered, and fails loudly if not."""
    x, w = torch.randn(3, 8), torch.randn(8)
    compiled = torch.compile(lambda x, w: ops.rms_norm(x, w, orchestrator=rec), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, w), ref.rms_norm(x, w))
    assert rec.calls
    torch._dynamo.reset()
    stranger = RecordingOrchestrator()
    compiled = torch.compile(lambda x, w: ops.rms_norm(x, w, orchestrator=stranger), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="register_orchestrator") as ei:
        compiled(x, w)
    assert isinstance(ei.value, LayerZeroError) or "LayerZeroError" in str(ei.value)


def test_compiled_backward_matches_eager_reference_gradients(rec):
    torch.manual_seed(1)
    q, k, v = (t.requires_grad_() for t in _qkv())
    x = torch.randn(2, 5, 16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    g = torch.randn(2, 5, 16, requires_grad=True)

    def fn(q, k, v, x, w, g, name):
        a = ops.attention(q, k, v, is_causal=True, softcap=4.0, orchestrator=name)
        n = ops.rms_norm(x, w, orchestrator=name)
        s = ops.swiglu(g, n, orchestrator=name)
        return a.square().sum() + s.sin().sum()

    leaves = (q, k, v, x, w, g)
    eager_grads = torch.autograd.grad(fn(*leaves, "test_rec"), leaves)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    compiled_grads = torch.autograd.grad(compiled(*leaves, "test_rec"), leaves)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compiled_attention_backward_refuses_dropout(rec):
    q, k, v = (t.requires_grad_() for t in _qkv())
    compiled = torch.compile(lambda q, k, v: ops.attention(q, k, v, dropout_p=0.5, orchestrator="test_rec"),
                             fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    with pytest.raises(Exception, match="dropout"):
        out.sum().backward()


def test_inductor_compiles_a_block_with_layerzero_ops(rec):
    """The default backend (Inductor) keeps the custom ops as extern calls around its fused kernels."""
    q, k, v = _qkv()
    x, w = torch.randn(2, 5, 32), torch.randn(32)

    def block(q, k, v, x, w):
        a = ops.attention(q, k, v, is_causal=True, orchestrator="test_rec")
        n = ops.rms_norm(x * 2 + 1, w, orchestrator="test_rec")
        return a * 3, n.relu()

    eager = block(q, k, v, x, w)
    compiled = torch.compile(block, fullgraph=True)(q, k, v, x, w)
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_gpu_reduce_overhead_captures_and_replays_dispatch():
    """mode="reduce-overhead": Inductor captures the custom ops' kernels in a CUDA graph; replays must
    give the eager results (the dispatcher's Python must not sync or allocate on the host during capture)."""
    torch.manual_seed(0)
    q, k, v = (t.cuda().half() for t in _qkv(b=2, sq=64, sk=64, h=8, hkv=2, d=64))
    x, w = torch.randn(2, 64, 256, device="cuda", dtype=torch.half), torch.randn(256, device="cuda", dtype=torch.half)
    cos, sin = torch.randn(2, 64, 64, device="cuda", dtype=torch.half), torch.randn(2, 64, 64, device="cuda",
                                                                                   dtype=torch.half)

    def block(q, k, v, x, w, cos, sin):
        qr, kr = ops.rope(q, k, cos, sin, layout="bshd")
        a = ops.attention(qr, kr, v, is_causal=True)
        d = ops.attention(qr[:, -1:], kr, v)
        n, s = ops.rms_norm(x, w, residual=x)
        return a, d, ops.swiglu(n, s), ops.geglu(n, s)

    eager = block(q, k, v, x, w, cos, sin)
    compiled = torch.compile(block, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):  # warm-up, record, replay
        got = [t.clone() for t in compiled(q, k, v, x, w, cos, sin)]
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
def test_gpu_sampled_checks_keep_nothing_in_a_cuda_graph_pool():
    """A sampled verification (here: every cached call) that runs inside the warm-up of a CUDA-graph tree
    keeps its verdict in host memory. A device tensor kept past the call would be a live allocation in the
    graph's private pool, and the tree refuses that ("tensor(s) in the cudagraph pool not tracked as
    outputs"): measured in the Qwen3-1.7B static-cache decode before the verdict moved to pinned memory."""
    from layerzero.dispatch import create_orchestrator
    from layerzero.dispatch.types import DispatchConfig

    ops.register_orchestrator("test_sampled", create_orchestrator(DispatchConfig(verify_sample_every=1)))
    try:
        torch.manual_seed(0)
        x = torch.randn(4, 1, 128, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(128, device="cuda", dtype=torch.bfloat16)

        def block(x, w):
            n = ops.rms_norm(x, w, orchestrator="test_sampled")
            return ops.swiglu(n, n * 2, orchestrator="test_sampled")

        eager = block(x, w)
        block(x, w)  # the buckets are cached: every later call is a sampled one
        compiled = torch.compile(block, fullgraph=True, mode="reduce-overhead")
        for _ in range(3):  # warm-up, record, replay
            got = compiled(x, w).clone()
        torch.testing.assert_close(got, eager, rtol=2e-2, atol=2e-2)
        verifier = ops.get_orchestrator("test_sampled").default.runner._verifier
        assert verifier.checked > 0 and verifier.failed == 0
    finally:
        ops.unregister_orchestrator("test_sampled")
        torch._dynamo.reset()


def test_torch_export_keeps_the_custom_ops(rec):
    """torch.export also traces through the custom ops: the exported program calls layerzero::* by name
    and dispatches when run."""

    class Block(torch.nn.Module):
        def forward(self, q, k, v, x, w):
            return ops.attention(q, k, v, is_causal=True, orchestrator="test_rec"), ops.rms_norm(
                x, w, orchestrator="test_rec")

    q, k, v = _qkv()
    x, w = torch.randn(3, 8), torch.randn(8)
    program = torch.export.export(Block(), (q, k, v, x, w))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"layerzero.attention.default", "layerzero.rms_norm.default"} <= targets
    a, n = program.module()(q, k, v, x, w)
    torch.testing.assert_close(a, ref.attention(q, k, v, is_causal=True))
    torch.testing.assert_close(n, ref.rms_norm(x, w))


def test_attention_takes_sdpa_layout_and_returns_it():
    F = torch.nn.functional
    q, k, v = (torch.randn(2, 4, 6, 16) for _ in range(3))  # (B, H, S, D)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = ops.attention(q, k, v, is_causal=True, layout="bhsd")
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layout='bsdh'"):
        ops.attention(q, k, v, layout="bsdh")


def test_rms_norm_takes_eps_positionally():
    x, w = torch.randn(3, 8), torch.randn(8)
    expected = torch.nn.functional.rms_norm(x, (8,), w, 1e-5)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), expected)
