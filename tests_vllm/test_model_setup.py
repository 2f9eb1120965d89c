"""Per-model orchestrators inside vLLM: built through layerzero.model_setup from the model's Hugging Face
config, shared by every op of that model, released with the config (the core's weak-reference lifecycle).
In-process, no engine: the config vLLM would have in scope is substituted."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

import layerzero_vllm
from layerzero import ops
from layerzero_vllm import model_setup, planning

RULES = "version: 1\nrules:\n  - name: llama-swiglu\n    match: {model_type: [llama]}\n" \
        "    kernels: {swiglu: reference_swiglu}\n"


def _config(model_type: str = "llama"):
    from transformers import PretrainedConfig

    cfg = PretrainedConfig(architectures=["LlamaForCausalLM"], hidden_size=64)
    cfg.model_type = model_type
    return cfg


def test_one_orchestrator_per_model_from_the_rules_released_with_its_config(tmp_path, monkeypatch):
    rules = tmp_path / "models.yaml"
    rules.write_text(RULES)
    monkeypatch.setenv("LAYERZERO_RULES", str(rules))
    config = _config()
    monkeypatch.setattr(model_setup, "current_hf_config", lambda: config)
    name = model_setup.orchestrator_for_current_model()
    assert name.startswith("layerzero_vllm:llama:") and model_setup.orchestrator_for_current_model() == name
    (setup,) = [s for s in model_setup.setups() if s.name == name]
    assert setup.resolution.rules == ("llama-swiglu",) and setup.facts.extra["hidden_size"] == 64
    assert name in model_setup.orchestrators() and ops.has_orchestrator(name)
    planning._plans[("swiglu", name, "probe")] = planning.LayerPlan("swiglu", (("decode", "x"),), False)

    monkeypatch.setattr(model_setup, "current_hf_config", lambda: None)
    del config
    gc.collect()
    assert not ops.has_orchestrator(name) and name not in model_setup.orchestrators()
    assert not any(key[1] == name for key in planning._plans)


def test_without_a_rules_file_no_rules_apply(monkeypatch):
    monkeypatch.delenv("LAYERZERO_RULES", raising=False)
    monkeypatch.delenv("LAYERZERO_HF_RULES", raising=False)
    assert model_setup.rules_path() is None
    config = _config("gemma")
    monkeypatch.setattr(model_setup, "current_hf_config", lambda: config)
    name = model_setup.orchestrator_for_current_model()
    (setup,) = [s for s in model_setup.setups() if s.name == name]
    assert setup.resolution.rules == () and setup.name.startswith("layerzero_vllm:gemma:")


@pytest.mark.parametrize("path", sorted(Path(layerzero_vllm.__file__).parent.glob("*.py")), ids=lambda p: p.name)
def test_the_plugin_never_imports_the_transformers_integration(path):
    tree = ast.parse(path.read_text())
    imported = [n.name for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[0] == "layerzero_hf"]
