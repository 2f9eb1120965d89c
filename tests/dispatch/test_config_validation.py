"""DispatchConfig rejects wrong values at construction with a ConfigValidationError naming the field, the
value and the fix; bools are not counts and a static kernel map holds kernel ids (strings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerzero.dispatch import DispatchConfig, DispatchMode, create_orchestrator
from layerzero.dispatch.static import registry_from_map
from layerzero.errors import ConfigValidationError
from layerzero.registry import get_global_kernel_registry


def _problem(**fields):
    with pytest.raises(ConfigValidationError) as info:
        DispatchConfig(**fields)
    (p,) = info.value.problems
    assert "fix:" in p.message
    return p


@pytest.mark.parametrize("name", ["failure_threshold", "success_threshold", "cache_size", "max_fallback_attempts",
                                  "half_open_max_calls", "autotune_repeats"])
def test_bools_are_not_counts(name):
    p = _problem(**{name: True})
    assert p.field == f"DispatchConfig.{name}" and p.value is True


@pytest.mark.parametrize("fields, field", [
    ({"recovery_timeout_seconds": float("nan")}, "DispatchConfig.recovery_timeout_seconds"),
    ({"watch_interval_seconds": False}, "DispatchConfig.watch_interval_seconds"),
    ({"enable_cache": "no"}, "DispatchConfig.enable_cache"),
    ({"config_path": 42}, "DispatchConfig.config_path"),
    ({"mode": 3}, "DispatchConfig.mode"),
    ({"static_kernel_map": ["rms_norm"]}, "DispatchConfig.static_kernel_map"),
    ({"static_kernel_map": {1: "torch_rms_norm"}}, "DispatchConfig.static_kernel_map"),
])
def test_wrong_types_name_the_field(fields, field):
    assert _problem(**fields).field == field


def test_static_kernel_map_value_must_be_a_kernel_id():
    p = _problem(mode=DispatchMode.STATIC, static_kernel_map={"rms_norm": 123})
    assert p.field == "DispatchConfig.static_kernel_map['rms_norm']" and p.value == 123
    assert "kernel id" in p.message and "not iterable" not in p.message


def test_static_kernel_map_names_unknown_operations_and_kernels():
    kernels = get_global_kernel_registry()
    with pytest.raises(ConfigValidationError) as info:
        registry_from_map({"rms_nrm": "torch_rms_norm"}, kernels)
    assert info.value.problems[0].value == "rms_nrm" and "fix:" in info.value.problems[0].message
    with pytest.raises(ConfigValidationError) as info:
        create_orchestrator(DispatchConfig(mode=DispatchMode.STATIC, static_kernel_map={"rms_norm": "nope_kernel"}))
    (p,) = info.value.problems
    assert p.field == "DispatchConfig.static_kernel_map['rms_norm']" and p.value == "nope_kernel"
    with pytest.raises(ConfigValidationError) as info:
        registry_from_map({"rms_norm": "torch_sdpa_attention"}, kernels)
    assert "does not implement" in info.value.problems[0].message


def test_paths_are_normalised_and_good_values_pass(tmp_path):
    cfg = DispatchConfig(config_path=Path(tmp_path) / "k.yaml", failure_threshold=3, reload_settle_seconds=0)
    assert cfg.config_path == str(tmp_path / "k.yaml") and cfg.failure_threshold == 3
    assert DispatchConfig(mode="static").mode is DispatchMode.STATIC


def test_policy_env_naming_a_fifo_fails_the_first_dispatch_at_once(tmp_path, monkeypatch):
    import os
    import threading

    import torch

    from layerzero.dispatch.api import dispatch, set_global_orchestrator

    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    monkeypatch.setenv("LAYERZERO_POLICY", str(fifo))
    set_global_orchestrator(None)
    outcome: list[BaseException] = []

    def first_call() -> None:
        try:
            dispatch("rms_norm", {"x": torch.randn(2, 8), "weight": torch.ones(8)})
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome.append(e)

    t = threading.Thread(target=first_call, daemon=True)  # a regression blocks this thread, not the suite
    try:
        t.start()
        t.join(5)
        assert not t.is_alive(), "dispatch() blocked on the FIFO"
        assert isinstance(outcome[0], ConfigValidationError) and "named pipe" in str(outcome[0])
    finally:
        set_global_orchestrator(None)
