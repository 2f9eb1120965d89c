"""Rule matching on fact mappings (no framework config object anywhere) and resolution order."""

from __future__ import annotations

import pytest

from layerzero.errors import ConfigValidationError
from layerzero.model_setup import Matcher, ModelFacts, load_rules, parse_rules, resolve

LLAMA = {"model_type": "llama", "architectures": ("LlamaForCausalLM",), "name_or_path": "meta/llama-1b",
         "hidden_size": 64}
GEMMA = {"model_type": "gemma2", "architectures": ("Gemma2ForCausalLM",), "name_or_path": "google/gemma-2b"}

RULES = {
    "rules": [
        {"name": "all-causal", "match": {"architecture": "*ForCausalLM"}, "kernels": {"rms_norm": "torch_rms_norm"}},
        {"name": "gemma", "match": {"model_type": ["gemma", "gemma2"], "name_or_path": "google/*"},
         "kernels": {"rms_norm": "reference_rms_norm"}, "policy": {"kernel_denies": ["liger_*"]}},
    ],
}


@pytest.mark.parametrize("matcher, facts, expected", [
    (Matcher(), LLAMA, True),
    (Matcher(model_type=("llama",)), LLAMA, True),
    (Matcher(model_type=("gemma*",)), LLAMA, False),
    (Matcher(architecture=("*ForCausalLM",)), GEMMA, True),
    (Matcher(architecture=("*ForCausalLM",)), {"model_type": "llama"}, False),  # no architectures known
    (Matcher(model_type=("gemma2",), name_or_path=("meta/*",)), GEMMA, False),  # fields are AND-ed
    (Matcher(model_type=("*",)), {}, True),  # a missing model type matches "*" (as the empty string)
])
def test_matcher_on_fact_mappings(matcher, facts, expected):
    assert matcher(facts) is expected
    assert matcher(ModelFacts.from_mapping(facts)) is expected


def test_rules_apply_in_file_order_then_caller_wins():
    rs = parse_rules(RULES, "models.yaml")
    llama = resolve(rs, LLAMA)
    assert llama.rules == ("all-causal",) and dict(llama.kernels) == {"rms_norm": "torch_rms_norm"}
    gemma = resolve(rs, GEMMA)
    assert gemma.rules == ("all-causal", "gemma") and dict(gemma.kernels) == {"rms_norm": "reference_rms_norm"}
    assert gemma.policy_mapping() == {"kernel_denies": ["liger_*"], "kernel_locks": {"rms_norm": "reference_rms_norm"}}
    mine = resolve(rs, GEMMA, kernels={"rms_norm": "torch_rms_norm"})
    assert dict(mine.kernels) == {"rms_norm": "torch_rms_norm"} and mine.model_id == "google/gemma-2b"


def test_nothing_matched_overrides_nothing():
    res = resolve(parse_rules({"rules": [RULES["rules"][1]]}), LLAMA)
    assert res.rules == () and res.policy_mapping() is None


def test_rules_file_from_env_var_and_missing_file_names_its_origin(tmp_path, monkeypatch):
    path = tmp_path / "models.yaml"
    path.write_text("version: 1\nrules:\n  - name: r\n    match: {model_type: llama}\n")
    monkeypatch.setenv("MY_RULES", str(path))
    rs = load_rules(env_var="MY_RULES")
    assert [r.name for r in rs.rules] == ["r"] and rs.source == str(path)
    monkeypatch.setenv("MY_RULES", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigValidationError, match=r"rules file not found \(from \$MY_RULES\)"):
        load_rules(env_var="MY_RULES")
    monkeypatch.delenv("MY_RULES")
    assert load_rules(env_var="MY_RULES", packaged=False).rules == ()
    assert load_rules(env_var="MY_RULES").source  # the shipped file


def test_validation_names_field_and_value():
    with pytest.raises(ConfigValidationError) as exc:
        parse_rules({"rules": [{"name": "r", "match": {"dtype": "bf16"}, "kernels": {"rms_norm": "nope"}}]}, "m.yaml")
    fields = {p.field for p in exc.value.problems}
    assert fields == {"rules[0].match.dtype", "rules[0].kernels.rms_norm"}
