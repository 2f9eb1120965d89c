"""The plugin's switches and configuration checks, in-process: opt-in, a lenient opt-out, the policy and
rules validation and the no-kernel check that stop vllm.LLM(...) at start, the telemetry error path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import layerzero_vllm
from layerzero_vllm import PluginConfigError, PluginSettings
from layerzero_vllm import _check_policy_leaves_kernels, _validate

SWITCHES = ("LAYERZERO_VLLM", "LAYERZERO_VLLM_DISABLE", "LAYERZERO_VLLM_ATTENTION", "LAYERZERO_VLLM_NATIVE",
            "LAYERZERO_VLLM_TELEMETRY_DIR", "LAYERZERO_POLICY", "VLLM_PLUGINS")

DENY_ALL_RMS_NORM = 'version: "1.0"\nkernel_denies:\n  - "*_debug"\n  - "*rms_norm*"\n'


def settings(**kw) -> PluginSettings:
    base = dict(enabled=True, disabled=False, attention=False, native_layerzero=False, telemetry_dir=None,
                policy_path=None)
    base.update(kw)
    return PluginSettings(**base)


@pytest.fixture
def clean_env(monkeypatch):
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_installed_is_not_enabled(clean_env):
    s = PluginSettings.from_env()
    assert not s.enabled and not s.disabled


@pytest.mark.parametrize("env", [{"LAYERZERO_VLLM": "1"}, {"LAYERZERO_VLLM": "yes"},
                                 {"VLLM_PLUGINS": "other,layerzero"}])
def test_opt_in(clean_env, env):
    for k, v in env.items():
        clean_env.setenv(k, v)
    assert PluginSettings.from_env().enabled


@pytest.mark.parametrize("value", ["1", "2", "always", "TRUE", " yes "])
def test_opt_out_never_raises_whatever_its_value(clean_env, value):
    clean_env.setenv("LAYERZERO_VLLM", "1")
    clean_env.setenv("LAYERZERO_VLLM_DISABLE", value)
    clean_env.setenv("LAYERZERO_VLLM_NATIVE", "not-a-choice")  # ignored when off: cannot block vLLM either
    s = PluginSettings.from_env()
    assert s.disabled and not s.enabled


def test_opt_out_explicit_false_keeps_the_plugin_on(clean_env):
    clean_env.setenv("LAYERZERO_VLLM", "1")
    clean_env.setenv("LAYERZERO_VLLM_DISABLE", "0")
    assert PluginSettings.from_env().enabled


def test_register_with_an_odd_opt_out_value_registers_nothing(clean_env):
    clean_env.setenv("LAYERZERO_VLLM", "1")
    clean_env.setenv("LAYERZERO_VLLM_DISABLE", "2")
    clean_env.setattr(layerzero_vllm, "_REGISTRATION", {})
    layerzero_vllm.register()
    reg = layerzero_vllm.registration()
    assert reg["disabled"] is True and reg["ops"] == {}


@pytest.mark.parametrize("name, value", [("LAYERZERO_VLLM", "maybe"), ("LAYERZERO_VLLM_NATIVE", "triton"),
                                         ("LAYERZERO_VLLM_ATTENTION", "1")])
def test_bad_switch_values_name_the_variable(clean_env, name, value):
    clean_env.setenv("LAYERZERO_VLLM", "1")
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        PluginSettings.from_env()


def test_attention_backend_is_experimental_only(clean_env):
    clean_env.setenv("LAYERZERO_VLLM", "1")
    clean_env.setenv("LAYERZERO_VLLM_ATTENTION", "experimental")
    assert PluginSettings.from_env().attention
    clean_env.setenv("LAYERZERO_VLLM_ATTENTION", "1")
    with pytest.raises(ValueError, match="slower than vLLM"):
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


def test_valid_policy_naming_vllms_kernels_passes(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text('version: "1.0"\nkernel_locks: {rope: vllm_rope, rms_norm: torch_rms_norm}\n')
    _validate(settings(policy_path=str(path)))
    _check_policy_leaves_kernels(settings(policy_path=str(path)))


def test_deny_all_policy_stops_start_naming_file_and_field(tmp_path, clean_env):
    path = tmp_path / "deny.yaml"
    path.write_text(DENY_ALL_RMS_NORM)
    clean_env.setenv("LAYERZERO_POLICY", str(path))
    _validate(settings(policy_path=str(path)))  # a valid file...
    with pytest.raises(PluginConfigError) as info:  # ...that leaves rms_norm no kernel
        _check_policy_leaves_kernels(settings(policy_path=str(path)))
    msg = str(info.value)
    assert "rms_norm" in msg and str(path) in msg and "kernel_denies[1] = '*rms_norm*'" in msg, msg


def test_model_load_check_names_the_field(tmp_path, clean_env, vllm_config):
    """The per-layer check at model load (the dtype and shapes of the served model)."""
    from layerzero import ops
    from layerzero.dispatch import create_orchestrator
    from vllm.model_executor.layers.layernorm import RMSNorm

    from layerzero_vllm.exact import compose, read_mapping

    path = tmp_path / "deny-bf16.yaml"
    path.write_text('version: "1.0"\nkernel_denies: ["*rms_norm*"]\n')
    clean_env.setenv("LAYERZERO_POLICY", str(path))
    name = f"deny-{tmp_path.name}"
    ops.register_orchestrator(name, create_orchestrator(policy=compose(read_mapping(str(path)))))
    clean_env.setattr("layerzero_vllm.model_setup.orchestrator_for_current_model", lambda: name)
    try:
        with pytest.raises(PluginConfigError) as info, vllm_config(["all"]):
            RMSNorm(48, dtype=torch.bfloat16)
    finally:
        ops.unregister_orchestrator(name)
    msg = str(info.value)
    assert "RMSNorm" in msg and str(path) in msg and "kernel_denies[0] = '*rms_norm*'" in msg, msg


def test_invalid_rules_file(tmp_path, monkeypatch):
    path = tmp_path / "models.yaml"
    path.write_text("version: 1\nrules:\n  - name: r\n    match: {model_type: [llama]}\n    kernels: {swiglu: nope}\n")
    monkeypatch.setenv("LAYERZERO_RULES", str(path))
    with pytest.raises(PluginConfigError) as info:
        _validate(settings())
    assert "LAYERZERO_RULES" in str(info.value) and "nope" in str(info.value)


def test_rules_fall_back_to_the_transformers_integration_variable(tmp_path, monkeypatch):
    path = tmp_path / "models.yaml"
    path.write_text("version: 1\nrules:\n  - name: r\n    match: {model_type: [llama]}\n    kernels: {swiglu: nope}\n")
    monkeypatch.delenv("LAYERZERO_RULES", raising=False)
    monkeypatch.setenv("LAYERZERO_HF_RULES", str(path))
    with pytest.raises(PluginConfigError, match="LAYERZERO_HF_RULES"):
        _validate(settings())


def test_registration_reports_what_was_done(plugin_registered):
    assert plugin_registered["disabled"] is False and plugin_registered["attention"] is None
    assert "RMSNorm" in plugin_registered["ops"]
    assert plugin_registered["compile_key"].startswith("layerzero-on-native-vllm|")


def test_compile_key_is_a_vllm_compile_factor(plugin_registered):
    import vllm.envs as envs

    from layerzero_vllm.compile_cache import FACTOR, compile_key

    factors = envs.compile_factors()
    assert factors[FACTOR] == plugin_registered["compile_key"]
    on, native = settings(), settings(native_layerzero=True)
    assert len({compile_key(on), compile_key(native), compile_key(settings(enabled=False))}) == 3


def test_read_worker_telemetry_without_the_extension_says_what_to_set():
    llm = SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(
        parallel_config=SimpleNamespace(worker_extension_cls=""))),
        collective_rpc=lambda *a, **k: pytest.fail("must not call the workers"))
    with pytest.raises(RuntimeError, match="worker_extension_cls='layerzero_vllm.LayerZeroWorkerExtension'"):
        layerzero_vllm.read_worker_telemetry(llm)
