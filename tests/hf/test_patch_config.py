"""``patch()``'s config objects: PatchTargets / KernelChoice validation (field, value, fix), the old keywords
mapped onto their fields, and ``config=`` deprecated in favour of ``rules=``."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402
from layerzero.errors import ConfigValidationError, PatchError  # noqa: E402
from layerzero_hf import KernelChoice, PatchConfigError, PatchTargets  # noqa: E402
from layerzero_hf.patch_config import resolve_arguments  # noqa: E402

from conftest import build_tiny_model  # noqa: E402


def _fields(exc: pytest.ExceptionInfo) -> dict:
    return {p.field: p for p in exc.value.problems}


def test_targets_validation_names_field_value_and_fix():
    with pytest.raises(PatchConfigError) as exc:
        PatchTargets(kinds=["norms"], verify="sometimes", hooks="wrap", detect="yes", include=[3])
    assert isinstance(exc.value, ConfigValidationError) and isinstance(exc.value, PatchError)
    fields = _fields(exc)
    assert fields["kinds"].value == ["norms"] and "rms_norm, layer_norm, rope, mlp" in fields["kinds"].message
    assert fields["verify"].value == "sometimes" and "unknown, all, none" in fields["verify"].message
    assert fields["hooks"].value == "wrap" and "skip, compose" in fields["hooks"].message
    assert fields["detect"].value == "yes" and "True or False or None" in fields["detect"].message
    assert "include" in fields
    assert all(p.source == "PatchTargets" for p in exc.value.problems)
    assert "PatchTargets" in str(exc.value)


def test_choice_validation_names_field_value_and_fix():
    with pytest.raises(PatchConfigError) as exc:
        KernelChoice(rules=True, kernels=["rms_norm"], arm="", policy=3)
    fields = _fields(exc)
    assert "False (no rules)" in fields["rules"].message
    assert "operation -> kernel id" in fields["kernels"].message
    assert fields["arm"].value == "" and "non-empty string" in fields["arm"].message
    assert "policy" in fields


def test_objects_are_frozen_and_normalised():
    targets = PatchTargets(kinds=["rope", "rms_norm", "rope"], include="model.layers.*")
    assert targets.kinds == ("rms_norm", "rope") and targets.include == ("model.layers.*",)
    assert PatchTargets().selected_kinds == layerzero_hf.default_patch_kinds()
    assert "residual_norm" in layerzero_hf.patch_kinds() and "residual_norm" in layerzero_hf.default_patch_kinds()
    with pytest.raises(dataclasses.FrozenInstanceError):
        targets.verify = "all"  # type: ignore[misc]
    kernels = {"rms_norm": "torch_rms_norm"}
    choice = KernelChoice(kernels=kernels)
    kernels["rope"] = "x"
    assert choice.kernels == {"rms_norm": "torch_rms_norm"}


def test_old_keywords_map_onto_the_fields():
    targets, choice = resolve_arguments("patch", None, None, dict(
        only=["mlp"], self_check="all", detect_unknown=True, hooks="skip", attention=True, strict=True,
        spec={"model_types": ["x"]}, kernels={"rms_norm": "torch_rms_norm"}, policy={"version": 1}, arm="a",
        arms={"a": {}}, experiment="e", model_id="m", dispatch_config=None, rules=False))
    assert (targets.kinds, targets.verify, targets.detect, targets.hooks, targets.attention, targets.strict) == (
        ("mlp",), "all", True, "skip", True, True)
    assert choice == KernelChoice(rules=False, policy={"version": 1}, kernels={"rms_norm": "torch_rms_norm"},
                                  arms={"a": {}}, arm="a", experiment="e", model_id="m")
    # a keyword replaces the field of the object passed; the rest of the object stays
    targets, choice = resolve_arguments("patch", PatchTargets(kinds=["rope"], verify="all"),
                                        KernelChoice(arm="b"), {"self_check": "none", "model_id": "m"})
    assert targets == PatchTargets(kinds=["rope"], verify="none") and choice == KernelChoice(arm="b", model_id="m")


def test_keyword_problems_name_the_keyword_used():
    with pytest.raises(PatchConfigError) as exc:
        resolve_arguments("patch", None, None, {"only": ["norms"], "self_check": "x"})
    assert set(_fields(exc)) == {"only", "self_check"}
    assert "patch(only=...)" in str(exc.value)
    with pytest.raises(TypeError, match="unexpected keyword"):
        resolve_arguments("patch", None, None, {"onyl": ["rope"]})
    with pytest.raises(PatchConfigError, match="KernelChoice"):
        resolve_arguments("patch", None, {"rules": False}, {})


def test_config_keyword_is_deprecated_for_rules():
    with pytest.warns(DeprecationWarning, match="rules="):
        _, choice = resolve_arguments("patch", None, None, {"config": False})
    assert choice.rules is False
    with pytest.warns(DeprecationWarning, match="rules="):
        _, choice = resolve_arguments("patch", {"version": 1, "rules": []}, None, {})  # the old positional
    assert choice.rules == {"version": 1, "rules": []}
    with pytest.raises(PatchConfigError, match="rules="), pytest.warns(DeprecationWarning):
        resolve_arguments("patch", None, None, {"config": False, "rules": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_arguments("patch", None, None, {"rules": False})


def test_patch_with_objects_equals_patch_with_keywords():
    model = build_tiny_model("llama")
    by_objects = layerzero_hf.patch(model, PatchTargets(kinds=["rms_norm"], exclude=["model.norm"]),
                                    KernelChoice(rules=False))
    assert set(by_objects.counts()) == {"rms_norm"} and "model.norm" not in by_objects.paths()
    assert by_objects.paths() and all(p.startswith("model.layers.") for p in by_objects.paths())
    # the same arguments as keywords: idempotent, the same report back
    assert layerzero_hf.patch(model, only=["rms_norm"], exclude=["model.norm"], rules=False) is by_objects
    with pytest.warns(DeprecationWarning, match="rules=") as record:
        assert layerzero_hf.patch(model, only=["rms_norm"], exclude=["model.norm"], config=False) is by_objects
    assert record[0].filename == __file__  # the warning points at the caller's line
    with pytest.warns(DeprecationWarning, match="rules=") as record:
        with layerzero_hf.patched(model, PatchTargets(include=["model.norm"]), config=False) as inner:
            assert inner.paths() == ["model.norm"]
    assert record[0].filename == __file__
    assert layerzero_hf.patch_report(model) is not inner
    assert layerzero_hf.patch_report(model).paths() == by_objects.paths()
    layerzero_hf.unpatch(model)
    with pytest.raises(PatchError, match="only="):
        layerzero_hf.patch(model, only=["norms"])
    assert not layerzero_hf.is_patched(model)
