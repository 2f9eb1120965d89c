"""Patched vs unpatched on every supported architecture (tiny random weights, save_pretrained -> from_pretrained).

Tolerances: fp32 logits within 1e-4 (the replacements compute the same maths; only summation order may
differ). bf16 logits within BF16_ATOL: both models run in bf16 and the kernels round at different points
(F.rms_norm vs the HF expression), so differences of a few bf16 ulps of the logits (|logit| ~ 1-5 here,
1 ulp = 2^-7 relative) are expected; 0.1 bounds them with margin and still catches a wrong casting mode or
offset (those move logits by > 0.5 on these models). Measured on CPU (torch kernels): 0.0 for all eight; gpt-oss (a ninth spec) likewise.
"""

from __future__ import annotations

import torch
import pytest

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402

from conftest import build_tiny_config  # noqa: E402

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt_oss")
FP32_ATOL = 1e-4
BF16_ATOL = 0.1
NEW_TOKENS = 32


# gpt-oss routes each token to its top-k experts: one bf16 ulp of difference in a router logit flips an
# expert (measured: layer-1 router logits 0.04 apart, one index flipped, that token's logits 0.57 apart,
# with Triton RoPE rounding once where HF rounds twice). The bf16 check of its spec therefore pins the
# kernels that round like HF; kernel numerics are checked by the conformance tests.
_MOE = {"gpt_oss"}
_BF16_KERNELS = {"gpt_oss": {"rope": "torch_rope", "rms_norm": "torch_rms_norm"}}


def _supports_sdpa(arch: str) -> bool:
    """Transformers refuses sdpa for gpt-oss (attention sinks) and, in newer 5.x, Gemma-2 (logit softcapping):
    their baseline is eager. Asked of the model class, so the answer follows the installed release."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return bool(MODEL_FOR_CAUSAL_LM_MAPPING[type(build_tiny_config(arch))]._supports_sdpa)


def _load(tiny_model_dir, arch: str, dtype=torch.float32, attn: str = "sdpa"):
    if attn == "sdpa" and not _supports_sdpa(arch):
        attn = "eager"
    return transformers.AutoModelForCausalLM.from_pretrained(
        tiny_model_dir(arch), dtype=dtype, attn_implementation=attn).eval()


def _ids(batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (batch, seq), generator=g)


def _no_instance_forwards(model) -> bool:
    return not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_fp32_and_unpatch(arch, tiny_model_dir):
    model = _load(tiny_model_dir, arch)
    keys = list(model.state_dict().keys())
    ids = _ids(seq=20)  # longer than the sliding window (8) of mistral/qwen2/gemma2/gemma3
    with torch.no_grad():
        ref = model(ids).logits
    report = layerzero_hf.patch(model)
    counts = report.counts()
    n_layers = model.config.num_hidden_layers
    mlps = 0 if arch in _MOE else n_layers  # MoE experts are left to Transformers
    assert counts.get("rope") == n_layers and counts.get("mlp", 0) == mlps, report
    assert counts.get("rms_norm", 0) >= 2 * n_layers + 1, report
    assert not report.skipped, report
    with torch.no_grad():
        out = model(ids).logits
    assert (out - ref).abs().max().item() <= FP32_ATOL
    assert list(model.state_dict().keys()) == keys

    assert layerzero_hf.unpatch(model)
    assert _no_instance_forwards(model)
    assert not hasattr(model, "_layerzero_orchestrator")
    with torch.no_grad():
        again = model(ids).logits
    assert torch.equal(again, ref)
    assert list(model.state_dict().keys()) == keys


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_bf16(arch, tiny_model_dir):
    model = _load(tiny_model_dir, arch, dtype=torch.bfloat16)
    ids = _ids(seq=16)
    with torch.no_grad():
        ref = model(ids).logits.float()
        with layerzero_hf.patched(model, kernels=_BF16_KERNELS.get(arch)) as report:
            assert report.counts().get("rms_norm")
            out = model(ids).logits.float()
    assert out.dtype == ref.dtype
    diff = (out - ref).abs().max().item()
    assert diff <= BF16_ATOL, f"{arch}: bf16 max abs diff {diff}"
    assert _no_instance_forwards(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_dynamic_and_static(arch, tiny_model_dir):
    model = _load(tiny_model_dir, arch)
    ids = _ids(batch=1, seq=6, seed=1)
    kw = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=None)
    ref_dyn = model.generate(ids, **kw)
    ref_static = model.generate(ids, cache_implementation="static", **kw)
    layerzero_hf.patch(model)
    out_dyn = model.generate(ids, **kw)
    out_static = model.generate(ids, cache_implementation="static", **kw)
    assert out_dyn.shape[1] == ids.shape[1] + NEW_TOKENS
    assert torch.equal(out_dyn, ref_dyn)
    assert torch.equal(out_static, ref_static)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch(arch, tiny_model_dir):
    model = _load(tiny_model_dir, arch)
    ids = _ids(batch=2, seq=10, seed=2)
    mask = torch.ones_like(ids)
    ids[0, :4] = 0  # left padding of the first row
    mask[0, :4] = 0
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
    ref_gen = model.generate(ids, attention_mask=mask, **kw)
    layerzero_hf.patch(model)
    with torch.no_grad():
        out = model(ids, attention_mask=mask).logits
    valid = mask.bool()
    assert (out[valid] - ref[valid]).abs().max().item() <= FP32_ATOL
    assert torch.equal(model.generate(ids, attention_mask=mask, **kw), ref_gen)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "phi3"])
def test_patched_model_saves_plain_checkpoint(arch, tiny_model_dir, tmp_path):
    model = _load(tiny_model_dir, arch)
    ids = _ids(seq=8)
    with torch.no_grad():
        ref = model(ids).logits
    layerzero_hf.patch(model)
    model.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert _no_instance_forwards(plain)
    assert list(plain.state_dict().keys()) == list(model.state_dict().keys())
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, ref)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_layerzero_attention_with_patch(arch, tiny_model_dir):
    """Loaded with attn_implementation="layerzero" and patched: every op of the layer dispatches through the
    model's own orchestrator, and the logits match the eager model (HF's sdpa path ignores Gemma-2's softcap)."""
    pytest.importorskip("layerzero_hf.attention")
    ref_model = _load(tiny_model_dir, arch, attn="eager")
    model = _load(tiny_model_dir, arch, attn="layerzero")
    ids = _ids(seq=12)
    report = layerzero_hf.patch(model)
    assert report.attn_implementation == "layerzero"
    with torch.no_grad():
        diff = (model(ids).logits - ref_model(ids).logits).abs().max().item()
    assert diff <= FP32_ATOL
    snapshot = layerzero_hf.model_telemetry(model)["snapshot"]
    ops_seen = set(snapshot.per_operation)
    assert {"rms_norm", "rope"} <= ops_seen and any(op.startswith("attention") for op in ops_seen), ops_seen
