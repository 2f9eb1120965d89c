"""Per-model rules and A/B experiments: validation, sticky assignment, and their effect on kernel choice."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402
from layerzero.errors import ConfigValidationError  # noqa: E402
from layerzero.context.call_context import SelectionContext  # noqa: E402
from layerzero_hf.rules import ModelFacts, arm_distribution, load_rules, parse_rules, resolve  # noqa: E402

from conftest import build_tiny_model  # noqa: E402

AB = {
    "experiments": [{
        "name": "norm-ab", "seed": "s1", "match": {"model_type": "llama"},
        "arms": [{"name": "control", "weight": 50},
                 {"name": "reference", "weight": 50, "kernels": {"rms_norm": "reference_rms_norm"}}],
    }]
}


def _norm_choice(model) -> str:
    orch = layerzero_hf.orchestrator_of(model)
    ctx = SelectionContext(operation="rms_norm", dtype="float32", device="cpu", hidden_size=64, casting="llama")
    return orch.explain("rms_norm", ctx).chosen


def test_shipped_rules_load_and_validate():
    rs = load_rules()
    names = [r.name for r in rs.rules]
    assert "gemma-norms" in names and "phi3-partial-rope" in names
    exp = rs.experiments[0]
    assert {a.name for a in exp.arms} == {"control", "triton"}
    assert exp.match(ModelFacts("llama", ("LlamaForCausalLM",), "org/layerzero-ab-demo-1b"))
    assert not exp.match(ModelFacts("llama", ("LlamaForCausalLM",), "meta-llama/Llama-3.2-1B"))


def test_validation_names_file_field_and_value():
    bad = {
        "rules": [
            {"name": "r1", "match": {"model_typ": "llama"}, "kernels": {"rms_norm": "torch_rms_nrom"}},
            {"name": "r2", "kernels": {"rmsnorm": "torch_rms_norm"}, "policy": {"kernel_lock": {}}},
        ],
        "experiments": [{"name": "e", "arms": [{"name": "a", "weight": -1}, {"name": "a", "weight": 1}]}],
    }
    with pytest.raises(ConfigValidationError) as exc:
        parse_rules(bad, "models.yaml")
    problems = {p.field: p for p in exc.value.problems}
    assert problems["rules[0].match.model_typ"].value == "llama"
    assert "torch_rms_norm" in problems["rules[0].kernels.rms_norm"].message  # did-you-mean
    assert problems["rules[1].kernels.rmsnorm"].value == "rmsnorm"
    assert "rules[1].policy.kernel_lock" in problems
    assert problems["experiments[0].arms[0].weight"].value == -1
    assert "duplicate" in problems["experiments[0].arms[1].name"].message
    assert all(p.source == "models.yaml" for p in exc.value.problems)


def test_invalid_policy_fails_before_anything_is_bound():
    model = build_tiny_model("llama")
    with pytest.raises(ConfigValidationError):
        layerzero_hf.patch(model, policy={"kernel_locks": {"rms_norm": "no_such_kernel"}})
    assert not layerzero_hf.is_patched(model)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_ab_assignment_is_sticky_and_balanced():
    exp = parse_rules(AB).experiments[0]
    ids = [f"org/model-{i}" for i in range(2000)]
    first = [exp.assign(i).name for i in ids]
    again = [parse_rules(AB).experiments[0].assign(i).name for i in ids]
    assert first == again  # deterministic: a hash of (seed, experiment, model id), no random()
    dist = arm_distribution(exp, ids)
    assert set(dist) == {"control", "reference"}
    assert 0.45 <= dist["control"] / len(ids) <= 0.55
    reseeded = parse_rules({**AB, "experiments": [{**AB["experiments"][0], "seed": "s2"}]}).experiments[0]
    assert [reseeded.assign(i).name for i in ids] != first  # a new random seed reshuffles


def test_rules_change_the_chosen_kernel():
    rules = {"rules": [
        {"name": "llama-reference-norm", "match": {"model_type": "llama", "architecture": "*ForCausalLM"},
         "kernels": {"rms_norm": "reference_rms_norm"}},
        {"name": "only-for-org", "match": {"name_or_path": "other-org/*"}, "kernels": {"swiglu": "reference_swiglu"}},
    ]}
    plain = build_tiny_model("llama")
    ruled = build_tiny_model("llama")
    layerzero_hf.patch(plain, config=False)
    report = layerzero_hf.patch(ruled, config=rules)
    assert report.rules == ("llama-reference-norm",)
    assert report.kernels == {"rms_norm": "reference_rms_norm"}
    assert _norm_choice(plain) == "torch_rms_norm"
    assert _norm_choice(ruled) == "reference_rms_norm"
    with torch.no_grad():
        ruled(torch.randint(3, 128, (1, 6)))
    per_kernel = layerzero_hf.model_telemetry(ruled)["snapshot"].per_kernel
    assert per_kernel["reference_rms_norm"].calls == 5
    assert "reference_swiglu" not in per_kernel  # the name_or_path rule did not match


def test_arm_is_recorded_and_changes_kernels():
    seen: dict[str, str] = {}
    for i in range(40):
        model = build_tiny_model("llama") if i == 0 else model  # noqa: F821  (reuse one model, re-patch)
        report = layerzero_hf.patch(model, config=AB, model_id=f"fleet/model-{i}")
        assert model._layerzero_arm == report.arm
        assert layerzero_hf.model_telemetry(model)["labels"]["arm"] == report.arm
        assert report.experiment == "norm-ab"
        seen.setdefault(report.arm, _norm_choice(model))
        if len(seen) == 2:
            break
    assert seen == {"control": "torch_rms_norm", "reference": "reference_rms_norm"}  # both arms reachable
    # per-call overrides: force an arm, or replace the arms
    forced = layerzero_hf.patch(model, config=AB, arm="reference")
    assert forced.arm == "reference" and _norm_choice(model) == "reference_rms_norm"
    custom = layerzero_hf.patch(model, config=AB, arms={"only": {"weight": 1, "kernels": {"rms_norm": "torch_rms_norm"}}})
    assert custom.arm == "only" and custom.experiment == "norm-ab"
    # the caller's kernels win over the arm
    override = layerzero_hf.patch(model, config=AB, arm="reference", kernels={"rms_norm": "torch_rms_norm"})
    assert _norm_choice(model) == "torch_rms_norm" and override.arm == "reference"
    with pytest.raises(ConfigValidationError, match="arm"):
        layerzero_hf.patch(model, config=AB, arm="nope")


def test_resolution_order_rules_then_arm_then_call():
    rs = parse_rules({
        "rules": [{"name": "a", "kernels": {"rms_norm": "reference_rms_norm", "rope": "reference_rope"}},
                  {"name": "b", "policy": {"kernel_denies": ["liger_*"]}}],
        "experiments": [{"name": "e", "arms": [{"name": "x", "kernels": {"rope": "torch_rope"}}]}],
    })
    res = resolve(rs, ModelFacts("llama", (), "m"), kernels={"rms_norm": "torch_rms_norm"})
    assert res.kernels == {"rms_norm": "torch_rms_norm", "rope": "torch_rope"}
    assert res.rules == ("a", "b") and res.arm == "x"
    assert res.policy_mapping()["kernel_denies"] == ["liger_*"]
    assert res.policy_mapping()["kernel_locks"] == {"rms_norm": "torch_rms_norm", "rope": "torch_rope"}


def test_lazy_orchestrator_from_config_for_layerzero_attention(tiny_model_dir):
    """A model loaded with attn_implementation="layerzero" and never patched: the attention function's
    lookup resolves rules and the arm from module.config, once per model."""
    pytest.importorskip("layerzero_hf.attention")
    from layerzero import ops

    a = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), attn_implementation="layerzero")
    b = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), attn_implementation="layerzero")
    attn_a = [m for m in a.modules() if type(m).__name__ == "LlamaAttention"]
    names_a = {layerzero_hf.orchestrator_for(m) for m in attn_a}
    name_b = layerzero_hf.orchestrator_for(b.model.layers[0].self_attn)
    assert len(names_a) == 1 and name_b not in names_a
    assert set(ops.list_orchestrators()) >= names_a | {name_b}
    assert all(m.__dict__["_layerzero_orchestrator"] in names_a for m in attn_a)
    # a later patch() takes over the same model's lookups
    report = layerzero_hf.patch(a)
    assert layerzero_hf.orchestrator_for(a.model.layers[1].self_attn) == report.orchestrator


def test_lazy_path_reads_rules_from_environment(tiny_model_dir, tmp_path, monkeypatch):
    """Servers configure rules without code: $LAYERZERO_HF_RULES names the models.yaml the attention
    function's lazy setup uses; the arm is then visible through model_arm/model_telemetry."""
    pytest.importorskip("layerzero_hf.attention")
    import yaml

    rules = tmp_path / "models.yaml"
    rules.write_text(yaml.safe_dump({"experiments": [{
        "name": "env-ab", "seed": "x", "arms": [{"name": "only", "kernels": {"rms_norm": "reference_rms_norm"}}]}]}))
    monkeypatch.setenv("LAYERZERO_HF_RULES", str(rules))
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen2"), attn_implementation="layerzero")
    with torch.no_grad():
        model(torch.randint(3, 128, (1, 5)))
    assert layerzero_hf.model_arm(model) == "only"
    labels = layerzero_hf.model_telemetry(model)["labels"]
    assert labels["experiment"] == "env-ab" and labels["arm"] == "only"
    assert layerzero_hf.orchestrator_of(model).get_telemetry().per_operation.get("attention.prefill")


# ---------------------------------------------------------------------------------------------- guarded reading
_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def _rejected_quickly(fn, *args):
    import time

    start = time.perf_counter()
    with pytest.raises(ConfigValidationError) as exc:
        fn(*args)
    assert time.perf_counter() - start < 5  # the unguarded expansion takes minutes; generous for a loaded CI machine
    assert len(str(exc.value)) < 2000  # a clipped message, not megabytes of expanded aliases
    return exc.value


def test_alias_bomb_in_a_rules_file_is_rejected(tmp_path, monkeypatch):
    path = tmp_path / "models.yaml"
    path.write_text("rules: []\n" + _BOMB)
    err = _rejected_quickly(load_rules, str(path))
    assert "alias" in str(err) and str(path) in str(err)
    monkeypatch.setenv("LAYERZERO_HF_RULES", str(path))
    assert "alias" in str(_rejected_quickly(load_rules))


def test_alias_bomb_in_an_arch_spec_file_is_rejected(tmp_path):
    from layerzero_hf.specs import load_arch_spec

    path = tmp_path / "llama.yaml"
    path.write_text(_BOMB)
    assert "alias" in str(_rejected_quickly(load_arch_spec, path))


def test_rules_and_spec_paths_that_are_fifos_never_block(tmp_path):
    import os

    from layerzero_hf.specs import load_arch_spec

    fifo = tmp_path / "models.yaml"
    os.mkfifo(fifo)
    assert "named pipe" in str(_rejected_quickly(load_rules, str(fifo)))
    assert "named pipe" in str(_rejected_quickly(load_arch_spec, fifo))


def test_policy_files_given_to_patch_are_read_guarded(tmp_path):
    import os

    from layerzero.model_setup import policy_mapping as _policy_mapping

    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    assert "named pipe" in str(_rejected_quickly(_policy_mapping, str(fifo)))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_BOMB)
    assert "alias" in str(_rejected_quickly(_policy_mapping, str(bomb)))
