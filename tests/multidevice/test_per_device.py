"""Per-device selection without two GPUs: the mechanisms that keep GPUs apart, driven directly.

A process serving a model split over cuda:0 and cuda:1 sees the same operation with the same shapes on
both devices. Three things must still be per device: the cached plan (a cache key without the device would
hand cuda:1 a plan chosen for cuda:0), the circuit breaker (a kernel failing on one GPU, e.g. out of memory
or a bad driver state, must keep serving on the other) and whatever telemetry reports the failure. CPU-only
CI cannot create cuda tensors, so the tests give the dispatcher explicit contexts (``SelectionContext(device=
"cuda:1")``), which is what decides a plan's circuit keys, and use ``meta`` tensors as the second device for
the cache-key functions, which only read tensor metadata.
"""

from __future__ import annotations

import pytest
import torch

from layerzero.dispatch import DispatchConfig, DynamicDispatcher
from layerzero.kernels import reference
from layerzero.registry import KernelRegistry, KernelSpec
from layerzero.selection import SelectionContext
from layerzero.context.keys import make_keyer

HIDDEN = 8


class _Switchable:
    """An rms_norm kernel that fails while ``broken`` is set, and counts the calls that reached it."""

    def __init__(self) -> None:
        self.broken = False
        self.calls = 0

    def __call__(self, x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        self.calls += 1
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return reference.rms_norm(x=x, weight=weight, eps=eps)


def _stable(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
    return reference.rms_norm(x=x, weight=weight, eps=eps)


@pytest.fixture
def flaky() -> _Switchable:
    return _Switchable()


@pytest.fixture
def dispatcher(flaky: _Switchable) -> DynamicDispatcher:
    reg = KernelRegistry([
        KernelSpec("flaky_norm", "rms_norm", "torch", flaky, priority=90),
        KernelSpec("stable_norm", "rms_norm", "torch", _stable, priority=10),
    ])
    return DynamicDispatcher(DispatchConfig(failure_threshold=2, recovery_timeout_seconds=3600.0), kernel_registry=reg)


def _inputs() -> dict[str, torch.Tensor]:
    return {"x": torch.randn(3, HIDDEN), "weight": torch.randn(HIDDEN)}


def _ctx(inputs: dict[str, torch.Tensor], device: str) -> SelectionContext:
    """The context the dispatcher would read from tensors living on ``device`` (platform re-derived)."""
    return SelectionContext.from_inputs("rms_norm", inputs).replace(device=device, platform=None)


# ---------------------------------------------------------------------------------------------- plans
def test_plan_circuit_keys_are_per_cuda_index(dispatcher: DynamicDispatcher):
    inp = _inputs()
    p0 = dispatcher.engine.plan("rms_norm", _ctx(inp, "cuda:0"))
    p1 = dispatcher.engine.plan("rms_norm", _ctx(inp, "cuda:1"))
    pc = dispatcher.engine.plan("rms_norm", _ctx(inp, "cpu"))
    assert [k.kernel_id for k in p0.kernels] == [k.kernel_id for k in p1.kernels] == ["flaky_norm", "stable_norm"]
    assert p0.circuit_keys == ("flaky_norm@cuda:0", "stable_norm@cuda:0")
    assert p1.circuit_keys == ("flaky_norm@cuda:1", "stable_norm@cuda:1")
    assert pc.circuit_keys == ("flaky_norm", "stable_norm")
    assert p1.context.platform == "cuda"


def test_explicit_contexts_cache_one_plan_per_device(dispatcher: DynamicDispatcher):
    inp = _inputs()
    for device in ("cuda:0", "cuda:1", "cuda:0", "cuda:1"):
        dispatcher.dispatch("rms_norm", inp, context=_ctx(inp, device))
    assert dispatcher.engine.misses == 2 and dispatcher.engine.cache_len == 2


# ---------------------------------------------------------------------------------------------- cache keys
def _keyer():
    reg = KernelRegistry([KernelSpec("n", "rms_norm", "torch", _stable)])
    return make_keyer(DynamicDispatcher(DispatchConfig(), kernel_registry=reg).engine.bucketers)


def _call(op: str, device: str) -> tuple[dict, dict]:
    t = lambda *shape: torch.empty(*shape, device=device)  # noqa: E731  (metadata is all a key reads)
    if op.startswith("attention"):
        return {"query": t(1, 5, 4, 16), "key": t(1, 5, 2, 16), "value": t(1, 5, 2, 16)}, {"is_causal": True}
    if op == "rms_norm":
        return {"x": t(2, 3, 64), "weight": t(64)}, {"eps": 1e-6}
    if op == "rope":
        return {"q": t(1, 4, 5, 16), "k": t(1, 2, 5, 16), "cos": t(1, 5, 16), "sin": t(1, 5, 16)}, {"layout": "bhsd"}
    if op == "swiglu":
        return {"gate": t(2, 3, 128), "up": t(2, 3, 128)}, {}
    return {"a": t(3, 3), "b": t(3)}, {"alpha": 2.0}  # an operation without a dedicated key: the generic key


@pytest.mark.parametrize("op", ["attention.causal", "attention.decode", "rms_norm", "rope", "swiglu", "custom.op"])
def test_cache_keys_differ_by_device_and_only_by_device(op: str):
    keyer = _keyer()
    cpu_in, kw = _call(op, "cpu")
    meta_in, _ = _call(op, "meta")
    k_cpu, k_meta = keyer(op, cpu_in, kw), keyer(op, meta_in, kw)
    assert keyer(op, _call(op, "cpu")[0], kw) == k_cpu  # same device, same facts: one cache entry
    assert k_cpu != k_meta
    # Replacing the device objects makes the keys equal: the device is the only difference.
    swap = lambda key: repr(key).replace("device(type='meta')", "device(type='cpu')")  # noqa: E731
    assert swap(k_meta) == repr(k_cpu)


def test_hot_path_caches_a_plan_per_tensor_device():
    """Without an explicit context the key is read from the tensors: meta and cpu calls get two plans."""
    reg = KernelRegistry([KernelSpec("n", "rms_norm", "torch", _stable)])
    d = DynamicDispatcher(DispatchConfig(), kernel_registry=reg)
    for device in ("cpu", "meta", "cpu", "meta"):
        out = d.dispatch("rms_norm", {"x": torch.randn(3, HIDDEN, device=device), "weight": torch.randn(HIDDEN,
                                                                                                       device=device)})
        assert out.output.device.type == device
    assert d.engine.misses == 2 and d.engine.cache_len == 2


# ---------------------------------------------------------------------------------------------- circuits
def test_failure_on_one_gpu_leaves_the_other_gpus_circuit_closed(dispatcher: DynamicDispatcher, flaky: _Switchable):
    inp = _inputs()
    expected = reference.rms_norm(**inp)
    on0, on1 = _ctx(inp, "cuda:0"), _ctx(inp, "cuda:1")

    flaky.broken = True  # "cuda:1 is broken": two failures there reach the threshold
    for _ in range(2):
        r = dispatcher.dispatch("rms_norm", inp, context=on1)
        assert r.was_fallback and r.kernel_id == "stable_norm" and r.failed_kernels == ("flaky_norm",)
        torch.testing.assert_close(r.output, expected)
    circuits = dispatcher.circuits
    assert circuits.get_circuit("flaky_norm@cuda:1").state.name == "OPEN"
    assert circuits.get_circuit("flaky_norm@cuda:0").state.name == "CLOSED"
    assert circuits.get_circuit("stable_norm@cuda:1").state.name == "CLOSED"
    assert "flaky_norm" not in circuits  # the plain (CPU) key was never touched
    assert circuits.open_circuits() == ["flaky_norm@cuda:1"]

    flaky.broken = False
    calls = flaky.calls
    r0 = dispatcher.dispatch("rms_norm", inp, context=on0)  # cuda:0 still runs the primary kernel
    assert (r0.kernel_id, r0.was_fallback) == ("flaky_norm", False) and flaky.calls == calls + 1
    torch.testing.assert_close(r0.output, expected)
    r1 = dispatcher.dispatch("rms_norm", inp, context=on1)  # cuda:1 skips it without calling it
    assert (r1.kernel_id, r1.was_fallback, r1.failed_kernels) == ("stable_norm", True, ("flaky_norm",))
    assert flaky.calls == calls + 1

    stats = circuits.get_all_stats()
    assert stats["flaky_norm@cuda:1"].state.name == "OPEN"
    assert stats["flaky_norm@cuda:0"].state.name == "CLOSED"


def test_cpu_calls_share_the_plain_kernel_circuit(dispatcher: DynamicDispatcher, flaky: _Switchable):
    """Off CUDA there is one device per process, so the circuit key is the plain kernel id."""
    inp = _inputs()
    flaky.broken = True
    for _ in range(2):
        dispatcher.dispatch("rms_norm", inp)
    assert dispatcher.circuits.open_circuits() == ["flaky_norm"]


# ---------------------------------------------------------------------------------------------- telemetry
def test_telemetry_is_per_kernel_and_circuit_stats_are_per_device(dispatcher: DynamicDispatcher, flaky: _Switchable):
    """Telemetry counts per (operation, kernel) summed over devices; the per-device view of failures is
    the circuit manager's stats, keyed ``kernel@cuda:N``."""
    inp = _inputs()
    flaky.broken = True
    dispatcher.dispatch("rms_norm", inp, context=_ctx(inp, "cuda:1"))
    flaky.broken = False
    dispatcher.dispatch("rms_norm", inp, context=_ctx(inp, "cuda:0"))
    dispatcher.dispatch("rms_norm", inp, context=_ctx(inp, "cuda:0"))

    snap = dispatcher.telemetry.snapshot()
    assert snap.dispatch_count == 3 and snap.failure_count == 1 and snap.fallback_count == 1
    assert snap.per_kernel["flaky_norm"].calls == 2 and snap.per_kernel["flaky_norm"].failures == 1
    assert snap.per_kernel["stable_norm"].fallback_calls == 1
    assert "simulated" in snap.per_kernel["flaky_norm"].last_error
    assert set(snap.per_kernel) == {"flaky_norm", "stable_norm"}  # no device split in telemetry

    stats = dispatcher.circuits.get_all_stats()
    assert stats["flaky_norm@cuda:1"].total_failures == 1
    assert stats["flaky_norm@cuda:0"].total_failures == 0
    assert stats["flaky_norm@cuda:0"].state.name == "CLOSED"
