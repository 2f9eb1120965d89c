"""The seed's "Hot-Reload Configuration" and "A/B Testing with Hot-Reload" examples, run on CPU with the
seed's own YAML (its flash-attn / FlashInfer / Liger choices cannot run here; lock_mode prefer ignores
them and the version's warnings say so)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch

from layerzero.dispatch import (
    ConfigVersion,
    DispatchConfig,
    DispatchMode,
    HotReloadDispatcher,
    create_hot_reload_dispatcher,
)
from layerzero.kernels import reference
from layerzero.registry import get_global_kernel_registry

SEED_YAML = """\
version: "1.0"

defaults:
  fallback_policy: torch_sdpa
  default_priority: 50

dispatch_rules:
  - operation: "attention.*"
    conditions:
      batch_size_gte: 8
      dtype: [float16, bfloat16]
      platform: cuda
    kernel: flash_attention_v2
    priority: 100
  - operation: "attention.*"
    conditions:
      seq_len_gt: 8192
    kernel: xformers_memory_efficient
    priority: 90
  - operation: "attention.decode"
    conditions:
      platform: cuda
    kernel: flashinfer_decode
    priority: 100
  - operation: "rms_norm"
    conditions:
      platform: cuda
    kernel: liger_rms_norm
    priority: 100

kernel_locks:
  attention.prefill: flash_attention_v2

kernel_denies:
  - "*_experimental"
  - "*_debug"

kernel_allows:
  - "flash_attn_*"
  - "flashinfer_*"
  - "xformers_*"
  - "torch_sdpa"
  - "liger_*"

fallback_chains:
  attention.causal:
    - flash_attention_v2
    - xformers_memory_efficient
    - torch_sdpa
  attention.decode:
    - flashinfer_decode
    - flash_attention_v2
    - torch_sdpa
  rms_norm:
    - liger_rms_norm
    - triton_rms_norm
    - torch_rms_norm
"""


class Gauge:
    def __init__(self):
        self.value = None

    def set(self, v):
        self.value = v


class Metrics:
    def __init__(self):
        self.config_version = Gauge()


@pytest.fixture
def seed_dir(tmp_path, monkeypatch):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "kernels.yaml").write_text(SEED_YAML)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _inputs(b=1, s=8, h=2, d=16):
    return {"query": torch.randn(b, s, h, d), "key": torch.randn(b, s, h, d), "value": torch.randn(b, s, h, d)}


def _check(result, inputs):
    torch.testing.assert_close(result.output, reference.attention(**inputs, is_causal=True), rtol=1e-4, atol=1e-5)


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_seed_basic_hot_reload_setup(seed_dir):
    inputs = _inputs()
    # Method 1: Using factory function
    dispatcher = create_hot_reload_dispatcher(
        config_path="config/kernels.yaml",
        validate_on_reload=True,
        watch_interval_seconds=1.0,
        start_watching=True,
        kernel_registry=get_global_kernel_registry(),
    )
    try:
        assert dispatcher.watching
        result = dispatcher.dispatch("attention.causal", inputs)
        _check(result, inputs)
        assert result.kernel_id.startswith("torch_sdpa")  # the seed's torch_sdpa alias is what runs on CPU
    finally:
        dispatcher.stop()

    # Method 2: Using config
    config = DispatchConfig(
        mode=DispatchMode.HOT_RELOAD,
        config_path="config/kernels.yaml",
        watch_interval_seconds=1.0,
        validate_on_reload=True,
    )
    dispatcher = HotReloadDispatcher(config)
    dispatcher.watch()  # Start file watching
    try:
        result = dispatcher.dispatch("attention.causal", inputs)
        _check(result, inputs)
        # The prefill lock names flash-attn, which cannot run on this machine: the version says so.
        if not torch.cuda.is_available():
            assert any("attention.prefill" in w and "flash_attn_v2_attention" in w
                       for w in dispatcher.current_version.warnings)
    finally:
        dispatcher.stop()


def test_seed_hot_reload_callbacks(seed_dir):
    config = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path="config/kernels.yaml",
                            watch_interval_seconds=0.01)
    dispatcher = HotReloadDispatcher(config)
    metrics, alert_channel, printed = Metrics(), [], []

    def on_config_reloaded(version: ConfigVersion):
        """Called when config is successfully reloaded."""
        printed.append(f"Config reloaded to version {version.version}")
        printed.append(f"Config hash: {version.config_hash}")
        printed.append(f"Loaded at: {version.loaded_at}")
        metrics.config_version.set(version.version)

    def on_reload_error(error: Exception):
        """Called when reload fails."""
        alert_channel.append(f"Config reload failed: {error}")

    dispatcher.on_reload(on_config_reloaded)
    dispatcher.on_error(on_reload_error)
    dispatcher.watch()
    try:
        path = Path("config/kernels.yaml")
        path.write_text(SEED_YAML.replace("torch_rms_norm\n", "torch_rms_norm\n  swiglu: [torch_swiglu]\n"))
        _wait_for(lambda: metrics.config_version.value == 2)
        assert printed[0] == "Config reloaded to version 2"
        assert printed[1] == f"Config hash: {dispatcher.current_version.config_hash}"
        path.write_text(SEED_YAML.replace("priority: 90", "priority: ninety"))
        # write_text truncates then writes: the watcher may also catch the empty file (reported too).
        _wait_for(lambda: any("dispatch_rules[1].priority" in a for a in alert_channel))
        assert all(a.startswith("Config reload failed: invalid config") for a in alert_channel)
        assert dispatcher.current_version.version == 2  # still serving the last good config
    finally:
        dispatcher.stop()


def test_seed_manual_reload_and_rollback(seed_dir):
    config = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path="config/kernels.yaml")
    dispatcher = HotReloadDispatcher(config)
    Path("config/kernels.yaml").write_text(SEED_YAML.replace('"*_debug"', '"*_debug"\n  - "*_canary"'))
    log = []
    try:
        dispatcher.reload(
            validate=True,
            grace_period_seconds=2.0,  # Wait for in-flight requests
        )
        log.append("Reload successful")
    except Exception as e:  # pragma: no cover - must not happen
        log.append(f"Reload failed: {e}")
    try:
        dispatcher.rollback()
        log.append("Rollback successful")
    except Exception as e:  # pragma: no cover
        log.append(f"Rollback failed: {e}")
    try:
        dispatcher.rollback()
        log.append("Rollback successful")
    except Exception as e:
        log.append(f"Rollback failed: {e}")
    stats = dispatcher.stats
    assert log[:2] == ["Reload successful", "Rollback successful"]
    assert log[2].startswith("Rollback failed: cannot roll back")
    assert (stats.total_reloads, stats.failed_reloads, stats.current_version) == (2, 0, 1)
    assert stats.last_reload_time_ms >= 0
    assert dispatcher.policy.denies == ("*_experimental", "*_debug")


class ABTestingDispatcher:
    """The seed's A/B dispatcher, verbatim but for the seeded random generator."""

    def __init__(self, config_a_path: str, config_b_path: str, b_ratio: float = 0.1):
        self._config_a = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=config_a_path,
                                        validate_on_reload=True)
        self._config_b = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=config_b_path,
                                        validate_on_reload=True)
        self._dispatcher_a = HotReloadDispatcher(self._config_a)
        self._dispatcher_b = HotReloadDispatcher(self._config_b)
        self._b_ratio = b_ratio
        self._dispatcher_a.watch()
        self._dispatcher_b.watch()
        self._a_calls = 0
        self._b_calls = 0
        self._random = random.Random(0)

    def dispatch(self, operation: str, inputs: dict, **kwargs):
        use_b = self._random.random() < self._b_ratio
        if use_b:
            self._b_calls += 1
            return self._dispatcher_b.dispatch(operation, inputs, **kwargs)
        self._a_calls += 1
        return self._dispatcher_a.dispatch(operation, inputs, **kwargs)

    def set_b_ratio(self, ratio: float):
        self._b_ratio = max(0.0, min(1.0, ratio))

    def get_stats(self):
        total = self._a_calls + self._b_calls
        return {
            "a_calls": self._a_calls,
            "b_calls": self._b_calls,
            "a_ratio": self._a_calls / total if total > 0 else 0,
            "b_ratio": self._b_calls / total if total > 0 else 0,
            "config_a_version": self._dispatcher_a.stats.current_version,
            "config_b_version": self._dispatcher_b.stats.current_version,
        }


def test_seed_ab_testing(seed_dir):
    Path("config/kernels_stable.yaml").write_text(SEED_YAML)
    # The experimental arm locks causal attention to the math SDPA backend, observable per call.
    Path("config/kernels_experimental.yaml").write_text(
        SEED_YAML.replace("kernel_locks:\n", "kernel_locks:\n  attention.causal: torch_sdpa_math_attention\n")
        .replace('  - "torch_sdpa"\n', '  - "torch_sdpa*"\n')
    )
    ab = ABTestingDispatcher("config/kernels_stable.yaml", "config/kernels_experimental.yaml", b_ratio=0.05)
    inputs = _inputs()
    kernels = {"a": set(), "b": set()}
    for ratio in (0.10, 0.50):
        ab.set_b_ratio(ratio)
        for _ in range(40):
            result = ab.dispatch("attention.causal", inputs)
            _check(result, inputs)
            kernels["b" if result.kernel_id == "torch_sdpa_math_attention" else "a"].add(result.kernel_id)
    stats = ab.get_stats()
    assert stats["a_calls"] + stats["b_calls"] == 80 and stats["b_calls"] > 5
    assert stats["config_a_version"] == stats["config_b_version"] == 1
    assert kernels["b"] == {"torch_sdpa_math_attention"}
    assert "torch_sdpa_math_attention" not in kernels["a"]
    ab._dispatcher_a.stop()
    ab._dispatcher_b.stop()
