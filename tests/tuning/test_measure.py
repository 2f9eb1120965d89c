"""layerzero.tuning.measure: timings come from the maintained harness and say when they cannot be trusted."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from layerzero.tuning import measure as m


def test_spread_and_noisy_flag_from_samples():
    quiet = m.Timing.from_samples([100, 101, 99, 100, 102, 98, 100, 100], "t")
    assert quiet.spread < 0.05 and not quiet.noisy
    # the failure users saw: the same call at 78 us and at 7,995 us
    noisy = m.Timing.from_samples([78, 80, 7995, 79, 7990, 81, 8000, 77], "t")
    assert noisy.spread > m.NOISE_THRESHOLD and noisy.noisy
    assert noisy.as_dict()["noisy"] is True and set(noisy.as_dict()) >= {"median_us", "spread", "timer"}
    # too few samples to know the spread is not "quiet"
    assert m.Timing.from_samples([5.0, 5.0], "t").noisy


def test_cpu_measure_uses_torch_benchmark_timer(monkeypatch):
    from torch.utils import benchmark

    used = []
    real = benchmark.Timer.blocked_autorange

    def spy(self, *args, **kwargs):
        used.append(kwargs.get("min_run_time"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(benchmark.Timer, "blocked_autorange", spy)
    x = torch.randn(32, 32)
    t = m.measure(lambda: x @ x, "cpu", warmup=1, repeats=3)
    assert used and used[0] >= m.MIN_CPU_RUN_S
    assert t.timer == m.timer_name("cpu") == "torch.utils.benchmark.Timer"
    assert len(t.samples) >= 2 and t.p10_us <= t.median_us <= t.p90_us and t.median_us > 0
    assert m.time_call(lambda: x @ x, torch.device("cpu"), warmup=0, repeats=2) > 0


def test_a_disturbed_measurement_is_flagged_noisy():
    """Samples from two speeds (another process sharing the core for a third of the blocks) straddle the
    quartiles: the spread (IQR / median) passes the noise threshold. Deterministic samples: a test that makes
    its own disturbance with wall-clock windows fails whenever the machine's own load lines up with them."""
    steady = m.Timing.from_samples([20.0, 20.4, 19.8, 20.1, 20.2, 19.9, 20.3, 20.0, 20.1], "test")
    disturbed = m.Timing.from_samples([20.0, 60.0, 20.3, 59.0, 20.1, 61.0, 19.9, 20.2, 60.5], "test")
    assert not steady.noisy and disturbed.noisy, (steady, disturbed)
    assert disturbed.spread > m.NOISE_THRESHOLD > steady.spread


def test_cuda_timer_prefers_triton_do_bench(monkeypatch):
    monkeypatch.setattr(m, "_triton_do_bench", lambda: object())
    assert m.timer_name("cuda") == "triton.testing.do_bench"
    monkeypatch.setattr(m, "_triton_do_bench", lambda: None)
    assert m.timer_name("cuda:0") == "cuda events"


def test_do_bench_quantiles_become_a_timing():
    calls = {}

    def fake_do_bench(fn, warmup, rep, quantiles):
        calls.update(warmup=warmup, rep=rep, quantiles=quantiles)
        return [0.010, 0.011, 0.012, 0.013, 0.020]  # ms

    class _Dev:  # torch.cuda.device() needs a GPU; the conversion is what is tested here
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    orig = torch.cuda.device
    torch.cuda.device = lambda d: _Dev()
    try:
        t = m._measure_do_bench(fake_do_bench, lambda: None, torch.device("cuda"), repeats=10)
    finally:
        torch.cuda.device = orig
    assert calls["quantiles"] == [0.1, 0.25, 0.5, 0.75, 0.9]
    assert t.median_us == pytest.approx(12.0) and t.p10_us == pytest.approx(10.0) and t.p90_us == pytest.approx(20.0)
    assert t.spread == pytest.approx(2.0 / 12.0) and not t.noisy


def test_progress_bar_is_plain_without_ipywidgets(monkeypatch):
    pytest.importorskip("tqdm")
    import importlib.util

    from layerzero.tuning.progress import progress_bar

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    bar = progress_bar(3, "x", "it", disable=True)
    assert type(bar).__module__ == "tqdm.std"
    bar.close()


def test_kernel_compare_rows_carry_spread_and_noisy():
    from layerzero.dispatch import create_orchestrator
    from layerzero.dispatch.types import DispatchConfig
    from layerzero.tuning.kernel_compare import COLUMNS, Call, measure_calls

    call = Call("swiglu", {"gate": torch.randn(4, 16), "up": torch.randn(4, 16)}, {})
    rows = measure_calls([call], create_orchestrator(DispatchConfig(enable_telemetry=False)),
                         kernels=["torch_swiglu"], warmup=0, repeats=2, progress=False)
    assert {"spread", "noisy"} <= set(COLUMNS)
    for row in rows:
        assert isinstance(row["noisy"], bool) and not math.isnan(row["spread"])


def _fixed(median: float, p90: float | None = None) -> m.Timing:
    return m.Timing(median, median, median, median, p90 if p90 is not None else median, "fake")


def test_issue_time_is_only_measured_on_cuda():
    assert m.issue_time(lambda: None, "cpu") is None


def test_short_cuda_calls_get_their_issue_time_and_long_ones_do_not():
    cuda = torch.device("cuda")
    short = m._with_issue_time(lambda: None, cuda, _fixed(4.4), None, lambda fn, dev: 53.0, 10)
    assert (short.host_us, short.cost_us) == (53.0, 53.0)
    long = m._with_issue_time(lambda: None, cuda, _fixed(m.HOST_RELEVANT_US * 2), None,
                              lambda fn, dev: pytest.fail("a long call's issue time never decides"), 10)
    assert long.host_us is None and long.cost_us == m.HOST_RELEVANT_US * 2


def test_a_noisy_short_call_is_kept_when_host_bound_or_flagged_when_asked():
    """measure_stable dropped it (device time would not hold still): that noise cannot matter when even the
    slow end of the device times is below the issue time; otherwise the sweep keeps it flagged uncertain."""
    cuda = torch.device("cuda")
    noisy = lambda fn, dev, warmup, repeats: m.Timing(6.0, 2.0, 3.0, 9.0, 12.0, "fake")  # noqa: E731
    kept = m._with_issue_time(lambda: None, cuda, None, noisy, lambda fn, dev: 40.0, 10)
    assert kept is not None and kept.cost_us == 40.0 and kept.noisy and not kept.uncertain
    assert m._with_issue_time(lambda: None, cuda, None, noisy, lambda fn, dev: 9.0, 10) is None
    flagged = m._with_issue_time(lambda: None, cuda, None, noisy, lambda fn, dev: 9.0, 10, keep_noisy=True)
    assert flagged is not None and flagged.uncertain and flagged.cost_us == 9.0


def test_time_kernels_keeps_a_never_steady_timing_only_when_asked():
    class Spec:
        kernel_id = "k"
        impl = staticmethod(lambda x: x)

        @staticmethod
        def map_arguments(inputs, kw):
            return dict(inputs)

    noisy = lambda fn, dev, warmup, repeats: m.Timing(6.0, 2.0, 3.0, 9.0, 12.0, "fake")  # noqa: E731
    x = {"x": torch.zeros(2)}
    times, notes = m.time_kernels([Spec], x, {}, None, timer=noisy)
    assert not times and "dropped" in notes["k"]
    times, notes = m.time_kernels([Spec], x, {}, None, timer=noisy, keep_noisy=True)
    assert times["k"].uncertain and "flagged noisy" in notes["k"]
