"""The patch-kind registry: kinds registered with their parameter schema, specs validated against it, the
planner building replacements through it (shipped kinds and a registered one)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402
from layerzero.errors import ConfigValidationError  # noqa: E402
from layerzero_hf import Param, PatchTargets, register_patch_kind  # noqa: E402
from layerzero_hf.kinds import Replacement, SkipModule, get_patch_kind, unregister_patch_kind  # noqa: E402
from layerzero_hf.specs import parse_arch_spec  # noqa: E402

from conftest import build_tiny_model  # noqa: E402


@pytest.fixture
def keep_norm():
    """A registered kind ``keep_norm`` whose replacement is the module's own class forward (so outputs stay
    identical); ``skip: true`` makes the builder refuse the module."""
    calls: list[str] = []

    @register_patch_kind("keep_norm", params={"skip": Param(bool, False), "label": Param(str, choices=("a", "b"))})
    def build(ctx, path, module, params, *, verify, detected):
        calls.append(path)
        if params["skip"]:
            raise SkipModule("asked to skip")
        return Replacement(type(module).forward, "rms_norm", f"kept ({params['label']}, {ctx.orch})")

    yield calls
    unregister_patch_kind("keep_norm")


def test_shipped_kinds_are_registered_with_their_schema():
    assert layerzero_hf.patch_kinds()[:4] == ("rms_norm", "layer_norm", "rope", "mlp")
    rms = get_patch_kind("rms_norm")
    assert rms is not None and rms.params["casting"].choices == ("llama", "gemma", "none")
    assert get_patch_kind("mlp").params["layout"].default is ...  # required
    with pytest.raises(ValueError, match="already registered"):
        register_patch_kind("rope", params={})(lambda *a, **k: None)
    with pytest.raises(TypeError, match="Param"):
        register_patch_kind("bad", params={"x": str})


def test_spec_params_are_validated_against_the_registered_schema(keep_norm):
    spec = parse_arch_spec({"model_types": ["x"], "patches": [
        {"kind": "keep_norm", "match": {"classes": ["A"]}, "params": {"label": "a"}}]}, "x.yaml")
    assert spec.patches[0].params == {"label": "a", "skip": False}
    with pytest.raises(ConfigValidationError) as exc:
        parse_arch_spec({"model_types": ["x"], "patches": [
            {"kind": "keep_norm", "match": {"classes": ["A"]}, "params": {"label": "c", "skip": "no", "z": 1}},
            {"name": "second", "kind": "keep_norm", "match": {"classes": ["A"]}},
            {"name": "third", "kind": "mystery", "match": {"classes": ["A"]}}]}, "x.yaml")
    fields = {p.field: p for p in exc.value.problems}
    assert fields["patches[0].params.label"].value == "c" and "a, b" in fields["patches[0].params.label"].message
    assert "true/false" in fields["patches[0].params.skip"].message
    assert "unknown parameter" in fields["patches[0].params.z"].message
    assert "required parameter" in fields["patches[1].params.label"].message
    assert "keep_norm" in fields["patches[2].kind"].message and "register_patch_kind" in fields["patches[2].kind"].message


def test_planner_builds_through_a_registered_kind(keep_norm):
    model = build_tiny_model("llama")
    ids = torch.randint(3, 100, (1, 6))
    with torch.no_grad():
        ref = model(ids).logits
    spec = {"model_types": ["llama"], "patches": [
        {"name": "final", "kind": "keep_norm", "match": {"paths": ["model.norm"]}, "params": {"label": "b"}},
        {"name": "first", "kind": "keep_norm", "match": {"paths": ["model.layers.0.input_layernorm"]},
         "params": {"label": "a", "skip": True}}]}
    report = layerzero_hf.patch(model, PatchTargets(kinds=["keep_norm"], spec=spec))
    assert keep_norm == ["model.layers.0.input_layernorm", "model.norm"]
    assert [(p.path, p.kind, p.source) for p in report.patched] == [("model.norm", "keep_norm", "final")]
    assert report.patched[0].detail == f"kept (b, {report.orchestrator})"
    assert [(s.path, s.reason) for s in report.skipped] == [("model.layers.0.input_layernorm", "asked to skip")]
    assert "forward" in model.model.norm.__dict__
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref)
    # kinds not selected are planned for no module
    other = layerzero_hf.patch(model, PatchTargets(kinds=["rms_norm"], spec=spec))
    assert not other.patched and not other.skipped
    layerzero_hf.unpatch(model)
    assert "forward" not in model.model.norm.__dict__
