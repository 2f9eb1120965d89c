"""The plugin's configuration checks: run in-process, they are what stops vllm.LLM(...) at start."""

from __future__ import annotations

import pytest

import layerzero_vllm
from layerzero_vllm import PluginConfigError, PluginSettings
from layerzero_vllm import _validate


def settings(**kw) -> PluginSettings:
    base = dict(disabled=False, attention=False, native_layerzero=False, telemetry_dir=None, policy_path=None)
    base.update(kw)
    return PluginSettings(**base)


def test_settings_from_env(monkeypatch):
    for name in ("LAYERZERO_VLLM_DISABLE", "LAYERZERO_VLLM_ATTENTION", "LAYERZERO_VLLM_NATIVE",
                 "LAYERZERO_VLLM_TELEMETRY_DIR", "LAYERZERO_POLICY"):
        monkeypatch.delenv(name, raising=False)
    s = PluginSettings.from_env()
    assert (s.disabled, s.attention, s.native_layerzero, s.telemetry_dir, s.policy_path) == (
        False, False, False, None, None)
    monkeypatch.setenv("LAYERZERO_VLLM_DISABLE", "yes")
    monkeypatch.setenv("LAYERZERO_VLLM_ATTENTION", "1")
    monkeypatch.setenv("LAYERZERO_VLLM_NATIVE", "LayerZero")
    s = PluginSettings.from_env()
    assert s.disabled and s.attention and s.native_layerzero


@pytest.mark.parametrize("name, value", [("LAYERZERO_VLLM_DISABLE", "maybe"), ("LAYERZERO_VLLM_NATIVE", "triton")])
def test_bad_switch_values_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        PluginSettings.from_env()


def test_missing_policy_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(PluginConfigError) as info:
        _validate(settings(policy_path=str(path)))
    msg = str(info.value)
    assert "LAYERZERO_POLICY" in msg and str(path) in msg and "file not found" in msg


def test_invalid_policy_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text('version: "1.0"\nkernel_denies: 5\n')
    with pytest.raises(PluginConfigError) as info:
        _validate(settings(policy_path=str(path)))
    assert "kernel_denies" in str(info.value) and str(path) in str(info.value)


def test_valid_policy_passes(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text('version: "1.0"\nkernel_locks: {rope: reference_rope}\n')
    _validate(settings(policy_path=str(path)))


def test_invalid_rules_file(tmp_path, monkeypatch):
    path = tmp_path / "models.yaml"
    path.write_text("version: 1\nrules:\n  - name: r\n    match: {model_type: [llama]}\n    kernels: {swiglu: nope}\n")
    monkeypatch.setenv("LAYERZERO_RULES", str(path))
    with pytest.raises(PluginConfigError) as info:
        _validate(settings())
    assert "LAYERZERO_RULES" in str(info.value) and "nope" in str(info.value)


def test_registration_reports_what_was_done(plugin_registered):
    reg = layerzero_vllm.registration()
    assert reg["disabled"] is False and reg["attention"] is None and "RMSNorm" in reg["ops"]


def test_rules_fall_back_to_the_transformers_integration_variable(tmp_path, monkeypatch):
    path = tmp_path / "models.yaml"
    path.write_text("version: 1\nrules:\n  - name: r\n    match: {model_type: [llama]}\n    kernels: {swiglu: nope}\n")
    monkeypatch.delenv("LAYERZERO_RULES", raising=False)
    monkeypatch.setenv("LAYERZERO_HF_RULES", str(path))
    with pytest.raises(PluginConfigError, match="LAYERZERO_HF_RULES"):
        _validate(settings())
