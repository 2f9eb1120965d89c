"""A patched model loaded with a device map, on CPU: accelerate's dispatch hooks are installed exactly as
for ``device_map="auto"`` over two GPUs (Transformers only dispatches when a map has more than one
placement, so the split here is cpu + disk offload).

What must hold: logits and greedy generation equal the unpatched model's (fp32, 1e-4), attention is
dispatched by LayerZero through the hooks, by default norms, RoPE and MLPs are bound under accelerate's
hooks (``hooks="compose"``: the replacement becomes ``module._old_forward``, never overwriting the hook),
with ``hooks="skip"`` such modules are reported as skipped, and ``unpatch`` leaves the hooks working.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
import layerzero_hf  # noqa: E402
from _md_tiny import prompt_ids  # noqa: E402

TOL = 1e-4
NEW_TOKENS = 6

# Layer 0 and the embeddings in memory, layer 1 and the head offloaded to disk.
EXPLICIT_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "disk",
    "lm_head": "disk",
}


def _load(path: Path, **kwargs):
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **kwargs).eval()


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _generate(model, ids: torch.Tensor) -> torch.Tensor:
    return model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                          pad_token_id=0, eos_token_id=None)


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: Path):
    """Logits and greedy tokens of the plain (unsharded, unpatched) model."""
    model = _load(tiny_llama_dir)
    ids = prompt_ids()
    return ids, _logits(model, ids), _generate(model, ids)


def _auto_budget(path: Path) -> int:
    """A CPU budget for device_map="auto" that holds the embeddings and one decoder layer: accelerate also
    reserves room for the largest layer, so the budget is embeddings + 2 layers + a margin."""
    from accelerate.utils import compute_module_sizes

    config = transformers.AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        meta = transformers.AutoModelForCausalLM.from_config(config)
    sizes = compute_module_sizes(meta)
    layer = sizes["model.layers.0"]
    return sizes["model.embed_tokens"] + 2 * layer + layer // 8


@pytest.fixture(params=["explicit", "auto"])
def dispatched(request, tiny_llama_dir: Path, tmp_path: Path):
    if request.param == "explicit":
        model = _load(tiny_llama_dir, device_map=EXPLICIT_MAP, offload_folder=tmp_path / "offload")
    else:
        model = _load(tiny_llama_dir, device_map="auto", max_memory={"cpu": _auto_budget(tiny_llama_dir)},
                      offload_folder=tmp_path / "offload")
    placements = set(model.hf_device_map.values())
    assert placements == {"cpu", "disk"}, f"device map did not split over cpu and disk: {model.hf_device_map}"
    assert hasattr(model.model.layers[-1], "_hf_hook"), "accelerate did not install its dispatch hooks"
    yield model
    layerzero_hf.unpatch(model)


def test_patched_device_map_model_matches_unpatched(dispatched, reference):
    ids, ref_logits, ref_tokens = reference
    before = _logits(dispatched, ids)
    torch.testing.assert_close(before, ref_logits, atol=TOL, rtol=0)

    report = layerzero_hf.patch(dispatched, attention=True)
    assert report.attn_implementation == "layerzero"
    after = _logits(dispatched, ids)
    assert (after - before).abs().max().item() <= TOL
    assert torch.equal(_generate(dispatched, ids), ref_tokens)

    snap = layerzero_hf.model_telemetry(dispatched)["snapshot"]
    attention_calls = sum(n for op, n in snap.per_operation.items() if op.startswith("attention"))
    # prefill of 2 layers for the logits and the generation, then one call per layer per new token
    assert attention_calls >= 2 * 2 + 2 * (NEW_TOKENS - 1)
    assert snap.failure_count == 0 and snap.fallback_count == 0


def test_modules_under_accelerate_hooks_are_reported_not_overwritten(dispatched):
    hooked = {name for name, m in dispatched.named_modules() if "forward" in m.__dict__}
    report = layerzero_hf.patch(dispatched, attention=True, hooks="skip")
    skipped = {s.path: s.reason for s in report.skipped}
    # Every module the spec covers carries an accelerate hook here, so each one is skipped, with the reason.
    assert skipped and set(skipped) <= hooked
    assert all("already has an instance forward" in why for why in skipped.values())
    assert not set(report.paths()) & hooked
    for name, module in dispatched.named_modules():
        if name in hooked:
            assert hasattr(module, "_hf_hook") and module.forward.func.__name__ == "new_forward"


def test_unpatch_keeps_the_hooks_and_the_results(dispatched, reference):
    ids, ref_logits, ref_tokens = reference
    hooks = {name: m.__dict__["forward"] for name, m in dispatched.named_modules() if "forward" in m.__dict__}
    layerzero_hf.patch(dispatched, attention=True)
    assert layerzero_hf.unpatch(dispatched)
    assert dispatched.config._attn_implementation == "eager"
    assert {name: m.__dict__["forward"] for name, m in dispatched.named_modules() if "forward" in m.__dict__} == hooks
    torch.testing.assert_close(_logits(dispatched, ids), ref_logits, atol=TOL, rtol=0)
    assert torch.equal(_generate(dispatched, ids), ref_tokens)


def test_device_map_model_gets_norms_rope_and_mlps_patched(dispatched, reference):
    ids, ref_logits, _ = reference
    report = layerzero_hf.patch(dispatched, attention=True)
    assert report.counts() == {"rms_norm": 5, "rope": 2, "mlp": 2}
    torch.testing.assert_close(_logits(dispatched, ids), ref_logits, atol=TOL, rtol=0)
