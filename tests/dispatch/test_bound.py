"""Dispatcher.bind / BoundCall: a bound plan is reused only under the (selection state, cache key) it was
chosen for; a policy swap, a refresh after run-time registration, a hot reload or a new shape bucket
selects again, and overrides, breakers and fallbacks behave as through ``dispatch()``."""

from __future__ import annotations

import pytest
import torch
from resilience_helpers import FaultyKernel, backends, good_kernel, lock_policy_text, registry, spec

from layerzero.dispatch import DispatchConfig, DispatchMode, Dispatcher, create_orchestrator, use_kernels
from layerzero.dispatch.bound import BoundCall, RoutedCall
from layerzero.dispatch.hot_reload import HotReloadDispatcher
from layerzero.dispatch.protocols import BaseDispatcher
from layerzero.dispatch.types import DispatchResult
from layerzero.errors import InvalidInputError
from layerzero.kernels import reference
from layerzero.policy import load_policy
from layerzero.registry import KernelRegistry, KernelSpec

KW = {"eps": 1e-5}


@pytest.fixture
def reg():
    return KernelRegistry([
        KernelSpec("a_norm", "rms_norm", "torch", good_kernel("a"), priority=60),
        KernelSpec("b_norm", "rms_norm", "torch", good_kernel("b"), priority=40),
    ])


def _xw(rows: int = 2):
    return {"x": torch.randn(rows, 16), "weight": torch.randn(16)}


def test_binds_once_and_runs_the_cached_plan(reg):
    d = Dispatcher(DispatchConfig(), kernel_registry=reg)
    bound = d.bind("rms_norm")
    assert isinstance(bound, BoundCall) and bound.binds == 0 and bound.bound_kernel is None
    inp = _xw()
    for _ in range(5):
        out = bound(inp, KW)
    torch.testing.assert_close(out, reference.rms_norm(**inp, **KW))
    assert bound.binds == 1 and bound.bound_kernel == "a_norm" and d.engine.misses == 1
    assert reg.get("a_norm").impl.calls == 5


def test_policy_swap_changes_the_state_and_rebinds(reg):
    d = Dispatcher(DispatchConfig(), kernel_registry=reg)
    bound, inp = d.bind("rms_norm"), _xw()
    bound(inp, KW)
    before = d.state
    d.set_policy(load_policy({"version": "2", "kernel_locks": {"rms_norm": "b_norm"}}, registry=reg))
    assert d.state is not before
    bound(inp, KW)
    assert bound.bound_kernel == "b_norm" and bound.binds == 2


def test_kernels_registered_at_run_time_are_picked_up_after_refresh(reg):
    d = Dispatcher(DispatchConfig(), kernel_registry=reg)
    bound, inp = d.bind("rms_norm"), _xw()
    bound(inp, KW)
    reg.register(KernelSpec("z_norm", "rms_norm", "torch", good_kernel("z"), priority=95))
    d.refresh()
    bound(inp, KW)
    assert bound.bound_kernel == "z_norm" and bound.binds == 2


def test_new_shape_bucket_rebinds_and_an_old_one_comes_from_the_cache(reg):
    d = Dispatcher(DispatchConfig(), kernel_registry=reg)
    bound = d.bind("rms_norm")
    small, large = _xw(1), _xw(4096)
    bound(small, KW)
    bound(large, KW)
    misses = d.engine.misses
    bound(small, KW)
    assert bound.binds == 3 and d.engine.misses == misses == 2


def test_a_failing_bound_kernel_falls_back_through_the_runner():
    flaky = FaultyKernel("ok")
    reg = KernelRegistry([KernelSpec("flaky_norm", "rms_norm", "torch", flaky, priority=90),
                          KernelSpec("a_norm", "rms_norm", "torch", good_kernel("a"), priority=60)])
    d = Dispatcher(DispatchConfig(failure_threshold=2), kernel_registry=reg)
    bound, inp = d.bind("rms_norm"), _xw()
    bound(inp, KW)
    flaky.mode = "raise"
    for _ in range(3):
        torch.testing.assert_close(bound(inp, KW), reference.rms_norm(**inp, **KW))
    assert flaky.calls == 3 and not d.circuits.get_circuit("flaky_norm").healthy


def test_use_kernels_overrides_a_bound_call(reg):
    d = Dispatcher(DispatchConfig(), kernel_registry=reg)
    bound, inp = d.bind("rms_norm"), _xw()
    bound(inp, KW)
    with use_kernels({"rms_norm": "b_norm"}):
        bound(inp, KW)
    assert reg.get("b_norm").impl.calls == 1 and bound.bound_kernel == "a_norm"


def test_hot_reload_calls_are_counted_in_flight_and_follow_reloads(tmp_path):
    kr = registry(spec("lz_one", good_kernel("one")), spec("lz_two", good_kernel("two")))
    p = tmp_path / "k.yaml"
    p.write_text(lock_policy_text("lz_one"))
    d = HotReloadDispatcher(DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=str(p)),
                            kernel_registry=kr, backend_registry=backends())
    bound, inp = d.bind("rms_norm"), _xw()
    bound(inp, {})
    p.write_text(lock_policy_text("lz_two"))
    d.reload()
    bound(inp, {})
    assert kr.get("lz_one").impl.calls == 1 and kr.get("lz_two").impl.calls == 1 and d.in_flight() == 0


def test_orchestrator_bind_uses_its_default_dispatcher(reg):
    orch = create_orchestrator(DispatchConfig(), kernel_registry=reg)
    bound = orch.bind("rms_norm")
    assert isinstance(bound, BoundCall) and bound.dispatcher is orch.default
    bound(_xw(), KW)
    assert orch.get_telemetry().dispatch_count == 1


def test_a_custom_dispatcher_gets_a_routed_call(reg):
    class Custom(BaseDispatcher):
        seen = 0

        def dispatch(self, operation, inputs, context=None, **kwargs):
            Custom.seen += 1
            return DispatchResult(reference.rms_norm(**inputs, **kwargs), "custom")

    orch = create_orchestrator(DispatchConfig(), kernel_registry=reg)
    orch.register_dispatcher(DispatchMode.DYNAMIC, Custom())
    bound = orch.bind("rms_norm")
    assert isinstance(bound, RoutedCall)
    bound(_xw(), KW)
    bound(_xw(), KW)
    assert Custom.seen == 2 and bound.bound_kernel is None


def test_a_plan_demoted_by_a_sampled_check_is_dropped_by_the_bound_call():
    calls = {"n": 0}

    def drifting(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        calls["n"] += 1
        out = reference.rms_norm(x=x, weight=weight, eps=eps)
        return out if calls["n"] <= 3 else out + 1.0

    reg = KernelRegistry([
        KernelSpec("lz_drifting_norm", "rms_norm", "torch", drifting, priority=100),
        KernelSpec("torch_rms_norm", "rms_norm", "torch", "layerzero.kernels.torch_ops:torch_rms_norm", priority=50),
        KernelSpec("reference_rms_norm", "rms_norm", "torch", "layerzero.kernels.reference:rms_norm", priority=0,
                   tags={"reference"}),
    ])
    d = Dispatcher(DispatchConfig(verify_sample_every=2), kernel_registry=reg)
    bound, inp = d.bind("rms_norm"), {"x": torch.randn(4, 64), "weight": torch.randn(64)}
    bound(inp, {})
    assert bound.bound_kernel == "lz_drifting_norm"
    for _ in range(8):
        bound(inp, {})
    assert bound.bound_kernel == "torch_rms_norm" and bound.binds == 2


def test_a_bound_hit_rejects_an_unknown_keyword_before_the_kernel_runs(reg):
    d = Dispatcher(DispatchConfig(), kernel_registry=reg)
    bound, inp = d.bind("rms_norm"), _xw()
    bound(inp, KW)
    calls = reg.get("a_norm").impl.calls
    with pytest.raises(InvalidInputError, match="epss"):
        bound(inp, {"epss": 1e-5})
    assert reg.get("a_norm").impl.calls == calls and d.circuits.get_circuit("a_norm").healthy
    assert d.telemetry.snapshot().failure_count == 0


def test_a_bound_hit_skips_an_open_breaker_and_shows_in_the_profiler(reg):
    d = Dispatcher(DispatchConfig(), kernel_registry=reg)
    bound, inp = d.bind("rms_norm"), _xw()
    bound(inp, KW)
    with torch.profiler.profile() as prof:
        bound(inp, KW)
    assert "layerzero::a_norm" in {e.key for e in prof.key_averages()}
    breaker = d.circuits.get_circuit("a_norm")
    for _ in range(breaker.config.failure_threshold):
        breaker.record_failure("elsewhere")
    assert not breaker.allow_request()
    bound(inp, KW)
    assert reg.get("b_norm").impl.calls == 1 and bound.bound_kernel == "a_norm"
    snap = d.telemetry.snapshot()
    assert snap.fallback_count == 1 and snap.dispatch_count == 3


def test_the_hit_path_is_made_once_per_plan_and_serves_calls_by_name_too(reg):
    d = Dispatcher(DispatchConfig(), kernel_registry=reg)
    bound = d.bind("rms_norm")
    small, large = _xw(1), _xw(4096)
    bound(small, KW)
    plan = bound._memo[2]
    made = plan.prepared
    bound(large, KW)
    bound(small, KW)  # back to the first bucket: its plan's hit path is reused, not made again
    assert bound._memo[2] is plan and plan.prepared is made and bound.binds == 3
    d.call("rms_norm", small, dict(KW))  # a hit by name runs the same prepared path
    assert plan.prepared is made
    snap = d.telemetry.snapshot()
    assert snap.dispatch_count == 4 and snap.cache_hits == 2 and reg.get("a_norm").impl.calls == 4
