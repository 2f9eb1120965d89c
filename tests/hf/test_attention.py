"""The "layerzero" Transformers attention implementation against Transformers' own eager and sdpa paths.

Tiny fp32 models (tests/hf/conftest.py): logits parity, greedy generation with dynamic and static caches,
left padding, output_attentions, the three ways to select the implementation, per-model orchestrators,
and torch.compile(fullgraph=True)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402
import layerzero_hf.attention as lz_attention  # noqa: E402  (registers "layerzero")
from layerzero import ops  # noqa: E402
from layerzero.kernels import reference as ref  # noqa: E402
from layerzero.operations import causal_mask  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402


ATOL = 1e-4
VOCAB = 128  # tests/hf/conftest.py builds every tiny model with this vocabulary
NAME = lz_attention.ATTN_IMPLEMENTATION


class Recorder:
    """Orchestrator running the fp32 references and recording each attention call's operation/options."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def dispatch(self, operation, inputs, context=None, mode=None, **kwargs):
        self.calls.append((operation, {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}))
        fn = ref.attention if operation.startswith("attention") else getattr(ref, operation)
        return SimpleNamespace(output=fn(**inputs, **kwargs), kernel_id="reference")


@pytest.fixture
def counted(monkeypatch):
    """Counts calls that reach layerzero.ops.attention (proves the layerzero path really ran)."""
    calls: list[dict] = []
    real = ops.attention

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(lz_attention.ops, "attention", counting)
    return calls


@pytest.fixture
def recorder():
    rec = Recorder()
    ops.register_orchestrator("hf_test_recorder", rec)
    yield rec
    ops.unregister_orchestrator("hf_test_recorder")


def _load(path, impl):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl).eval()


def _pair(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    return _load(path, "eager"), _load(path, NAME)


def _ids(batch=2, seq=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def _greedy(model, ids, **kwargs):
    with torch.no_grad():
        return model.generate(
            ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0, **kwargs
        )


# ------------------------------------------------------------------------------------------ registration
def test_registered_with_attention_and_mask_interfaces():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert lz_attention.is_registered()
    assert AttentionInterface()[NAME] is lz_attention.layerzero_attention_forward
    assert AttentionMaskInterface()[NAME] is lz_attention.layerzero_mask
    assert not any(s in NAME for s in ("flash", "sdpa", "flex_attention", "/"))


def test_three_ways_to_select_it(tiny_model_dir, tiny_config, counted):
    ids = _ids(1, 6)
    config = type(tiny_config("llama"))(**tiny_config("llama").to_dict(), attn_implementation=NAME)
    assert AutoModelForCausalLM.from_config(config).config._attn_implementation == NAME

    model = _load(tiny_model_dir("llama"), "eager")
    model.set_attn_implementation(NAME)
    assert model.config._attn_implementation == NAME
    with torch.no_grad():
        model(ids)
    assert len(counted) == 2  # one call per layer

    loaded = _load(tiny_model_dir("llama"), NAME)
    assert loaded.config._attn_implementation == NAME


def test_not_serialized_in_config_json(tiny_model_dir, tmp_path):
    model = _load(tiny_model_dir("llama"), NAME)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert NAME not in json.dumps(saved)


# ------------------------------------------------------------------------------------------ parity
def test_logits_match_eager(tiny_model_dir, tiny_arch, counted):
    """Sequence 20 > sliding window 8, so windows, softcaps (gemma2) and sinks (gpt_oss) all bite."""
    eager, lz = _pair(tiny_model_dir, tiny_arch)
    assert lz.config.vocab_size == VOCAB
    ids = _ids()
    with torch.no_grad():
        expected = eager(ids).logits
        got = lz(ids).logits
    assert len(counted) == lz.config.num_hidden_layers
    assert (got - expected).abs().max().item() <= ATOL


# gemma2 (softcap) and gpt_oss (sinks) run on FlexAttention's eager path on CPU: seconds per generation.
_SLOW_ON_CPU = pytest.mark.slow


@pytest.mark.parametrize(
    "arch", ["llama", "mistral", pytest.param("gemma2", marks=_SLOW_ON_CPU), pytest.param("gpt_oss", marks=_SLOW_ON_CPU)]
)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generation_matches_eager(tiny_model_dir, arch, cache):
    eager, lz = _pair(tiny_model_dir, arch)
    ids = _ids(2, 6, seed=1)
    kwargs = {"cache_implementation": "static"} if cache == "static" else {}
    expected = _greedy(eager, ids, **kwargs)
    got = _greedy(lz, ids, **kwargs)
    assert expected.shape == (2, 6 + 32)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("arch", ["llama", "mistral", pytest.param("gemma2", marks=_SLOW_ON_CPU)])
def test_left_padded_batch_matches_eager(tiny_model_dir, arch):
    eager, lz = _pair(tiny_model_dir, arch)
    ids = _ids(3, 14, seed=2)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    mask[1, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        expected = eager(ids, attention_mask=mask).logits
        got = lz(ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.isfinite(got).all()
    assert (got[real] - expected[real]).abs().max().item() <= ATOL


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_left_padded_generation_matches_eager(tiny_model_dir, cache):
    eager, lz = _pair(tiny_model_dir, "llama")
    ids = _ids(3, 10, seed=5)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    kwargs = {"cache_implementation": "static"} if cache == "static" else {}
    assert torch.equal(_greedy(lz, ids, attention_mask=mask, **kwargs), _greedy(eager, ids, attention_mask=mask, **kwargs))


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt_oss"])
def test_output_attentions_returns_eager_weights(tiny_model_dir, arch):
    eager, lz = _pair(tiny_model_dir, arch)
    ids = _ids(2, 12, seed=3)
    with torch.no_grad():
        e = eager(ids, output_attentions=True)
        g = lz(ids, output_attentions=True)
    assert len(g.attentions) == len(e.attentions) == 2
    for a, b in zip(g.attentions, e.attentions):
        assert a.shape == b.shape == (2, 4, 12, 12)
        assert (a - b).abs().max().item() <= 1e-5
    assert (g.logits - e.logits).abs().max().item() <= ATOL


def _tiny_encoder_models(tmp_path, arch):
    if arch == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=64)
        cls = transformers.BertModel
    else:
        config = transformers.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                       decoder_start_token_id=0)
        cls = transformers.T5ForConditionalGeneration
    torch.manual_seed(0)
    cls(config).save_pretrained(tmp_path)
    return (cls.from_pretrained(tmp_path, attn_implementation=impl).eval() for impl in ("eager", NAME))


def test_bidirectional_encoder_with_padding_matches_eager(tmp_path, counted):
    """BERT: non-causal modules (module.is_causal False), padding via the bidirectional sdpa mask."""
    eager, lz = _tiny_encoder_models(tmp_path, "bert")
    ids = _ids(2, 10, seed=8)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    with torch.no_grad():
        expected = eager(ids, attention_mask=mask).last_hidden_state
        got = lz(ids, attention_mask=mask).last_hidden_state
        lz(ids)  # no padding: Transformers passes mask=None, which must mean "attend to everything"
    assert len(counted) == 4
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= ATOL


def test_t5_position_bias_and_cross_attention_match_eager(tmp_path):
    """T5: relative position bias (additive), causal decoder self-attention, cross-attention, generation."""
    eager, lz = _tiny_encoder_models(tmp_path, "t5")
    ids = _ids(2, 10, seed=9)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    decoder_ids = _ids(2, 6, seed=10)
    with torch.no_grad():
        expected = eager(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        got = lz(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        assert (got - expected).abs().max().item() <= ATOL
        generated = lz.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
        assert torch.equal(generated, eager.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False))


# ------------------------------------------------------------------------------------------ the function itself
class _Attn(nn.Module):
    def __init__(self, is_causal=True, groups=2):
        super().__init__()
        self.is_causal = is_causal
        self.num_key_value_groups = groups
        self.head_dim = 16


def _hf_qkv(b=2, h=4, hkv=2, sq=5, sk=5, d=16):
    return torch.randn(b, h, sq, d), torch.randn(b, hkv, sk, d), torch.randn(b, hkv, sk, d)


@pytest.mark.parametrize(
    "sq, sk, is_causal",
    [
        (5, 5, True),  # plain causal
        (1, 9, True),  # decode: attend to all keys
        (5, 12, True),  # empty StaticCache prefill: keys padded to max_cache_len -> upper-left
        (5, 9, False),  # bidirectional module over more keys
    ],
)
def test_none_mask_semantics_match_hf_sdpa(sq, sk, is_causal):
    module = _Attn(is_causal=is_causal).eval()
    q, k, v = _hf_qkv(sq=sq, sk=sk)
    expected, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.3)
    got, weights = lz_attention.layerzero_attention_forward(module, q, k, v, None, scaling=0.3)
    assert weights is None
    assert got.shape == (2, sq, 4, 16) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sq, sk, with_mask", [(5, 5, False), (5, 12, False), (1, 9, False), (5, 5, True)])
def test_position_bias_matches_hf_sdpa(sq, sk, with_mask):
    """T5-style relative position bias is folded into one additive mask, as Transformers' sdpa does."""
    module = _Attn().eval()
    q, k, v = _hf_qkv(sq=sq, sk=sk)
    bias = torch.randn(1, 4, sq, sk)
    mask = None
    if with_mask:
        mask = torch.rand(2, 1, sq, sk) > 0.3
        mask[..., 0] = True
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=1.0, position_bias=bias)
    got, _ = lz_attention.layerzero_attention_forward(module, q, k, v, mask, scaling=1.0, position_bias=bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # output_attentions takes the weights path, which must apply the same bias, mask and causality
    via_weights, weights = lz_attention.layerzero_attention_forward(
        module, q, k, v, mask, scaling=1.0, position_bias=bias, output_attentions=True
    )
    torch.testing.assert_close(via_weights, expected, rtol=1e-5, atol=1e-5)
    assert weights.shape == (2, 4, sq, sk)


def test_static_cache_prefill_slices_keys(recorder):
    """Keys past Sq (unused StaticCache slots) must not reach the kernel, and GQA must not be expanded."""
    module = _Attn().eval()
    module._layerzero_orchestrator = "hf_test_recorder"
    q, k, v = _hf_qkv(sq=5, sk=12)
    lz_attention.layerzero_attention_forward(module, q, k, v, None)
    op, options = recorder.calls[-1]
    assert op == "attention.prefill" and options["is_causal"] is True and options["enable_gqa"] is True


def test_explicit_mask_is_passed_without_causal_or_window(recorder):
    module = _Attn().eval()
    module._layerzero_orchestrator = "hf_test_recorder"
    q, k, v = _hf_qkv(sq=1, sk=12)
    mask = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    mask[0, ..., :4] = False
    out, _ = lz_attention.layerzero_attention_forward(module, q, k, v, mask, sliding_window=4, softcap=3.0)
    op, options = recorder.calls[-1]
    assert op == "attention.decode" and options["is_causal"] is False
    assert "sliding_window" not in options and options["softcap"] == 3.0
    expected = ref.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, softcap=3.0)
    torch.testing.assert_close(out, expected)


def test_sliding_window_kept_only_when_it_can_bite(recorder):
    module = _Attn().eval()
    module._layerzero_orchestrator = "hf_test_recorder"
    q, k, v = _hf_qkv(sq=6, sk=6)
    lz_attention.layerzero_attention_forward(module, q, k, v, None, sliding_window=8)
    assert "sliding_window" not in recorder.calls[-1][1]
    lz_attention.layerzero_attention_forward(module, q, k, v, None, sliding_window=4)
    assert recorder.calls[-1][1]["sliding_window"] == 4


@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_prompt_as_long_as_the_window_runs_causal_without_a_mask(tiny_model_dir, recorder, arch):
    """A prompt exactly as long as the sliding window (Gemma-2 and Mistral at 4096 tokens): Transformers
    builds a dense, exactly causal mask for the sliding layers; LayerZero's layers get none and run causal
    (soft-capped for Gemma-2), with the eager model's logits. One token more and the window bites."""
    from tests.hf.conftest import SLIDING_WINDOW

    eager, lz = _pair(tiny_model_dir, arch)
    for m in lz.modules():
        if hasattr(m, "num_key_value_groups"):
            setattr(m, lz_attention.ORCHESTRATOR_ATTR, "hf_test_recorder")
    for seq, bites in ((SLIDING_WINDOW, False), (SLIDING_WINDOW + 1, True)):
        recorder.calls.clear()
        ids = _ids(2, seq)
        with torch.no_grad():
            got, expected = lz(ids).logits, eager(ids).logits
        assert (got - expected).abs().max().item() <= ATOL
        layer_types = getattr(lz.config, "layer_types", None) or ["sliding_attention"] * lz.config.num_hidden_layers
        for (_, options), layer_type in zip(recorder.calls, layer_types, strict=True):
            windowed = bites and layer_type == "sliding_attention"
            assert options["is_causal"] is not windowed  # the wrapper passes is_causal only without a mask


def test_dropout_only_in_training(recorder):
    module = _Attn()
    module._layerzero_orchestrator = "hf_test_recorder"
    q, k, v = _hf_qkv()
    module.eval()
    lz_attention.layerzero_attention_forward(module, q, k, v, None, dropout=0.5)
    assert "dropout_p" not in recorder.calls[-1][1]
    module.train()
    lz_attention.layerzero_attention_forward(module, q, k, v, None, dropout=0.5)
    assert recorder.calls[-1][1]["dropout_p"] == 0.5


# ------------------------------------------------------------------------------------------ orchestrators, compile
def test_per_model_orchestrator_attribute(tiny_model_dir, recorder):
    eager, lz = _pair(tiny_model_dir, "llama")
    for m in lz.modules():
        if hasattr(m, "num_key_value_groups"):
            setattr(m, lz_attention.ORCHESTRATOR_ATTR, "hf_test_recorder")
    ids = _ids(1, 5)
    assert torch.equal(_greedy(lz, ids)[:, :10], _greedy(eager, ids)[:, :10])
    ops_seen = [c[0] for c in recorder.calls]
    assert ops_seen[:2] == ["attention.prefill", "attention.prefill"]
    assert set(ops_seen[2:]) == {"attention.decode"}


def test_each_loaded_model_gets_its_own_orchestrator(tiny_model_dir):
    """A model loaded with attn_implementation="layerzero" resolves its own orchestrator on the first
    eager call (layerzero_hf.model_orchestrators.orchestrator_for) and keeps it on every attention module."""
    a = _load(tiny_model_dir("llama"), NAME)
    b = _load(tiny_model_dir("llama"), NAME)
    ids = _ids(1, 4)
    with torch.no_grad():
        a(ids)
        b(ids)

    def names(model):
        return {m.__dict__.get(lz_attention.ORCHESTRATOR_ATTR) for m in model.modules()
                if hasattr(m, "num_key_value_groups")}

    (name_a,), (name_b,) = names(a), names(b)
    assert name_a and name_b and name_a != name_b
    assert ops.get_orchestrator(name_a) is not ops.get_orchestrator(name_b)


@pytest.mark.slow
def test_model_forward_compiles_fullgraph_without_breaks(tiny_model_dir):
    torch._dynamo.reset()
    eager, lz = _pair(tiny_model_dir, "gemma2")
    ids = _ids(2, 12)
    explanation = torch._dynamo.explain(lz)(ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(lz, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got = compiled(ids).logits
        expected = eager(ids).logits
    assert (got - expected).abs().max().item() <= ATOL
    torch._dynamo.reset()


_MASK_CASES = [  # (q_length, kv_length, q_offset, local_size, padded)
    (6, 6, 0, None, False), (1, 9, 8, None, False), (6, 6, 0, 4, False), (6, 6, 0, 8, False),
    (6, 6, 0, None, True), (5, 12, 0, None, False), (1, 12, 3, 8, False),
]
# a window as long as the keys: Transformers builds an exactly causal mask, LayerZero skips it (as for any
# window that cannot bite); with padding both build the same mask
_WINDOW_AS_LONG_AS_KEYS = [(6, 6, 0, 6, False), (1, 6, 5, 6, False), (6, 6, 0, 6, True)]


def _mask_kwargs(q_length, kv_length, q_offset, local_size, padded):
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

    attention_mask = None
    if padded:
        attention_mask = torch.ones(2, kv_length, dtype=torch.bool)
        attention_mask[0, :2] = False
    return dict(batch_size=2, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=0,
                attention_mask=attention_mask, local_size=local_size,
                mask_function=causal_mask_function if local_size is None
                else sliding_window_causal_mask_function(local_size))


@pytest.mark.parametrize("case", _MASK_CASES)
def test_mask_builder_is_sdpa_mask_outside_compile(case):
    from transformers.masking_utils import sdpa_mask

    kwargs = _mask_kwargs(*case)
    got, expected = lz_attention.layerzero_mask(**kwargs), sdpa_mask(**kwargs)
    assert (got is None) == (expected is None)
    if expected is not None:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("case", _WINDOW_AS_LONG_AS_KEYS)
def test_mask_builder_skips_a_window_as_long_as_the_keys(case):
    """The window cannot bite: no mask where Transformers builds one that is exactly causal; with padding
    the same mask as sdpa_mask's."""
    from transformers.masking_utils import sdpa_mask

    kwargs = _mask_kwargs(*case)
    q_length, kv_length, *_ , padded = case
    got, transformers_mask = lz_attention.layerzero_mask(**kwargs), sdpa_mask(**kwargs)
    assert transformers_mask is not None
    if padded:
        assert torch.equal(got, transformers_mask)
        return
    assert got is None
    causal = torch.ones(kv_length, kv_length, dtype=torch.bool).tril()[-q_length:]
    assert torch.equal(transformers_mask, causal.expand_as(transformers_mask))
    torch._dynamo.reset()
    skipped = torch.compile(lambda x: x if lz_attention.layerzero_mask(**kwargs) is None else x + 1,
                            fullgraph=True, backend="eager")(torch.zeros(()))
    torch._dynamo.reset()
    assert skipped.item() == 0


@pytest.mark.parametrize("case", _MASK_CASES)
def test_mask_builder_under_compile_skips_where_eager_transformers_does(case):
    """Under torch.compile, sdpa_mask always materializes a mask; ours returns None exactly where eager
    Transformers returns None for a call without padding (and keeps the mask wherever padding is given),
    with no graph break."""
    from transformers.masking_utils import sdpa_mask

    kwargs = _mask_kwargs(*case)
    eager_none = sdpa_mask(**kwargs) is None and kwargs["attention_mask"] is None

    def probe(x):
        mask = lz_attention.layerzero_mask(**kwargs)
        return x if mask is None else x + mask.sum()

    torch._dynamo.reset()
    x = torch.zeros(())
    skipped = torch.compile(probe, fullgraph=True, backend="eager")(x).item() == 0
    assert skipped == eager_none
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_compiled_prefill_without_padding_runs_causal_without_a_mask(tiny_model_dir, recorder, arch, monkeypatch):
    """A compiled forward with a cache and without padding reaches the kernel as is_causal=True with no mask
    (the flash-style kernels stay eligible), with padding as a mask; both match eager logits. Mistral's window (8) bites at
    12 tokens, so its layers keep the mask there."""
    torch._dynamo.reset()
    eager, lz = _pair(tiny_model_dir, arch)
    for m in lz.modules():
        if hasattr(m, "num_key_value_groups"):
            setattr(m, lz_attention.ORCHESTRATOR_ATTR, "hf_test_recorder")
    compiled = torch.compile(lz, fullgraph=True, backend="eager")
    for seq, window_bites in ((6, False), (12, arch == "mistral")):
        ids = _ids(2, seq)
        recorder.calls.clear()
        with torch.no_grad():
            got, expected = compiled(ids).logits, eager(ids).logits
        assert (got - expected).abs().max().item() <= ATOL
        causal = [options["is_causal"] for _, options in recorder.calls]
        assert causal == [not window_bites] * lz.config.num_hidden_layers
    # without a cache Transformers adds a packed-sequence mask function it cannot rule out while tracing, so
    # the graph materializes a mask; the custom op recognizes it as plain causal at run time (from
    # MIN_CHECKED_SEQ queries on; below that the mask is passed as it is)
    for min_checked, seq in ((causal_mask.MIN_CHECKED_SEQ, 6), (4, 6), (4, 12)):
        monkeypatch.setattr(causal_mask, "MIN_CHECKED_SEQ", min_checked)
        recorder.calls.clear()
        with torch.no_grad():
            got = compiled(_ids(2, seq), use_cache=False).logits
            expected = eager(_ids(2, seq), use_cache=False).logits
        assert (got - expected).abs().max().item() <= ATOL
        recognized = min_checked <= seq and not (arch == "mistral" and seq == 12)
        assert [options["is_causal"] for _, options in recorder.calls] == [recognized] * lz.config.num_hidden_layers
    padding = torch.ones(2, 6, dtype=torch.long)
    padding[0, :2] = 0
    recorder.calls.clear()
    with torch.no_grad():
        got = compiled(_ids(2, 6), attention_mask=padding).logits
        expected = eager(_ids(2, 6), attention_mask=padding).logits
    assert (got - expected)[1].abs().max().item() <= ATOL and (got - expected)[0, 2:].abs().max().item() <= ATOL
    assert [options["is_causal"] for _, options in recorder.calls] == [False] * lz.config.num_hidden_layers
    torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_builds_the_mask_and_the_rope_tables_once_per_forward(monkeypatch):
    """Under Inductor the packed-sequence mask of a forward without a cache and the RoPE cos/sin tables go
    through the opaque ``layerzero::shared`` op, so Inductor builds each once instead of inlining its
    computation into every layer: one causal check (one host sync) per forward, not one per layer, and the
    cos/sin computation in fewer kernels than there are layers; the logits still match eager."""
    import re

    from torch._inductor.utils import run_and_get_code

    checks: list[bool] = []
    real = causal_mask._compare
    monkeypatch.setattr(causal_mask, "_compare", lambda mask, seq: checks.append(real(mask, seq)) or checks[-1])
    monkeypatch.setattr(causal_mask, "MIN_CHECKED_SEQ", 4)
    layers = 4
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB)
    torch.manual_seed(0)
    eager = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    lz = AutoModelForCausalLM.from_config(config, attn_implementation=NAME).eval()
    lz.load_state_dict(eager.state_dict())
    layerzero_hf.patch(lz, attention=True)
    torch._dynamo.reset()
    compiled = torch.compile(lz, fullgraph=True, backend="inductor")
    try:
        for seed in (1, 2):
            ids = _ids(2, 12, seed=seed)
            with torch.no_grad():
                got, (code, *_) = run_and_get_code(lambda: compiled(ids, use_cache=False).logits)
                expected = eager(ids, use_cache=False).logits
            assert (got - expected).abs().max().item() <= ATOL
    finally:
        layerzero_hf.unpatch(lz)
        torch._dynamo.reset()
    assert checks == [True, True]
    assert code.count("torch.ops.layerzero.shared.default(") == 1 + 2 * layers  # the mask; cos, sin per layer
    cos_kernel_calls = re.findall(r"^\s+(cpp_fused\w*_cos_\w*)\(", code, flags=re.MULTILINE)
    assert 0 < len(cos_kernel_calls) < layers, cos_kernel_calls


@pytest.mark.slow
def test_static_cache_generation_compiled_fullgraph(tiny_model_dir, recorder):
    """generate(cache_implementation="static") compiles the decode step (as it does on CUDA)."""
    from transformers import CompileConfig

    torch._dynamo.reset()
    eager, lz = _pair(tiny_model_dir, "llama")
    for m in lz.modules():
        if hasattr(m, "num_key_value_groups"):
            setattr(m, lz_attention.ORCHESTRATOR_ATTR, "hf_test_recorder")
    # backend="eager": dynamo's fullgraph trace (with the custom op's fake kernel) is what is under test;
    # Inductor code generation would only add minutes on CPU.
    compile_config = CompileConfig(fullgraph=True, backend="eager", mode=None)
    compile_config._compile_all_devices = True
    ids = _ids(2, 6, seed=4)
    got = _greedy(lz, ids, cache_implementation="static", compile_config=compile_config)
    expected = _greedy(eager, ids, cache_implementation="static")
    assert torch.equal(got, expected)
    decode_calls = [c for c in recorder.calls if c[0] == "attention.decode"]
    assert len(decode_calls) >= 2 * 31  # every decode step of both layers went through the custom op
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2", "gpt_oss"])
def test_gpu_static_cache_generation_autocompiles(tiny_model_dir, arch):
    """On CUDA, generate(cache_implementation="static") compiles the decode step with Inductor and
    CUDA graphs ("reduce-overhead"): the custom ops must trace, capture and replay correctly, for the
    attention and for every patched norm, RoPE and MLP (Qwen3's per-head q/k norms, gpt-oss's bool mask
    and attention sinks included), and leave the CUDA generator usable: a capture that raised part-way
    leaves it in capture state, and every later CUDA random draw (sampling in ``generate``) fails."""
    import layerzero_hf

    path = tiny_model_dir(arch)
    eager = _load(path, "eager").cuda()
    lz = _load(path, NAME).cuda()
    layerzero_hf.patch(lz)
    ids = _ids(2, 6, seed=6).cuda()
    expected = _greedy(eager, ids)
    got = _greedy(lz, ids, cache_implementation="static")
    assert getattr(lz, "_compiled_call", None) is not None, "generate did not auto-compile the forward"
    assert torch.equal(got, expected)
    again = _greedy(lz, ids, cache_implementation="static")  # replay of the captured graphs
    assert torch.equal(again, expected)
    torch.randint(0, 2, (4,), device="cuda")  # raises if a capture left the generator in capture state


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2", "gemma3_text", "gpt_oss"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_precision_logits_close_to_eager(tiny_model_dir, arch, dtype):
    path = tiny_model_dir(arch)
    eager = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=dtype).cuda().eval()
    lz = AutoModelForCausalLM.from_pretrained(path, attn_implementation=NAME, dtype=dtype).cuda().eval()
    ids = _ids(2, 40, seed=7).cuda()
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    with torch.no_grad():
        expected = eager(ids, attention_mask=mask).logits.float()
        got = lz(ids, attention_mask=mask).logits.float()
        fp32 = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").cuda().eval()(
            ids, attention_mask=mask).logits
    real = mask.bool()
    # LayerZero in half precision must be as close to the fp32 model as Transformers' own eager path is.
    err_lz = (got[real] - fp32[real]).abs().max().item()
    err_eager = (expected[real] - fp32[real]).abs().max().item()
    assert err_lz <= max(2 * err_eager, 2e-2), (err_lz, err_eager)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_gpu_compiled_prefill_without_cache_runs_the_materialized_causal_mask_as_causal(tiny_model_dir, monkeypatch,
                                                                                        mode):
    """Inductor-compiled forward without a cache on CUDA (Transformers materializes a packed-sequence mask
    while tracing): the attention custom op recognizes it as plain causal and the logits match eager. Under CUDA graphs ("reduce-overhead") the capture keeps the mask (no sync while
    capturing) and the replays are still right."""
    verdicts: list[bool] = []
    real = causal_mask._compare
    monkeypatch.setattr(causal_mask, "_compare", lambda mask, seq: verdicts.append(real(mask, seq)) or verdicts[-1])
    monkeypatch.setattr(causal_mask, "MIN_CHECKED_SEQ", 64)
    path = tiny_model_dir("llama")
    eager = _load(path, "eager").cuda()
    lz = _load(path, NAME).cuda()
    torch._dynamo.reset()
    compiled = torch.compile(lz, fullgraph=True, mode=mode)
    for seed in (1, 2, 3):
        ids = _ids(2, 96, seed=seed).cuda()
        with torch.no_grad():
            got = compiled(ids, use_cache=False).logits
            expected = eager(ids, use_cache=False).logits
        assert (got - expected).abs().max().item() <= 1e-3
    # the mask is one buffer per forward (layerzero::shared), so one check per forward; under CUDA graphs
    # only the runs outside the capture check
    assert verdicts and all(verdicts) and len(verdicts) <= 3
    torch._dynamo.reset()
