"""The ``residual_norm`` kind: a pre-norm decoder layer's attention residual add fused into the
post-attention RMSNorm (``layerzero_hf.residual_norm``)."""

from __future__ import annotations

import pytest
import torch

import layerzero_hf
from layerzero_hf.residual_norm import structure_mismatch

transformers = pytest.importorskip("transformers")

PRE_NORM_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma")
WITH_FUSION = ["rms_norm", "rope", "mlp", "residual_norm"]
ROLES = dict(pre_norm="input_layernorm", attention="self_attn", norm="post_attention_layernorm", mlp="mlp")


def _load(tiny_model_dir, arch: str):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), attn_implementation="sdpa").eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch", PRE_NORM_ARCHS)
def test_fused_layers_match_the_unfused_patch_and_generate_the_same_tokens(tiny_model_dir, arch):
    model = _load(tiny_model_dir, arch)
    ids = torch.randint(3, 128, (2, 12))
    plain = _logits(model, ids)
    plain_tokens = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)

    layerzero_hf.patch(model, attention=True)
    unfused = _logits(model, ids)
    layerzero_hf.unpatch(model)

    report = layerzero_hf.patch(model, only=WITH_FUSION, attention=True)
    assert report.counts().get("residual_norm") == model.config.num_hidden_layers, report.skipped
    fused = _logits(model, ids)
    tokens = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    layerzero_hf.unpatch(model)

    # the CPU kernels add then normalise, as the layer did: the same numbers
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-6)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(tokens, plain_tokens)
    assert "forward" not in model.model.layers[0].__dict__  # unpatch restored the class forward


def test_on_by_default_and_off_when_not_selected(tiny_model_dir):
    model = _load(tiny_model_dir, "llama")
    report = layerzero_hf.patch(model)
    assert report.counts()["residual_norm"] == model.config.num_hidden_layers
    layerzero_hf.unpatch(model)
    report = layerzero_hf.patch(model, only=["rms_norm", "rope", "mlp"])
    assert "residual_norm" not in report.counts()
    assert not [s for s in report.skipped if s.kind == "residual_norm"]
    layerzero_hf.unpatch(model)


def test_left_alone_when_the_norm_is_not_patched(tiny_model_dir):
    model = _load(tiny_model_dir, "llama")
    report = layerzero_hf.patch(model, only=["residual_norm"])
    assert "residual_norm" not in report.counts()
    reasons = [s.reason for s in report.skipped if s.kind == "residual_norm"]
    assert reasons and all("not patched as rms_norm" in r for r in reasons)
    layerzero_hf.unpatch(model)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "phi3", "gpt_oss"])
def test_layers_of_another_shape_are_recognised(tiny_config, arch):
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(arch))
    layer = type(model.model.layers[0])
    forward = layer.forward
    while hasattr(forward, "__wrapped__"):
        forward = forward.__wrapped__
    why = structure_mismatch(forward, ROLES)
    assert why is not None and ("pre-norm" in why or "parameters" in why)


def test_a_renamed_submodule_is_a_different_structure(tiny_config):
    model = transformers.AutoModelForCausalLM.from_config(tiny_config("llama"))
    forward = type(model.model.layers[0]).forward
    while hasattr(forward, "__wrapped__"):
        forward = forward.__wrapped__
    assert structure_mismatch(forward, ROLES) is None
    assert structure_mismatch(forward, {**ROLES, "mlp": "feed_forward"}) is not None


def test_hooked_norm_is_called_as_a_module(tiny_model_dir):
    model = _load(tiny_model_dir, "qwen3")
    ids = torch.randint(3, 128, (1, 10))
    plain = _logits(model, ids)
    calls = []
    norm = model.model.layers[0].post_attention_layernorm
    handle = norm.register_forward_hook(lambda mod, args, out: calls.append(out.shape))
    layerzero_hf.patch(model, only=WITH_FUSION)
    out = _logits(model, ids)
    layerzero_hf.unpatch(model)
    handle.remove()
    assert len(calls) == 1  # the fused layer ran the hooked norm as a module, so its hook saw the call
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)


def test_positional_options_reach_attention_as_the_original_passes_them(tiny_model_dir):
    model = _load(tiny_model_dir, "llama")
    layer = model.model.layers[0]
    x = torch.randn(1, 6, model.config.hidden_size)
    pos = torch.arange(6)[None]
    emb = model.model.rotary_emb(x, pos)
    with torch.no_grad():
        expected = layer(x, None, pos, None, False, emb)
        layerzero_hf.patch(model, only=WITH_FUSION)
        positional = layer(x, None, pos, None, False, emb)
        named = layer(x, position_ids=pos, position_embeddings=emb)
        with pytest.raises(TypeError, match="multiple values for argument 'attention_mask'"):
            layer(x, None, attention_mask=None)
        with pytest.raises(TypeError, match="positional"):
            layer(x, None, pos, None, False, emb, None)
    layerzero_hf.unpatch(model)
    torch.testing.assert_close(positional, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(named, expected, rtol=1e-5, atol=1e-5)


def test_fused_layers_compile_without_graph_breaks(tiny_model_dir):
    model = _load(tiny_model_dir, "llama")
    ids = torch.randint(3, 128, (1, 12))
    plain = _logits(model, ids)
    layerzero_hf.patch(model, only=WITH_FUSION, attention=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = _logits(compiled, ids)
    layerzero_hf.unpatch(model)
    torch._dynamo.reset()
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)
