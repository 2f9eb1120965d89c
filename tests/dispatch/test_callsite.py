"""CallSite: a bound plan is reused only while the dispatcher's cache key, selection state and orchestrator
are unchanged, and breakers, fallbacks and telemetry behave exactly as through ``dispatch()``."""

from __future__ import annotations

import pytest
import torch

from layerzero import ops
from layerzero.dispatch import CallSite, DispatchConfig, create_orchestrator
from layerzero.kernels import reference
from layerzero.policy import load_policy
from layerzero.registry import KernelRegistry, KernelSpec
from resilience_helpers import FaultyKernel, good_kernel


@pytest.fixture
def named():
    """An orchestrator over a test registry, registered under a name; unregistered afterwards."""
    reg = KernelRegistry([
        KernelSpec("a_norm", "rms_norm", "torch", good_kernel("a"), priority=60),
        KernelSpec("b_norm", "rms_norm", "torch", good_kernel("b"), priority=40),
    ])
    orch = create_orchestrator(DispatchConfig(failure_threshold=2), kernel_registry=reg)
    ops.register_orchestrator("lz_test_site", orch)
    yield orch, reg
    ops.unregister_orchestrator("lz_test_site")


def _call(site: CallSite, x: torch.Tensor, w: torch.Tensor):
    return ops.rms_norm(x, w, eps=1e-5, orchestrator=site)


def test_binds_once_for_a_fixed_context_and_matches_the_reference(named):
    orch, reg = named
    site = ops.call_site("lz_test_site")
    x, w = torch.randn(2, 16), torch.randn(16)
    for _ in range(10):
        out = _call(site, x, w)
    torch.testing.assert_close(out, reference.rms_norm(x=x, weight=w, eps=1e-5))
    assert site.bound_kernel == "a_norm" and site.binds == 1
    assert reg.get("a_norm").impl.calls == 10
    snap = orch.get_telemetry()
    assert snap.dispatch_count == 10 and snap.per_kernel["a_norm"].calls == 10
    assert snap.cache_hits == 9  # the first call selected; every bound call counts as a hit


def test_new_shape_bucket_rebinds_and_each_bucket_is_selected_once(named):
    orch, _ = named
    site = ops.call_site("lz_test_site")
    w = torch.randn(16)
    small, large = torch.randn(1, 16), torch.randn(4096, 16)
    _call(site, small, w)
    _call(site, small, w)
    assert site.binds == 1
    _call(site, large, w)
    assert site.binds == 2
    misses = orch.get_dispatcher().engine.misses
    _call(site, small, w)  # back to a cached bucket: rebinds from the cache, no new selection
    assert site.binds == 3 and orch.get_dispatcher().engine.misses == misses


def test_policy_swap_is_seen_at_the_next_call(named):
    orch, reg = named
    site = ops.call_site("lz_test_site")
    x, w = torch.randn(2, 16), torch.randn(16)
    _call(site, x, w)
    assert site.bound_kernel == "a_norm"
    orch.set_policy(load_policy({"version": "2", "kernel_locks": {"rms_norm": "b_norm"}}, registry=reg))
    _call(site, x, w)
    assert site.bound_kernel == "b_norm" and reg.get("b_norm").impl.calls == 1


def test_a_failing_bound_kernel_falls_back_and_opens_its_breaker(named):
    orch, reg = named
    flaky = FaultyKernel("ok")
    reg.register(KernelSpec("flaky_norm", "rms_norm", "torch", flaky, priority=90))
    orch.refresh()
    site = ops.call_site("lz_test_site")
    x, w = torch.randn(2, 16), torch.randn(16)
    _call(site, x, w)
    assert site.bound_kernel == "flaky_norm"
    flaky.mode = "raise"
    for _ in range(4):
        out = _call(site, x, w)
        torch.testing.assert_close(out, reference.rms_norm(x=x, weight=w, eps=1e-5))
    assert flaky.calls == 3  # two failures open the circuit; later calls skip the kernel
    assert orch.circuits.get_circuit("flaky_norm").state.name == "OPEN"
    snap = orch.get_telemetry()
    assert snap.failure_count == 2 and snap.fallback_count == 4


def test_reregistered_orchestrator_is_used_by_existing_sites(named):
    orch, _ = named
    site = ops.call_site("lz_test_site")
    x, w = torch.randn(2, 16), torch.randn(16)
    _call(site, x, w)
    reg2 = KernelRegistry([KernelSpec("c_norm", "rms_norm", "torch", good_kernel("c"), priority=60)])
    orch2 = create_orchestrator(DispatchConfig(), kernel_registry=reg2)
    ops.register_orchestrator("lz_test_site", orch2)
    _call(site, x, w)
    assert site.bound_kernel == "c_norm" and reg2.get("c_norm").impl.calls == 1


def test_stand_in_orchestrators_see_every_call(named):
    """A wrapper in front of the real orchestrator (a recorder, a subclass overriding call) is never bypassed."""
    orch, _ = named

    class Recorder:
        def __init__(self, real):
            self.real, self.seen = real, 0

        def call(self, operation, inputs, kwargs=None):
            self.seen += 1
            return self.real.call(operation, inputs, kwargs)

        def dispatch(self, operation, inputs, context=None, **kw):
            return self.real.dispatch(operation, inputs, context, **kw)

        def __getattr__(self, name):
            return getattr(self.real, name)

    rec = Recorder(orch)
    ops.register_orchestrator("lz_test_site", rec)
    site = ops.call_site("lz_test_site")
    x, w = torch.randn(2, 16), torch.randn(16)
    for _ in range(3):
        _call(site, x, w)
    assert rec.seen == 3 and site.bound_kernel is None


def test_site_under_compile_carries_the_orchestrator_name(named):
    site = ops.call_site("lz_test_site")
    w = torch.randn(16)

    def f(x):
        return ops.rms_norm(x, w, eps=1e-5, orchestrator=site) * 2

    x = torch.randn(2, 16)
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), reference.rms_norm(x=x, weight=w, eps=1e-5) * 2)


def test_call_site_rejects_an_orchestrator_object(named):
    orch, _ = named
    with pytest.raises(TypeError, match="orchestrator name"):
        ops.call_site(orch)


def test_copies_and_pickles_start_unbound(named):
    import copy
    import pickle

    site = ops.call_site("lz_test_site")
    x, w = torch.randn(2, 16), torch.randn(16)
    _call(site, x, w)
    for clone in (copy.copy(site), copy.deepcopy(site), pickle.loads(pickle.dumps(site))):
        assert clone.orchestrator_name == "lz_test_site" and clone.bound_kernel is None
        torch.testing.assert_close(_call(clone, x, w), reference.rms_norm(x=x, weight=w, eps=1e-5))
        assert clone.bound_kernel == "a_norm"


def test_output_checks_still_apply_to_bound_calls():
    """With check_outputs on, a bound plan runs through the dispatcher's checked runner: a kernel that
    starts returning NaN is caught and the next kernel serves."""
    bad = FaultyKernel("ok")
    reg = KernelRegistry([KernelSpec("nan_norm", "rms_norm", "torch", bad, priority=90),
                          KernelSpec("a_norm", "rms_norm", "torch", good_kernel("a"), priority=60)])
    orch = create_orchestrator(DispatchConfig(check_outputs=True), kernel_registry=reg)
    ops.register_orchestrator("lz_test_checked", orch)
    try:
        site = ops.call_site("lz_test_checked")
        x, w = torch.randn(2, 16), torch.randn(16)
        expected = reference.rms_norm(x=x, weight=w, eps=1e-5)
        torch.testing.assert_close(ops.rms_norm(x, w, eps=1e-5, orchestrator=site), expected)
        assert site.bound_kernel == "nan_norm"
        bad.mode = "nan"
        torch.testing.assert_close(ops.rms_norm(x, w, eps=1e-5, orchestrator=site), expected)
        assert reg.get("a_norm").impl.calls == 1 and orch.get_telemetry().failure_count == 1
    finally:
        ops.unregister_orchestrator("lz_test_checked")


def test_replacing_the_default_dispatcher_rebinds_the_site(named):
    from layerzero.dispatch import Dispatcher, DispatchMode

    orch, reg = named
    site = ops.call_site("lz_test_site")
    x, w = torch.randn(2, 16), torch.randn(16)
    _call(site, x, w)
    locked = load_policy({"version": "2", "kernel_locks": {"rms_norm": "b_norm"}}, registry=reg)
    orch.register_dispatcher(DispatchMode.DYNAMIC, Dispatcher(DispatchConfig(), kernel_registry=reg, policy=locked))
    _call(site, x, w)
    assert site.bound_kernel == "b_norm" and site.binds == 2
