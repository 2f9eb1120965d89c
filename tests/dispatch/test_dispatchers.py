import pytest
import torch

from layerzero.dispatch import (
    DispatchConfig,
    DispatchMode,
    DispatchOrchestrator,
    DynamicDispatcher,
    StaticDispatcherBuilder,
    create_orchestrator,
)
from layerzero.errors import FallbackChainExhaustedError, NoKernelAvailableError
from layerzero.kernels import reference
from layerzero.policy import load_policy
from layerzero.registry import KernelConstraints, KernelRegistry, KernelSpec


def _norm_impl(tag):
    def impl(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        impl.calls += 1
        return reference.rms_norm(x=x, weight=weight, eps=eps)

    impl.calls = 0
    impl.tag = tag
    return impl


def _boom(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
    raise RuntimeError("kernel exploded")


@pytest.fixture
def reg():
    return KernelRegistry([
        KernelSpec("a_norm", "rms_norm", "torch", _norm_impl("a"), priority=60),
        KernelSpec("b_norm", "rms_norm", "torch", _norm_impl("b"), priority=40),
        KernelSpec("gpu_norm", "rms_norm", "torch", _norm_impl("gpu"), KernelConstraints(platforms=frozenset({"cuda"})), 99),
    ])


def x_w():
    return {"x": torch.randn(3, 8), "weight": torch.randn(8)}


def test_dynamic_uses_priority_then_cache(reg):
    d = DynamicDispatcher(DispatchConfig(), kernel_registry=reg)
    inp = x_w()
    r1 = d.dispatch("rms_norm", inp)
    r2 = d.dispatch("rms_norm", inp)
    assert (r1.kernel_id, r1.cache_hit, r2.cache_hit) == ("a_norm", False, True)
    torch.testing.assert_close(r2.output, reference.rms_norm(**inp))
    assert r2.timing.total_ns >= r2.timing.execution_ns > 0


def test_set_policy_swaps_selection_atomically(reg):
    d = DynamicDispatcher(DispatchConfig(), kernel_registry=reg)
    inp = x_w()
    assert d.dispatch("rms_norm", inp).kernel_id == "a_norm"
    old_state = d.state
    d.set_policy(load_policy({"version": "2", "kernel_locks": {"rms_norm": "b_norm"}}, registry=reg), version=2)
    assert d.state is not old_state and d.state.version == 2
    assert d.dispatch("rms_norm", inp).kernel_id == "b_norm"
    assert d.policy.version == "2"


def test_failure_falls_back_and_reports(reg):
    reg.register(KernelSpec("boom_norm", "rms_norm", "torch", _boom, priority=100))
    d = DynamicDispatcher(DispatchConfig(failure_threshold=2), kernel_registry=reg)
    inp = x_w()
    r = d.dispatch("rms_norm", inp)
    assert r.was_fallback and r.kernel_id == "a_norm" and r.failed_kernels == ("boom_norm",)
    torch.testing.assert_close(r.output, reference.rms_norm(**inp))
    d.dispatch("rms_norm", inp)
    assert d.circuits.get_circuit("boom_norm").state.name == "OPEN"
    r = d.dispatch("rms_norm", inp)  # primary skipped without being called
    assert r.was_fallback and r.failed_kernels == ("boom_norm",)
    snap = d.telemetry.snapshot()
    assert snap.fallback_count == 3 and snap.failure_count == 2


def test_fallback_disabled_raises_the_kernel_error(reg):
    reg.register(KernelSpec("boom_norm", "rms_norm", "torch", _boom, priority=100))
    d = DynamicDispatcher(DispatchConfig(enable_fallback=False), kernel_registry=reg)
    with pytest.raises(RuntimeError, match="exploded"):
        d.dispatch("rms_norm", x_w())


def test_every_kernel_failing_raises_exhausted_with_attempts():
    reg = KernelRegistry([KernelSpec(f"boom{i}", "rms_norm", "torch", _boom, priority=i) for i in range(3)])
    d = DynamicDispatcher(DispatchConfig(circuit_breaker_enabled=False), kernel_registry=reg)
    with pytest.raises(FallbackChainExhaustedError) as e:
        d.dispatch("rms_norm", x_w())
    assert [k for k, _ in e.value.attempts] == ["boom2", "boom1", "boom0"]


def test_policy_fallback_chain_orders_fallbacks(reg):
    reg.register(KernelSpec("c_norm", "rms_norm", "torch", _norm_impl("c"), priority=10))
    reg.register(KernelSpec("boom_norm", "rms_norm", "torch", _boom, priority=100))
    pol = load_policy({"version": "1", "fallback_chains": {"rms_norm": ["c_norm", "a_norm"]}}, registry=reg)
    d = DynamicDispatcher(DispatchConfig(), kernel_registry=reg, policy=pol)
    r = d.dispatch("rms_norm", x_w())
    assert r.kernel_id == "c_norm" and r.was_fallback


def test_no_kernel_available_names_candidates():
    reg = KernelRegistry([KernelSpec("gpu_norm", "rms_norm", "torch", _boom, KernelConstraints(platforms=frozenset({"cuda"})))])
    d = DynamicDispatcher(DispatchConfig(), kernel_registry=reg)
    with pytest.raises(NoKernelAvailableError, match=r"gpu_norm: device cpu not supported"):
        d.dispatch("rms_norm", x_w())


def test_output_check_catches_wrong_shape_and_nan(reg):
    def bad_shape(x, weight=None, **_):
        return x[:1]

    def nan(x, weight=None, **_):
        return x * float("nan")

    for impl in (bad_shape, nan):
        r2 = KernelRegistry([KernelSpec("bad", "rms_norm", "torch", impl, priority=100),
                             KernelSpec("good", "rms_norm", "torch", _norm_impl("g"), priority=1)])
        d = DynamicDispatcher(DispatchConfig(check_outputs=True), kernel_registry=r2)
        inp = x_w()
        r = d.dispatch("rms_norm", inp)
        assert r.kernel_id == "good" and r.was_fallback
        torch.testing.assert_close(r.output, reference.rms_norm(**inp))


def test_orchestrator_modes_share_breakers_and_telemetry(reg):
    o = create_orchestrator(DispatchConfig(), kernel_registry=reg)
    inp = x_w()
    o.dispatch("rms_norm", inp)
    o.dispatch("rms_norm", inp, mode=DispatchMode.STATIC)
    assert o.get_dispatcher(DispatchMode.STATIC).circuits is o.circuits
    assert o.get_telemetry().dispatch_count == 2
    ex = o.explain("rms_norm", None, hidden_size=8, device="cpu", dtype="float32")
    assert ex.chosen == "a_norm" and "device cpu not supported" in ex["gpu_norm"].reasons[0]


def test_dispatch_config_validation_names_field():
    with pytest.raises(ValueError, match=r"DispatchConfig.cache_size: expected a positive integer, got 0"):
        DispatchConfig(cache_size=0)
    with pytest.raises(ValueError, match=r"DispatchConfig.mode: unknown mode 'turbo'"):
        DispatchConfig(mode="turbo")
    assert DispatchConfig(mode="static").mode is DispatchMode.STATIC


def test_builder_rejects_unknown_config_field(reg):
    with pytest.raises(TypeError, match="unknown DispatchConfig field"):
        StaticDispatcherBuilder().with_config(telemetry=True)


def test_attention_causal_default_and_gqa_through_global_dispatch():
    from layerzero.dispatch import dispatch

    q = torch.randn(1, 7, 4, 16)
    k = torch.randn(1, 7, 2, 16)
    v = torch.randn(1, 7, 2, 16)
    r = dispatch("attention.causal", {"query": q, "key": k, "value": v})
    torch.testing.assert_close(r.output, reference.attention(query=q, key=k, value=v, is_causal=True), atol=2e-5, rtol=1e-4)
    # decode: one query token over a longer cache sees every key
    qd = torch.randn(1, 1, 4, 16)
    r = dispatch("attention.decode", {"query": qd, "key": k, "value": v})
    torch.testing.assert_close(r.output, reference.attention(query=qd, key=k, value=v), atol=2e-5, rtol=1e-4)


def test_custom_dispatcher_registration(reg):
    o = DispatchOrchestrator(DispatchConfig(), kernel_registry=reg)

    class Fixed:
        def dispatch(self, operation, inputs, context=None, **kw):
            from layerzero.dispatch import DispatchResult

            return DispatchResult(inputs["x"], "fixed")

    o.register_dispatcher(DispatchMode.DYNAMIC, Fixed())
    assert o.dispatch("rms_norm", x_w()).kernel_id == "fixed"


def test_circuits_are_per_gpu():
    from layerzero.selection import SelectionContext
    from layerzero.selection.engine import Plan

    spec = KernelSpec("k", "rms_norm", "torch", _boom)
    assert Plan("rms_norm", (spec,), SelectionContext(device="cuda:1")).circuit_keys == ("k@cuda:1",)
    assert Plan("rms_norm", (spec,), SelectionContext(device="cuda:0")).circuit_keys == ("k@cuda:0",)
    assert Plan("rms_norm", (spec,), SelectionContext(device="cpu")).circuit_keys == ("k",)


def test_kernels_registered_later_are_picked_up_on_the_next_miss(reg):
    d = DynamicDispatcher(DispatchConfig(), kernel_registry=reg)
    assert d.dispatch("rms_norm", x_w()).kernel_id == "a_norm"
    reg.register(KernelSpec("new_norm", "rms_norm", "torch", _norm_impl("n"), priority=95))
    r = d.dispatch("rms_norm", {"x": torch.randn(5, 16), "weight": torch.randn(16)})  # a new bucket: a miss
    assert r.kernel_id == "new_norm"
    assert d.dispatch("rms_norm", x_w()).kernel_id == "new_norm"  # the refresh dropped the old plans


def test_static_dispatch_takes_no_policy_and_the_orchestrator_leaves_it_alone(reg):
    orch = create_orchestrator(DispatchConfig(mode=DispatchMode.STATIC, static_kernel_map={"rms_norm": "b_norm"}),
                               kernel_registry=reg)
    static = orch.get_dispatcher()
    assert not static.follows_policy and static.policy is None
    orch.set_policy(load_policy({"version": "2", "kernel_locks": {"rms_norm": "a_norm"}}, registry=reg))
    assert orch.dispatch("rms_norm", x_w()).kernel_id == "b_norm"
    with pytest.raises(TypeError, match="fixed catalogue"):
        static.set_policy(load_policy({"version": "3"}, registry=reg))
