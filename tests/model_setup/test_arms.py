"""A/B arms: sticky, weighted, forced by name, replaced per call."""

from __future__ import annotations

import pytest

from layerzero.errors import ConfigValidationError
from layerzero.model_setup import arm_distribution, parse_rules, resolve

AB = {"experiments": [{"name": "norm-ab", "seed": "s1", "match": {"model_type": "llama"},
                       "arms": [{"name": "control", "weight": 3},
                                {"name": "reference", "weight": 1, "kernels": {"rms_norm": "reference_rms_norm"}}]}]}
LLAMA = {"model_type": "llama", "architectures": ("LlamaForCausalLM",)}


def test_assignment_is_sticky_and_follows_the_weights():
    exp = parse_rules(AB).experiments[0]
    ids = [f"org/model-{i}" for i in range(2000)]
    assert [exp.assign(i).name for i in ids[:50]] == [exp.assign(i).name for i in ids[:50]]
    counts = arm_distribution(exp, ids)
    assert 0.68 < counts["control"] / len(ids) < 0.82


def test_arm_kernels_apply_to_matching_models_only():
    rs = parse_rules(AB)
    forced = resolve(rs, {**LLAMA, "name_or_path": "a"}, arm="reference")
    assert (forced.experiment, forced.arm) == ("norm-ab", "reference")
    assert dict(forced.kernels) == {"rms_norm": "reference_rms_norm"}
    other = resolve(rs, {"model_type": "gemma"})
    assert other.experiment is None and other.arm is None
    with pytest.raises(ConfigValidationError, match="no experiment matches"):
        resolve(rs, {"model_type": "gemma"}, arm="reference")


def test_arms_passed_by_the_caller_replace_the_experiments_arms():
    res = resolve(parse_rules(AB), {**LLAMA, "name_or_path": "x"}, arms={"only": {"kernels": {"swiglu": "torch_swiglu"}}})
    assert (res.experiment, res.arm) == ("norm-ab", "only") and dict(res.kernels) == {"swiglu": "torch_swiglu"}
    with pytest.raises(ConfigValidationError):
        resolve(parse_rules(AB), LLAMA, arms=[{"name": "a", "weight": 0}])
