"""The Prometheus exporter reads one snapshot per scrape and names every series."""

from __future__ import annotations

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from layerzero.dispatch.circuit import CircuitBreakerConfig, CircuitBreakerManager  # noqa: E402
from layerzero.telemetry import DispatchTelemetry  # noqa: E402
from layerzero.telemetry.prometheus import PrometheusExporter  # noqa: E402


def test_exporter_text_exposition():
    reg = prometheus_client.CollectorRegistry()
    t = DispatchTelemetry()
    circuits = CircuitBreakerManager(CircuitBreakerConfig(failure_threshold=1))
    exp = PrometheusExporter(t, registry=reg, circuits=circuits)
    t.record("rms_norm", "torch_rms_norm", 2000, True, False)
    t.record("rms_norm", "reference_rms_norm", 4000, False, True, failed=("torch_rms_norm",))
    t.record_failure("rms_norm", "torch_rms_norm", RuntimeError("x"))
    circuits.get_circuit("torch_rms_norm").record_failure()
    text = exp.generate_latest().decode()
    assert 'layerzero_dispatch_total{kernel="torch_rms_norm",operation="rms_norm"} 1.0' in text
    assert 'layerzero_kernel_failures_total{operation="rms_norm"} 1.0' in text
    assert 'layerzero_fallback_total{kernel="reference_rms_norm",operation="*"} 1.0' in text
    assert 'layerzero_dispatch_latency_us{kernel="torch_rms_norm",quantile="0.5"} 2.0' in text
    assert 'layerzero_circuit_state{kernel="torch_rms_norm"} 2.0' in text
    assert "layerzero_selection_cache_hit_ratio 0.5" in text
    # A scrape reflects new traffic (no caching in the exporter).
    t.record("rms_norm", "torch_rms_norm", 2000, True, False)
    assert 'layerzero_dispatch_total{kernel="torch_rms_norm",operation="rms_norm"} 2.0' in exp.generate_latest().decode()
    exp.unregister()
    assert b"layerzero_dispatch_total" not in prometheus_client.generate_latest(reg)


def test_exporter_reports_hot_reload_version(tmp_path):
    import torch

    from layerzero.dispatch.hot_reload import HotReloadDispatcher
    from layerzero.dispatch.types import DispatchConfig, DispatchMode
    from layerzero.kernels import reference
    from layerzero.registry import BackendRegistry, BackendSpec, KernelRegistry, KernelSpec

    def norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        return reference.rms_norm(x=x, weight=weight, eps=eps)

    kr = KernelRegistry([KernelSpec("lz_a", "rms_norm", "t", norm), KernelSpec("lz_b", "rms_norm", "t", norm)])
    br = BackendRegistry([BackendSpec("t")])
    p = tmp_path / "k.yaml"
    p.write_text('version: "1"\nkernel_locks: {"rms_norm": "lz_a"}\n')
    d = HotReloadDispatcher(DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=str(p)), kr, br)
    reg = prometheus_client.CollectorRegistry()
    exp = PrometheusExporter(d.telemetry, registry=reg, circuits=d.circuits, hot_reload=d)
    d.dispatch("rms_norm", {"x": torch.randn(2, 4), "weight": torch.ones(4)})
    p.write_text('version: "1"\nkernel_locks: {"rms_norm": "lz_b"}\n')
    d.reload()
    p.write_text('version: "1"\nkernel_locks: {"rms_norm": "lz_c"}\n')
    with pytest.raises(Exception):
        d.reload()
    text = exp.generate_latest().decode()
    assert "layerzero_config_version 2.0" in text
    assert "layerzero_config_reloads_total 1.0" in text
    assert "layerzero_config_reload_failures_total 1.0" in text
    assert 'layerzero_dispatch_total{kernel="lz_a",operation="rms_norm"} 1.0' in text


def test_exporter_reads_any_circuit_source():
    """The exporter needs only ``get_all_stats()`` readings with a named state and an open count, so the
    telemetry floor does not import the dispatcher that owns the breakers."""
    import enum
    from types import SimpleNamespace

    State = enum.Enum("State", "CLOSED HALF_OPEN OPEN")
    source = SimpleNamespace(get_all_stats=lambda: {"k": SimpleNamespace(state=State.HALF_OPEN, times_opened=3)})
    reg = prometheus_client.CollectorRegistry()
    text = PrometheusExporter(DispatchTelemetry(), registry=reg, circuits=source).generate_latest().decode()
    assert 'layerzero_circuit_state{kernel="k"} 1.0' in text
    assert 'layerzero_circuit_opened_total{kernel="k"} 3.0' in text
