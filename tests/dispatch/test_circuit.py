"""Circuit breaker state machine, listeners, manager and thread safety (fake clock: no sleeps).

The documented "Circuit Breaker Usage" snippets themselves run in tests/test_seed_examples.py."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

from layerzero.dispatch.circuit import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerManager,
    CircuitState,
)
from layerzero.errors import ConfigValidationError


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def _reference_attention(query, key, value):
    q, k, v = (t.transpose(1, 2).float() for t in (query, key, value))
    out = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
    return out.transpose(1, 2).to(query.dtype)


# ---------------------------------------------------------------------------- config
def test_config_defaults_match_the_documented_ones():
    c = CircuitBreakerConfig()
    assert (c.failure_threshold, c.success_threshold, c.cooldown_seconds, c.half_open_max_calls) == (5, 2, 30.0, 3)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"success_threshold": -1}, "success_threshold"),
        ({"half_open_max_calls": 1.5}, "half_open_max_calls"),
        ({"cooldown_seconds": -2.0}, "cooldown_seconds"),
        ({"cooldown_seconds": float("nan")}, "cooldown_seconds"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kw, field):
    with pytest.raises(ConfigValidationError) as ei:
        CircuitBreakerConfig(**kw)
    assert [p.field for p in ei.value.problems] == [field]
    assert field in str(ei.value)


def test_config_from_dispatch_config():
    class DC:
        failure_threshold = 7
        recovery_timeout_seconds = 12
    c = CircuitBreakerConfig.from_dispatch_config(DC())
    assert c.failure_threshold == 7 and c.cooldown_seconds == 12.0 and c.success_threshold == 2


# ---------------------------------------------------------------------------- state machine
def _breaker(**kw):
    clock = FakeClock()
    cfg = CircuitBreakerConfig(**{"failure_threshold": 3, "success_threshold": 2, "cooldown_seconds": 10.0,
                                  "half_open_max_calls": 2, **kw})
    return CircuitBreaker("k", cfg, clock=clock), clock


def test_closed_counts_consecutive_failures_and_success_resets():
    cb, _ = _breaker()
    cb.record_failure(RuntimeError("a"))
    cb.record_failure(RuntimeError("b"))
    assert cb.failure_count == 2 and cb.state is CircuitState.CLOSED
    cb.record_success()
    assert cb.failure_count == 0
    cb.record_failure()
    cb.record_failure()
    assert cb.state is CircuitState.CLOSED  # 2 consecutive < 3
    cb.record_failure(ValueError("boom"))
    assert cb.state is CircuitState.OPEN
    assert cb.failure_count == 3
    s = cb.stats()
    assert s.total_failures == 5 and s.times_opened == 1 and s.last_failure == "ValueError: boom"


def test_open_rejects_until_cooldown_then_half_open_limits_trials():
    cb, clock = _breaker()
    for _ in range(3):
        cb.record_failure()
    assert not cb.allow_request()
    clock.advance(9.99)
    assert not cb.allow_request()
    assert cb.time_until_half_open == pytest.approx(0.01)
    clock.advance(0.01)
    assert cb.state is CircuitState.HALF_OPEN
    assert cb.allow_request() and cb.allow_request()
    assert not cb.allow_request()  # half_open_max_calls=2 trials in flight
    assert cb.stats().total_rejections == 3
    cb.record_success()
    assert cb.state is CircuitState.HALF_OPEN and cb.success_count == 1
    assert cb.allow_request()  # the finished trial freed its slot
    cb.record_success()
    assert cb.state is CircuitState.CLOSED
    assert cb.failure_count == 0 and cb.success_count == 0


def test_half_open_failure_reopens_with_new_cooldown():
    cb, clock = _breaker()
    for _ in range(3):
        cb.record_failure()
    clock.advance(10)
    assert cb.allow_request()
    cb.record_failure(RuntimeError("still broken"))
    assert cb.state is CircuitState.OPEN
    clock.advance(9)
    assert not cb.allow_request()  # the cooldown restarted at the half-open failure
    clock.advance(1)
    assert cb.allow_request()
    assert cb.stats().times_opened == 2


def test_lost_half_open_trials_do_not_wedge_the_breaker():
    cb, clock = _breaker()
    for _ in range(3):
        cb.record_failure()
    clock.advance(10)
    assert cb.allow_request() and cb.allow_request()  # both trials lost (never reported)
    assert not cb.allow_request()
    clock.advance(10)
    assert cb.allow_request()


def test_reset_and_force_open():
    cb, _ = _breaker()
    cb.force_open("operator")
    assert cb.state is CircuitState.OPEN and not cb.allow_request()
    assert cb.stats().last_failure == "operator"
    cb.reset()
    assert cb.state is CircuitState.CLOSED and cb.allow_request()


def test_listeners_see_every_transition_in_order_and_errors_are_swallowed(caplog):
    cb, clock = _breaker()
    seen: list[tuple[CircuitState, CircuitState]] = []

    def broken(old, new):
        raise RuntimeError("listener bug")

    cb.add_listener(broken)
    cb.add_listener(lambda old, new: seen.append((old, new)))
    with caplog.at_level(logging.ERROR, logger="layerzero.circuit"):
        for _ in range(3):
            cb.record_failure()
        clock.advance(10)
        assert cb.allow_request()
        cb.record_failure()
        clock.advance(10)
        assert cb.allow_request()
        cb.record_success()
        cb.record_success()
    C, O, H = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
    assert seen == [(C, O), (O, H), (H, O), (O, H), (H, C)]
    assert sum("listener bug" in r.exc_text for r in caplog.records if r.exc_text) == 5


def test_listener_may_call_back_into_the_breaker():
    cb, _ = _breaker()
    seen = []

    def reopen_then_reset(old, new):
        seen.append(new)
        if new is CircuitState.OPEN:
            cb.reset()  # re-entrant: must not deadlock

    cb.add_listener(reopen_then_reset)
    for _ in range(3):
        cb.record_failure()
    assert seen == [CircuitState.OPEN, CircuitState.CLOSED]
    assert cb.state is CircuitState.CLOSED


def test_stats_dict_is_plain():
    cb, _ = _breaker()
    cb.record_failure(KeyError("x"))
    d = cb.stats().as_dict()
    assert d["state"] == "CLOSED" and d["failure_count"] == 1 and d["kernel_id"] == "k"


# ---------------------------------------------------------------------------- threads
def test_concurrent_failures_open_exactly_once_and_transitions_are_ordered(run_threads):
    clock = FakeClock()
    cb = CircuitBreaker("k", CircuitBreakerConfig(failure_threshold=50, cooldown_seconds=5), clock=clock)
    seen = []
    cb.add_listener(lambda o, n: seen.append((o, n)))
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for _ in range(200):
            if cb.allow_request():
                cb.record_failure()

    run_threads(worker)
    s = cb.stats()
    assert s.state is CircuitState.OPEN and s.times_opened == 1
    assert seen == [(CircuitState.CLOSED, CircuitState.OPEN)]
    # Every call either ran (and failed) or was rejected; none is lost.
    assert s.total_failures + s.total_rejections == 8 * 200


def test_concurrent_half_open_admits_at_most_max_calls(run_threads):
    clock = FakeClock()
    cb = CircuitBreaker("k", CircuitBreakerConfig(failure_threshold=1, half_open_max_calls=3, cooldown_seconds=1),
                        clock=clock)
    cb.record_failure()
    clock.advance(1)
    admitted = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        admitted.append(cb.allow_request())

    run_threads(worker)
    assert sum(admitted) == 3


# ---------------------------------------------------------------------------- manager
def test_manager_creates_one_breaker_per_kernel_with_defaults_and_overrides():
    clock = FakeClock()
    m = CircuitBreakerManager(CircuitBreakerConfig(failure_threshold=2, cooldown_seconds=5), clock=clock)
    a = m.get_circuit("a")
    assert m.get_circuit("a") is a and "a" in m and len(m) == 1
    m.configure("b", CircuitBreakerConfig(failure_threshold=1))
    m.get_circuit("b").record_failure()
    assert m.is_open("b") and not m.is_open("a") and not m.is_open("never-seen")
    assert m.allow_request("never-seen") and not m.allow_request("b")
    assert m.open_circuits() == ["b"]
    clock.advance(30)
    assert not m.is_open("b")  # cooldown elapsed: HALF_OPEN, not rejected
    assert m.get_circuit("b").state is CircuitState.HALF_OPEN


def test_manager_listener_reaches_existing_and_future_circuits():
    m = CircuitBreakerManager(CircuitBreakerConfig(failure_threshold=1))
    m.get_circuit("old")
    seen = []
    m.add_listener(lambda kid, o, n: seen.append((kid, n)))
    m.get_circuit("old").record_failure()
    m.get_circuit("new").record_failure()
    assert seen == [("old", CircuitState.OPEN), ("new", CircuitState.OPEN)]


def test_manager_concurrent_get_circuit_is_unique(run_threads):
    m = CircuitBreakerManager()
    got = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        got.append(m.get_circuit("shared"))

    run_threads(worker)
    assert len({id(c) for c in got}) == 1








# ---------------------------------------------------------------------------- fault injection (dispatcher)
from resilience_helpers import FaultyKernel, backends, good_kernel, ref_rms_norm, registry, spec  # noqa: E402

from layerzero.dispatch.dynamic import DynamicDispatcher  # noqa: E402
from layerzero.dispatch.types import DispatchConfig  # noqa: E402
from layerzero.errors import CircuitOpenError, FallbackChainExhaustedError  # noqa: E402
from layerzero.telemetry import DispatchTelemetry  # noqa: E402


def _faulty_setup(mode: str, **cfg):
    clock = FakeClock()
    faulty = FaultyKernel(mode)
    good = good_kernel("good")
    kr = registry(spec("lz_faulty", faulty, priority=100), spec("lz_good_ref", good, priority=1, reference_tag=True))
    config = DispatchConfig(check_outputs=True, failure_threshold=3, success_threshold=2,
                            recovery_timeout_seconds=10.0, half_open_max_calls=1, **cfg)
    circuits = CircuitBreakerManager(CircuitBreakerConfig.from_dispatch_config(config), clock=clock)
    telemetry = DispatchTelemetry()
    d = DynamicDispatcher(config, kr, backends(), circuits=circuits, telemetry=telemetry)
    return d, faulty, good, clock, circuits, telemetry


@pytest.mark.parametrize("mode", ["raise", "nan", "shape"])
def test_fault_injection_breaker_cycle_with_verified_fallbacks(mode):
    d, faulty, good, clock, circuits, telemetry = _faulty_setup(mode)
    transitions = []
    circuits.add_listener(lambda kid, old, new: transitions.append((kid, old, new)))
    inputs = {"x": torch.randn(4, 16), "weight": torch.randn(16)}
    expected = ref_rms_norm(**inputs)

    def call():
        r = d.dispatch("rms_norm", inputs)
        torch.testing.assert_close(r.output, expected, rtol=0, atol=0)  # every output is the reference's
        return r

    # CLOSED: each failure falls back to the reference; the third opens the circuit.
    for i in range(3):
        r = call()
        assert r.was_fallback and r.kernel_id == "lz_good_ref" and r.failed_kernels == ("lz_faulty",)
        assert circuits.get_circuit("lz_faulty").state is (CircuitState.OPEN if i == 2 else CircuitState.CLOSED)
    assert faulty.calls == 3
    # OPEN: the faulty kernel is not even tried.
    for _ in range(5):
        r = call()
        assert r.was_fallback and r.kernel_id == "lz_good_ref"
    assert faulty.calls == 3
    # Cooldown elapses: one trial call; still broken -> OPEN again with a fresh cooldown.
    clock.advance(10.0)
    call()
    assert faulty.calls == 4 and circuits.get_circuit("lz_faulty").state is CircuitState.OPEN
    clock.advance(9.0)
    call()
    assert faulty.calls == 4
    # The kernel recovers: the next trials succeed and success_threshold of them close the circuit.
    faulty.mode = "ok"
    clock.advance(1.0)
    r = call()
    assert r.kernel_id == "lz_faulty" and not r.was_fallback
    assert circuits.get_circuit("lz_faulty").state is CircuitState.HALF_OPEN
    r = call()
    assert r.kernel_id == "lz_faulty"
    assert circuits.get_circuit("lz_faulty").state is CircuitState.CLOSED
    C, O, H = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
    assert transitions == [("lz_faulty", C, O), ("lz_faulty", O, H), ("lz_faulty", H, O),
                           ("lz_faulty", O, H), ("lz_faulty", H, C)]
    snap = telemetry.snapshot()
    assert snap.failure_count == 4 and snap.per_kernel["lz_faulty"].failures == 4
    assert snap.dispatch_count == 12 and snap.fallback_count == 10
    assert snap.per_kernel["lz_good_ref"].fallback_calls == 10
    stats = circuits.get_circuit("lz_faulty").stats()
    assert stats.times_opened == 2 and stats.total_failures == 4
    if mode == "raise":
        assert "injected kernel fault" in stats.last_failure
    elif mode == "nan":
        assert "NaN" in stats.last_failure
    else:
        assert "shape" in stats.last_failure


def test_all_kernels_failing_raises_chain_exhausted_then_circuit_open():
    clock = FakeClock()
    kr = registry(spec("lz_f1", FaultyKernel("raise"), priority=100), spec("lz_f2", FaultyKernel("nan"), priority=50))
    config = DispatchConfig(check_outputs=True, failure_threshold=1, recovery_timeout_seconds=5.0)
    circuits = CircuitBreakerManager(CircuitBreakerConfig.from_dispatch_config(config), clock=clock)
    d = DynamicDispatcher(config, kr, backends(), circuits=circuits, telemetry=DispatchTelemetry())
    inputs = {"x": torch.randn(2, 8), "weight": torch.randn(8)}
    with pytest.raises(FallbackChainExhaustedError) as ei:
        d.dispatch("rms_norm", inputs)
    assert [kid for kid, _ in ei.value.attempts] == ["lz_f1", "lz_f2"]
    with pytest.raises(CircuitOpenError) as ei2:
        d.dispatch("rms_norm", inputs)
    assert set(ei2.value.kernel_ids) == {"lz_f1", "lz_f2"}
    assert "reset_all" in str(ei2.value)
    circuits.reset_all()
    with pytest.raises(FallbackChainExhaustedError):
        d.dispatch("rms_norm", inputs)


def test_dispatch_integration_config_builds_breakers():
    """The documented "Circuit Breaker with Dispatch Integration" config, on CPU with injected faults."""
    from layerzero.dispatch import DispatchMode, create_orchestrator

    config = DispatchConfig(
        mode=DispatchMode.DYNAMIC,
        circuit_breaker_enabled=True,
        failure_threshold=5,
        recovery_timeout_seconds=30.0,
        enable_fallback=True,
        max_fallback_attempts=3,
        check_outputs=True,
    )
    faulty = FaultyKernel("nan")
    kr = registry(spec("lz_faulty", faulty, priority=100), spec("lz_good_ref", good_kernel("g"), 1, True))
    orchestrator = create_orchestrator(config=config, kernel_registry=kr, backend_registry=backends())
    inputs = {"x": torch.randn(2, 8), "weight": torch.randn(8)}
    for _ in range(7):
        try:
            result = orchestrator.dispatch("rms_norm", inputs)
        except (CircuitOpenError, FallbackChainExhaustedError) as e:  # pragma: no cover - must not happen
            pytest.fail(f"fallback should have served the call: {e}")
        torch.testing.assert_close(result.output, ref_rms_norm(**inputs))
    assert faulty.calls == 5  # opened after failure_threshold=5, then skipped
    stats = orchestrator.circuits.get_all_stats()["lz_faulty"]
    assert stats.state is CircuitState.OPEN and stats.failure_count == 5


def test_listener_order_is_a_valid_path_under_concurrent_transitions():
    """Many threads drive many transitions; the listener must see them as one consistent chain
    (each transition starts where the previous one ended), with nothing lost."""
    clock = FakeClock()
    cb = CircuitBreaker("k", CircuitBreakerConfig(failure_threshold=2, success_threshold=1, cooldown_seconds=0.0,
                                                  half_open_max_calls=2), clock=clock)
    seen = []
    cb.add_listener(lambda old, new: seen.append((old, new)))
    barrier = threading.Barrier(8)

    def worker(w):
        barrier.wait()
        for i in range(300):
            if cb.allow_request():
                if (i + w) % 3:
                    cb.record_failure()
                else:
                    cb.record_success()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) > 10
    assert seen[0][0] is CircuitState.CLOSED
    for (_, prev_new), (old, new) in zip(seen, seen[1:]):
        assert old is prev_new and old is not new
    assert seen[-1][1] is cb._state  # (reading .state could add an OPEN -> HALF_OPEN step)


def test_transitions_are_logged_with_structured_fields(caplog):
    cb, clock = _breaker()
    with caplog.at_level(logging.INFO, logger="layerzero.circuit"):
        for _ in range(3):
            cb.record_failure(RuntimeError("CUDA error: illegal memory access"))
        clock.advance(10)
        cb.allow_request()
    recs = [r for r in caplog.records if r.name == "layerzero.circuit"]
    assert [(r.levelno, r.old_state, r.new_state) for r in recs] == [
        (logging.WARNING, "CLOSED", "OPEN"), (logging.INFO, "OPEN", "HALF_OPEN")]
    assert recs[0].kernel_id == "k" and "illegal memory access" in recs[0].getMessage()


def test_healthy_is_the_runners_one_read():
    """``healthy``: CLOSED with no failure counted. A failure clears it (the runner then asks the breaker
    and reports successes), a success in CLOSED restores it, an opened circuit is not healthy until it
    closes again."""
    clock = FakeClock()
    cb = CircuitBreaker("k", CircuitBreakerConfig(failure_threshold=2, cooldown_seconds=1.0, success_threshold=1),
                        clock=clock)
    assert cb.healthy
    cb.record_failure(RuntimeError("x"))
    assert not cb.healthy and cb.is_closed
    cb.record_success()
    assert cb.healthy
    cb.record_failure("a")
    cb.record_failure("b")
    assert not cb.healthy and cb.state is CircuitState.OPEN
    clock.advance(1.5)
    assert cb.allow_request() and not cb.healthy
    cb.record_success()
    assert cb.healthy and cb.is_closed
    cb.force_open("maintenance")
    assert not cb.healthy
    cb.reset()
    assert cb.healthy
