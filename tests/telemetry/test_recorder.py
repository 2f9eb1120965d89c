"""DispatchTelemetry: exact counts under threads, bounded samples, percentiles, selection-change logs."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from layerzero.context.call_context import SelectionContext
from layerzero.telemetry import DispatchTelemetry, JsonFormatter, TelemetrySnapshot


def test_counts_rates_and_per_kernel_stats():
    t = DispatchTelemetry()
    for i in range(10):
        t.record("rms_norm", "a", 1000 * (i + 1), cache_hit=i > 0, was_fallback=False)
    t.record("rms_norm", "b", 50_000, cache_hit=True, was_fallback=True, failed=("a",))
    t.record_failure("rms_norm", "a", RuntimeError("nan output"))
    t.record("swiglu", "c", 2000, cache_hit=False, was_fallback=False)
    s = t.snapshot()
    assert isinstance(s, TelemetrySnapshot)
    assert s.dispatch_count == 12
    assert s.cache_hits == 10 and s.cache_hit_rate == pytest.approx(10 / 12)
    assert s.fallback_count == 1 and s.failure_count == 1
    assert s.per_operation == {"rms_norm": 11, "swiglu": 1}
    a = s.per_kernel["a"]
    assert (a.calls, a.failures, a.cache_hits, a.fallback_calls) == (10, 1, 9, 0)
    assert a.last_error == "RuntimeError: nan output"
    assert a.p50_us == 5.0 and a.p99_us == 10.0  # nearest rank over 1..10 us
    assert a.mean_us == pytest.approx(5.5)
    assert s.per_kernel["b"].fallback_calls == 1
    assert s.operations["rms_norm"].kernels == {"a": 10, "b": 1}
    assert s.operations["rms_norm"].failures == 1
    # overall percentiles over all 12 samples: sorted [1..10us, 2us, 50us]
    assert s.p50_latency_us == 5.0 and s.p99_latency_us == 50.0
    d = s.as_dict()
    assert d["per_kernel"]["a"]["calls"] == 10
    json.dumps(d)  # plain data


def test_samples_are_bounded_and_recent():
    t = DispatchTelemetry(max_samples=16)
    for i in range(1000):
        t.record("rms_norm", "a", 1000 if i < 984 else 9000, True, False)
    s = t.snapshot()
    assert s.dispatch_count == 1000
    assert s.per_kernel["a"].p50_us == 9.0  # only the last 16 samples are kept
    assert len(t._rings["a"]) == 16 and len(t._all) == 16
    few = DispatchTelemetry(max_samples=1000)
    few.record("rms_norm", "a", 2000, True, False)
    assert few._all.maxlen == 1000 and few.snapshot().per_kernel["a"].p50_us == 2.0  # only recorded samples


def test_empty_snapshot_and_disabled():
    t = DispatchTelemetry(enabled=False)
    t.record("rms_norm", "a", 10, True, False)
    t.record_failure("rms_norm", "a", "x")
    s = t.snapshot()
    assert s.dispatch_count == 0 and s.p50_latency_us is None and s.cache_hit_rate == 0.0
    assert s.failure_count == 0 and not s.enabled
    with pytest.raises(ValueError, match="max_samples"):
        DispatchTelemetry(max_samples=0)


def test_reset_forgets_everything():
    t = DispatchTelemetry()
    t.record("rms_norm", "a", 10, True, False)
    t.record_selection("rms_norm", "a")
    t.reset()
    s = t.snapshot()
    assert s.dispatch_count == 0 and s.per_kernel == {} and s.selection_changes == 0
    t.record("rms_norm", "a", 10, True, False)  # the calling thread re-registers after a reset
    assert t.snapshot().dispatch_count == 1


def test_counts_are_exact_under_8_threads_and_dead_threads_are_folded():
    t = DispatchTelemetry(max_samples=64)
    n = 5000
    barrier = threading.Barrier(8)

    def worker(w):
        barrier.wait()
        for i in range(n):
            t.record("rms_norm", f"k{i % 3}", 100 + i, i % 2 == 0, i % 5 == 0)
        t.record_failure("rms_norm", "k0", "x")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s = t.snapshot()
    assert s.dispatch_count == 8 * n
    assert s.cache_hits == 8 * (n // 2)
    assert s.fallback_count == 8 * (n // 5)
    assert s.failure_count == 8
    assert sum(k.calls for k in s.per_kernel.values()) == 8 * n
    assert t._threads == []  # exited threads were folded into the retired table
    assert t.snapshot().dispatch_count == 8 * n


def test_a_hit_recorder_counts_as_record_does_exactly_under_threads_and_across_a_reset(run_threads):
    t = DispatchTelemetry(max_samples=64)
    hit = t.hit_recorder("rms_norm", "k")
    t.record("rms_norm", "k", 5000, False, False)  # the miss that selected the kernel
    n = 5000
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for i in range(n):
            hit(1000 + i)

    run_threads(worker)
    s = t.snapshot()
    assert (s.dispatch_count, s.cache_hits, s.fallback_count) == (8 * n + 1, 8 * n, 0)
    k = s.per_kernel["k"]
    assert (k.calls, k.cache_hits) == (8 * n + 1, 8 * n) and len(t._rings["k"]) == 64
    assert s.operations["rms_norm"].kernels == {"k": 8 * n + 1}
    t.reset()
    assert t.snapshot().dispatch_count == 0 and t.snapshot().per_kernel == {}
    hit(2000)  # a recorder made before the reset keeps counting into the live tables
    s = t.snapshot()
    assert (s.dispatch_count, s.cache_hits, s.per_kernel["k"].p50_us) == (1, 1, 2.0)
    t.enabled = False
    hit(3000)
    assert t.snapshot().dispatch_count == 1


def test_selection_change_logs_one_structured_record(caplog):
    t = DispatchTelemetry()
    ctx = SelectionContext(operation="rms_norm", dtype="float32", device="cpu", hidden_size=64)
    with caplog.at_level(logging.INFO, logger="layerzero.selection"):
        assert t.record_selection("rms_norm", "torch_rms_norm", ctx)
        assert not t.record_selection("rms_norm", "torch_rms_norm", ctx)
        assert not t.record_selection("rms_norm", "torch_rms_norm", ctx)
        assert t.record_selection("rms_norm", "triton_rms_norm", ctx)
        assert t.record_selection("swiglu", "torch_swiglu", None)
    recs = [r for r in caplog.records if r.name == "layerzero.selection"]
    assert len(recs) == 3
    r = recs[1]
    assert (r.operation, r.old_kernel, r.new_kernel) == ("rms_norm", "torch_rms_norm", "triton_rms_norm")
    assert r.context["hidden_size"] == 64 and r.context["dtype"] == "float32"
    assert "rms_norm" in r.getMessage() and "triton_rms_norm" in r.getMessage()
    assert recs[0].old_kernel is None
    assert t.snapshot().selection_changes == 3
    assert t.selected_kernels() == {"rms_norm": "triton_rms_norm", "swiglu": "torch_swiglu"}
    line = json.loads(JsonFormatter().format(r))
    assert line["new_kernel"] == "triton_rms_norm" and line["context"]["hidden_size"] == 64
    assert line["logger"] == "layerzero.selection"


def test_concurrent_selection_change_logs_once(caplog, run_threads):
    t = DispatchTelemetry()
    barrier = threading.Barrier(8)
    changed = []

    def worker():
        barrier.wait()
        changed.append(t.record_selection("rms_norm", "x"))

    with caplog.at_level(logging.INFO, logger="layerzero.selection"):
        run_threads(worker)
    assert sum(changed) == 1
    assert len([r for r in caplog.records if r.name == "layerzero.selection"]) == 1


def test_seed_metrics_attributes():
    t = DispatchTelemetry()
    t.record("attention.causal", "torch_sdpa_attention", 3000, False, False)
    t.record("attention.causal", "torch_sdpa_attention", 1000, True, False)
    metrics = {
        "cache_hit_rate": t.cache_hit_rate,
        "dispatch_count": t.dispatch_count,
        "fallback_count": t.fallback_count,
        "p50_latency_us": t.p50_latency_us,
        "p99_latency_us": t.p99_latency_us,
    }
    assert metrics == {"cache_hit_rate": 0.5, "dispatch_count": 2, "fallback_count": 0,
                       "p50_latency_us": 1.0, "p99_latency_us": 3.0}
    assert f"{metrics['cache_hit_rate']:.1%}" == "50.0%"
