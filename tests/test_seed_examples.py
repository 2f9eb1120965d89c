"""Every snippet of the public API's code examples, run as written, adapted to a CPU:
``device="cpu"`` where it says cuda, shapes scaled down so attention runs in milliseconds on a CPU, and
float32 where float16 CPU attention would only measure rounding. Every attention output is compared with
the fp32 reference attention (``layerzero.kernels.reference.attention``).

Sections: Basic Dispatch, Static Dispatch, Custom Dispatchers, Advanced (core); Hot-Reload Configuration
and A/B testing; Circuit Breaker Usage (resilience). Names the snippets use but do not define (``kernel_impl``, ``MyCustomSelector``, ``alert_channel``,
``metrics``, ``fallback_kernel``) are defined here with the smallest real meaning.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from layerzero.kernels import reference

DEVICE = "cpu"
TOL = dict(atol=2e-5, rtol=1e-4)


def ref_attention(q, k, v, causal=True):
    return reference.attention(query=q, key=k, value=v, is_causal=causal)


def make_qkv(b=2, s=64, h=4, d=32, dtype=torch.float32, hkv=None):
    hkv = hkv or h
    q = torch.randn(b, s, h, d, device=DEVICE, dtype=dtype)
    k = torch.randn(b, s, hkv, d, device=DEVICE, dtype=dtype)
    v = torch.randn(b, s, hkv, d, device=DEVICE, dtype=dtype)
    return q, k, v


@pytest.fixture
def inputs():
    q, k, v = make_qkv()
    return {"query": q, "key": k, "value": v}


# ------------------------------------------------------------------------------------------ Basic Dispatch
def test_simple_dispatch_with_global_orchestrator(capsys):
    from layerzero.dispatch import dispatch

    batch_size, seq_len, num_heads, head_dim = 2, 128, 4, 64  # seed: 8, 2048, 32, 128 on cuda
    device = DEVICE
    dtype = torch.float32  # seed: float16

    query = torch.randn(batch_size, seq_len, num_heads, head_dim, device=device, dtype=dtype)
    key = torch.randn(batch_size, seq_len, num_heads, head_dim, device=device, dtype=dtype)
    value = torch.randn(batch_size, seq_len, num_heads, head_dim, device=device, dtype=dtype)

    result = dispatch(
        operation="attention.causal",
        inputs={"query": query, "key": key, "value": value},
        is_causal=True,
    )
    output = result.output
    print(f"Output shape: {output.shape}")
    print(f"Selection time: {result.timing.selection_us:.2f}us")
    print(f"Execution time: {result.timing.execution_us:.2f}us")
    print(f"Kernel used: {result.kernel_id}")

    assert output.shape == (batch_size, seq_len, num_heads, head_dim)
    torch.testing.assert_close(output, ref_attention(query, key, value), **TOL)
    assert result.timing.selection_us > 0 and result.timing.execution_us > 0
    out = capsys.readouterr().out
    assert f"Kernel used: {result.kernel_id}" in out
    assert result.kernel_id in {"torch_sdpa_attention", "torch_flex_attention", "torch_sdpa_math_attention", "reference_attention"}


def test_simple_dispatch_half_precision_matches_reference():
    from layerzero.dispatch import dispatch

    q, k, v = make_qkv(dtype=torch.bfloat16)
    result = dispatch(operation="attention.causal", inputs={"query": q, "key": k, "value": v}, is_causal=True)
    assert result.output.dtype == torch.bfloat16
    torch.testing.assert_close(result.output.float(), ref_attention(q, k, v).float(), atol=2e-2, rtol=2e-2)


def test_dispatch_with_explicit_context():
    from layerzero.dispatch import dispatch
    from layerzero.selection import SelectionContext

    query, key, value = make_qkv(b=2, s=64, h=4, d=32)
    context = SelectionContext(
        batch_size=2,
        seq_len=64,
        seq_len_q=64,
        seq_len_k=64,
        head_dim=32,
        num_heads=4,
        num_kv_heads=4,
        dtype="float32",
        device="cpu",  # seed: cuda:0
        platform="cpu",  # seed: cuda
        is_causal=True,
        enable_gqa=False,
        dropout_p=0.0,
    )
    result = dispatch(
        operation="attention.causal",
        inputs={"query": query, "key": key, "value": value},
        context=context,
    )
    torch.testing.assert_close(result.output, ref_attention(query, key, value), **TOL)


def test_dispatch_with_mode_override(inputs):
    from layerzero.dispatch import DispatchMode, dispatch

    result = dispatch(operation="attention.causal", inputs=inputs, mode=DispatchMode.STATIC)
    torch.testing.assert_close(result.output, ref_attention(**_qkv(inputs)), **TOL)
    result = dispatch(operation="attention.causal", inputs=inputs, mode=DispatchMode.DYNAMIC)
    torch.testing.assert_close(result.output, ref_attention(**_qkv(inputs)), **TOL)


def _qkv(inputs):
    return {"q": inputs["query"], "k": inputs["key"], "v": inputs["value"]}


# --------------------------------------------------------------------------------------- Static Dispatch
def test_static_dispatcher_builder(inputs):
    from layerzero.dispatch import DispatchConfig, DispatchMode, StaticDispatcherBuilder  # noqa: F401
    from layerzero.registry import get_global_kernel_registry

    registry = get_global_kernel_registry()
    flash_attn = registry.get("flash_attn_v2_attention")
    sdpa = registry.get("torch_sdpa_attention")
    liger_rms = registry.get("liger_rms_norm")
    triton_rope = registry.get("triton_rope")

    dispatcher = (
        StaticDispatcherBuilder()
        .with_kernel(flash_attn, operation="attention.causal", default=True)
        .with_kernel(sdpa, operation="attention.causal")
        .with_kernel(flash_attn, operation="attention.cross", default=True)
        .with_kernel(liger_rms, operation="rms_norm", default=True)
        .with_kernel(triton_rope, operation="rope", default=True)
        .with_config(
            enable_telemetry=True,
            record_timing=True,
        )
        .build()
    )
    result = dispatcher.dispatch("attention.causal", inputs)
    torch.testing.assert_close(result.output, ref_attention(**_qkv(inputs)), **TOL)
    # flash-attn is not installed on a CPU machine: the next registered kernel serves, and explain says why.
    assert result.kernel_id == "torch_sdpa_attention"
    why = dispatcher.explain("attention.causal", None, batch_size=2, seq_len=64, num_heads=4, head_dim=32,
                             dtype="float32", device="cpu", is_causal=True)
    assert why.chosen == "torch_sdpa_attention"
    assert any("flash_attn" in r for r in why["flash_attn_v2_attention"].reasons)


def test_static_kernel_registry(inputs):
    from layerzero.dispatch import DispatchConfig, DispatchMode, StaticDispatcher, StaticKernelRegistry
    from layerzero.errors import DispatcherFrozenError
    from layerzero.registry import get_global_kernel_registry

    kernels = get_global_kernel_registry()
    flash_attn_spec = kernels.get("flash_attn_v2_attention")
    sdpa_spec = kernels.get("torch_sdpa_attention")
    xformers_spec = kernels.get("xformers_attention")

    registry = StaticKernelRegistry()
    registry.register_from_spec(flash_attn_spec, is_default=True)
    registry.register_from_spec(sdpa_spec)
    registry.register_from_spec(xformers_spec)
    registry.freeze()
    with pytest.raises(DispatcherFrozenError):
        registry.register_from_spec(sdpa_spec)

    config = DispatchConfig(
        mode=DispatchMode.STATIC,
        enable_telemetry=True,
    )
    dispatcher = StaticDispatcher(config, registry=registry)
    result = dispatcher.dispatch("attention.causal", inputs)
    assert result.kernel_id == "torch_sdpa_attention"
    torch.testing.assert_close(result.output, ref_attention(**_qkv(inputs)), **TOL)


def test_config_based_static_dispatch(inputs):
    from layerzero.dispatch import DispatchConfig, DispatchMode, create_orchestrator
    from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

    config = DispatchConfig(
        mode=DispatchMode.STATIC,
        static_kernel_map={
            "attention.causal": "flash_attn_v2_attention",
            "attention.cross": "flash_attn_v2_attention",
            "attention.decode": "flashinfer_decode_attention",
            "rms_norm": "liger_rms_norm",
            "layer_norm": "torch_layer_norm",
            "rope": "liger_rope",
            "swiglu": "liger_swiglu",
        },
        enable_telemetry=False,
        circuit_breaker_enabled=False,
    )
    orchestrator = create_orchestrator(
        config=config,
        kernel_registry=get_global_kernel_registry(),
        backend_registry=get_global_backend_registry(),
    )
    result = orchestrator.dispatch("attention.causal", inputs)
    torch.testing.assert_close(result.output, ref_attention(**_qkv(inputs)), **TOL)
    x, w = torch.randn(3, 16), torch.randn(16)
    ln = orchestrator.dispatch("layer_norm", {"x": x, "weight": w, "bias": torch.zeros(16)})
    assert ln.kernel_id == "torch_layer_norm"  # the mapped kernel runs where it can
    torch.testing.assert_close(ln.output, reference.layer_norm(x=x, weight=w, bias=torch.zeros(16)), **TOL)


def test_static_kernel_map_rejects_unknown_kernel():
    from layerzero.dispatch import DispatchConfig, DispatchMode, create_orchestrator

    with pytest.raises(ValueError, match=r"static_kernel_map\['rms_norm'\].*no_such_kernel"):
        create_orchestrator(DispatchConfig(mode=DispatchMode.STATIC, static_kernel_map={"rms_norm": "no_such_kernel"}))


# ---------------------------------------------------------------------------------- Custom Dispatchers
class MyCustomSelector:
    """Picks the highest-priority kernel that can run the call, through the real selection engine."""

    def __init__(self):
        from layerzero.registry import get_global_backend_registry, get_global_kernel_registry
        from layerzero.selection import SelectionEngine

        self.engine = SelectionEngine(get_global_kernel_registry(), get_global_backend_registry())

    def select(self, operation, context):
        return self.engine.select(operation, context)


def _custom_dispatcher_class():
    import time

    from layerzero.dispatch import DispatchConfig, DispatchMode, DispatchResult, DispatchTiming  # noqa: F401
    from layerzero.dispatch.protocols import BaseDispatcher
    from layerzero.registry import KernelSpec
    from layerzero.selection import SelectionContext

    class CustomDispatcher(BaseDispatcher):
        """Custom dispatcher with specialized logic."""

        def __init__(self, config: DispatchConfig, kernel_registry, custom_selector):
            self._config = config
            self._kernel_registry = kernel_registry
            self._custom_selector = custom_selector
            self._call_count = 0

        @property
        def mode(self) -> DispatchMode:
            return DispatchMode.DYNAMIC

        def dispatch(self, operation: str, inputs: dict[str, torch.Tensor], context: SelectionContext | None = None, **kwargs) -> DispatchResult:
            start_time = time.perf_counter_ns()
            self._call_count += 1
            if context is None:
                context = self._build_context(inputs, **kwargs)
            selection_start = time.perf_counter_ns()
            kernel_spec = self._custom_selector.select(operation, context)
            selection_end = time.perf_counter_ns()
            execution_start = time.perf_counter_ns()
            output = self._execute_kernel(kernel_spec, inputs, kwargs)
            execution_end = time.perf_counter_ns()
            end_time = time.perf_counter_ns()
            timing = DispatchTiming(
                total_ns=end_time - start_time,
                selection_ns=selection_end - selection_start,
                execution_ns=execution_end - execution_start,
            )
            return DispatchResult(output=output, kernel_id=kernel_spec.kernel_id, timing=timing, was_fallback=False)

        def get_kernel_for_operation(self, operation: str, context: SelectionContext) -> KernelSpec:
            return self._custom_selector.select(operation, context)

        def _build_context(self, inputs: dict[str, torch.Tensor], **kwargs) -> SelectionContext:
            first_tensor = next(iter(inputs.values()))
            return SelectionContext(
                batch_size=first_tensor.shape[0],
                dtype=str(first_tensor.dtype).replace("torch.", ""),
                device=str(first_tensor.device),
                **kwargs,
            )

        def _execute_kernel(self, kernel_spec: KernelSpec, inputs: dict, kwargs: dict):
            mapped_kwargs = kernel_spec.map_arguments(inputs, kwargs)
            return kernel_spec.impl(**mapped_kwargs)

    return CustomDispatcher


def test_custom_dispatcher(inputs):
    from layerzero.dispatch import DispatchConfig
    from layerzero.registry import get_global_kernel_registry

    CustomDispatcher = _custom_dispatcher_class()
    config = DispatchConfig()
    custom_selector = MyCustomSelector()
    dispatcher = CustomDispatcher(config, get_global_kernel_registry(), custom_selector)
    result = dispatcher.dispatch("attention.causal", inputs, is_causal=True)
    torch.testing.assert_close(result.output, ref_attention(**_qkv(inputs)), **TOL)
    assert result.timing.total_ns >= result.timing.execution_ns > 0


def test_policy_aware_dispatcher(inputs):
    from layerzero.dispatch import DispatchConfig, DispatchResult
    from layerzero.dispatch.protocols import BaseDispatcher
    from layerzero.policy import PolicyEngine, load_policy
    from layerzero.registry import get_global_kernel_registry
    from layerzero.selection import SelectionContext

    class PolicyAwareDispatcher(BaseDispatcher):
        """Dispatcher that integrates with policy engine."""

        def __init__(self, config, kernel_registry, policy_engine: PolicyEngine):
            self._config = config
            self._registry = kernel_registry
            self._policy = policy_engine
            self._cache = {}

        def dispatch(self, operation: str, inputs: dict[str, torch.Tensor], context: SelectionContext | None = None, **kwargs) -> DispatchResult:
            if context is None:
                context = self._build_context(inputs, **kwargs)
            cache_key = self._make_cache_key(operation, context)
            if cache_key in self._cache:
                kernel_spec = self._cache[cache_key]
            else:
                candidates = self._registry.get_by_operation(operation)
                filtered = self._policy.filter_kernels(candidates, context)
                scored = self._policy.score_kernels(filtered, context)
                kernel_spec = max(scored, key=lambda x: x[1])[0]
                self._cache[cache_key] = kernel_spec
            output = kernel_spec.impl(**self._map_args(kernel_spec, inputs, kwargs))
            return DispatchResult(output=output, kernel_id=kernel_spec.kernel_id)

        # helpers the examples leave to the reader
        def _build_context(self, inputs, **kwargs):
            return SelectionContext.from_inputs("attention.causal", inputs, **kwargs)

        def _make_cache_key(self, operation, context):
            return (operation, context)

        def _map_args(self, spec, inputs, kwargs):
            return spec.map_arguments(inputs, kwargs)

    policy = load_policy({"version": "1", "kernel_denies": ["torch_sdpa_attention"]})
    dispatcher = PolicyAwareDispatcher(DispatchConfig(), get_global_kernel_registry(), PolicyEngine(policy))
    result = dispatcher.dispatch("attention.causal", inputs, is_causal=True)
    assert result.kernel_id != "torch_sdpa_attention"  # denied by the policy
    torch.testing.assert_close(result.output, ref_attention(**_qkv(inputs)), **TOL)


def test_registering_custom_dispatcher_with_orchestrator(inputs):
    from layerzero.dispatch import DispatchConfig, DispatchMode, DispatchOrchestrator
    from layerzero.registry import get_global_kernel_registry

    CustomDispatcher = _custom_dispatcher_class()
    config = DispatchConfig(mode=DispatchMode.DYNAMIC)
    custom_selector = MyCustomSelector()
    custom_dispatcher = CustomDispatcher(config, get_global_kernel_registry(), custom_selector)
    orchestrator = DispatchOrchestrator(config)
    orchestrator.register_dispatcher(DispatchMode.DYNAMIC, custom_dispatcher)
    result = orchestrator.dispatch("attention.causal", inputs, is_causal=True)
    assert custom_dispatcher._call_count == 1
    torch.testing.assert_close(result.output, ref_attention(**_qkv(inputs)), **TOL)


# ------------------------------------------------------------------------------------------- Advanced
def test_multi_gpu_dispatch():
    from layerzero.dispatch import dispatch
    from layerzero.selection import SelectionContext

    def multi_gpu_dispatch(inputs_per_device):
        results = {}
        for device_id, inputs in inputs_per_device.items():
            context = SelectionContext(
                device=device_id,
                batch_size=inputs["query"].shape[0],
                seq_len=inputs["query"].shape[1],
                dtype="float32",  # seed: float16
                platform="cpu",  # seed: cuda
            )
            result = dispatch(operation="attention.causal", inputs=inputs, context=context)
            results[device_id] = result
        return results

    q0, k0, v0 = make_qkv()
    q1, k1, v1 = make_qkv(s=32)
    inputs_per_device = {"cpu": {"query": q0, "key": k0, "value": v0}, "cpu:1": {"query": q1, "key": k1, "value": v1}}
    results = multi_gpu_dispatch(inputs_per_device)
    torch.testing.assert_close(results["cpu"].output, ref_attention(q0, k0, v0), **TOL)
    torch.testing.assert_close(results["cpu:1"].output, ref_attention(q1, k1, v1), **TOL)


def test_batch_processing_with_different_kernels():
    from layerzero.dispatch import get_global_dispatcher
    from layerzero.selection import SelectionContext

    def process_mixed_batch(batches):
        dispatcher = get_global_dispatcher()
        results = []
        for batch in batches:
            context = SelectionContext(
                batch_size=batch["query"].shape[0],
                seq_len=batch["query"].shape[1],
                dtype=str(batch["query"].dtype).replace("torch.", ""),
                device=str(batch["query"].device),
                is_causal=batch.get("is_causal", True),
            )
            result = dispatcher.dispatch(
                operation="attention.causal",
                inputs={"query": batch["query"], "key": batch["key"], "value": batch["value"]},
                context=context,
            )
            results.append(result)
        return results

    batches = []
    for s, h, d, hkv in ((16, 4, 32, 4), (48, 8, 64, 2), (1, 4, 32, 4)):
        q, k, v = make_qkv(s=s, h=h, d=d, hkv=hkv)
        batches.append({"query": q, "key": k, "value": v})
    for batch, result in zip(batches, process_mixed_batch(batches)):
        torch.testing.assert_close(result.output, ref_attention(batch["query"], batch["key"], batch["value"]), **TOL)


def test_inference_server_integration():
    from layerzero.dispatch import DispatchConfig, DispatchMode, create_orchestrator
    from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

    class InferenceDispatcher:
        def __init__(self):
            self._config = DispatchConfig(
                mode=DispatchMode.DYNAMIC,
                enable_cache=True,
                cache_size=100000,
                circuit_breaker_enabled=True,
                failure_threshold=10,
                recovery_timeout_seconds=60.0,
            )
            self._orchestrator = create_orchestrator(
                config=self._config,
                kernel_registry=get_global_kernel_registry(),
                backend_registry=get_global_backend_registry(),
            )
            self._warmup_complete = False

        async def warmup(self, representative_shapes):
            for shape in representative_shapes:
                dummy_inputs = self._create_dummy_inputs(shape)
                try:
                    self._orchestrator.dispatch("attention.causal", dummy_inputs)
                except Exception:
                    pass
            self._warmup_complete = True

        def dispatch_attention(self, query, key, value, is_causal=True):
            if not self._warmup_complete:
                raise RuntimeError("Warmup not complete")
            return self._orchestrator.dispatch(
                operation="attention.causal",
                inputs={"query": query, "key": key, "value": value},
                is_causal=is_causal,
            )

        def get_metrics(self):
            telemetry = self._orchestrator.get_telemetry()
            return {
                "cache_hit_rate": telemetry.cache_hit_rate,
                "dispatch_count": telemetry.dispatch_count,
                "fallback_count": telemetry.fallback_count,
                "p50_latency_us": telemetry.p50_latency_us,
                "p99_latency_us": telemetry.p99_latency_us,
            }

        def _create_dummy_inputs(self, shape):
            return {
                "query": torch.randn(shape["batch"], shape["seq"], shape["heads"], shape["dim"]),
                "key": torch.randn(shape["batch"], shape["seq"], shape["heads"], shape["dim"]),
                "value": torch.randn(shape["batch"], shape["seq"], shape["heads"], shape["dim"]),
            }

    dispatcher = InferenceDispatcher()
    with pytest.raises(RuntimeError, match="Warmup"):
        dispatcher.dispatch_attention(*make_qkv())
    # seed shapes scaled down for the CPU: (1,512,32,128), (8,2048,32,128), (32,8192,32,128)
    asyncio.run(dispatcher.warmup([
        {"batch": 1, "seq": 64, "heads": 4, "dim": 32},
        {"batch": 2, "seq": 128, "heads": 4, "dim": 32},
        {"batch": 4, "seq": 256, "heads": 4, "dim": 32},
    ]))
    query, key, value = make_qkv(b=2, s=128, h=4, d=32)
    result = dispatcher.dispatch_attention(query, key, value)
    torch.testing.assert_close(result.output, ref_attention(query, key, value), **TOL)
    metrics = dispatcher.get_metrics()
    print(f"Cache hit rate: {metrics['cache_hit_rate']:.1%}")
    assert metrics["dispatch_count"] == 4
    assert metrics["cache_hit_rate"] == pytest.approx(0.25)  # the last call hit the (2,128) warm-up bucket
    assert metrics["fallback_count"] == 0
    assert 0 < metrics["p50_latency_us"] <= metrics["p99_latency_us"]


# --------------------------------------------------------------- Hot-Reload Configuration, A/B testing
# The seed's own YAML (its flash-attn / FlashInfer / Liger choices cannot run here; lock_mode prefer
# ignores them and the version's warnings say so).
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from layerzero.dispatch import (  # noqa: E402
    ConfigVersion,
    DispatchConfig,
    DispatchMode,
    HotReloadDispatcher,
    create_hot_reload_dispatcher,
)
from layerzero.registry import get_global_kernel_registry  # noqa: E402

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
        assert result.kernel_id.startswith("torch_sdpa")  # the torch_sdpa alias is what runs on CPU
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
    """The example A/B dispatcher, verbatim but for a fixed-seed random generator."""

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


# ------------------------------------------------------------------------------ Circuit Breaker Usage
from layerzero.dispatch.circuit import (  # noqa: E402
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerManager,
    CircuitState,
    CircuitStats,
)


def _reference_attention(query, key, value):
    return reference.attention(query=query, key=key, value=value)


def test_seed_basic_circuit_breaker():
    config = CircuitBreakerConfig(
        failure_threshold=5,
        success_threshold=2,
        cooldown_seconds=30.0,
        half_open_max_calls=3,
    )
    circuit = CircuitBreaker("flash_attn_v2_attention", config)
    q = k = v = torch.randn(1, 4, 2, 8)
    kwargs = dict(query=q, key=k, value=v)

    def kernel_impl(**kw):  # a kernel that fails on this input (e.g. unsupported dtype)
        raise RuntimeError("FlashAttention only supports fp16 and bf16")

    fallback_kernel = _reference_attention
    results = []
    for _ in range(7):
        if circuit.allow_request():
            try:
                result = kernel_impl(**kwargs)
                circuit.record_success()
            except Exception as e:
                circuit.record_failure(e)
                result = fallback_kernel(**kwargs)
        else:
            result = fallback_kernel(**kwargs)
        results.append(result)
    assert circuit.state is CircuitState.OPEN
    assert str(circuit.state) == "OPEN"
    assert circuit.failure_count == 5 and circuit.success_count == 0
    assert circuit.stats().total_rejections == 2
    for r in results:
        torch.testing.assert_close(r, _reference_attention(q, k, v))


def test_seed_state_listener():
    circuit = CircuitBreaker("my-kernel", CircuitBreakerConfig(failure_threshold=1, cooldown_seconds=0.0))
    alerts = []

    def on_state_change(old_state: CircuitState, new_state: CircuitState):
        if new_state == CircuitState.OPEN:
            alerts.append(f"Circuit opened for {circuit.kernel_id}")
        elif new_state == CircuitState.CLOSED:
            alerts.append(f"Circuit recovered for {circuit.kernel_id}")

    circuit.add_listener(on_state_change)
    circuit.record_failure(RuntimeError("x"))
    assert circuit.allow_request()  # cooldown 0: straight to a half-open trial
    circuit.record_success()
    circuit.record_success()
    assert alerts == ["Circuit opened for my-kernel", "Circuit recovered for my-kernel"]


def test_seed_manager():
    manager = CircuitBreakerManager(
        default_config=CircuitBreakerConfig(failure_threshold=5, cooldown_seconds=30.0)
    )
    circuit = manager.get_circuit("flash_attn_v2_attention")
    calls = []

    def execute_kernel():
        calls.append(1)
        raise RuntimeError("CUDA error: no kernel image is available")

    for _ in range(6):
        if circuit.allow_request():
            try:
                execute_kernel()
                circuit.record_success()
            except Exception as e:
                circuit.record_failure(e)
    assert len(calls) == 5
    stats = manager.get_all_stats()
    assert set(stats) == {"flash_attn_v2_attention"}
    s = stats["flash_attn_v2_attention"]
    assert isinstance(s, CircuitStats)
    assert s.state.name == "OPEN" and s.failure_count == 5
    assert "no kernel image" in s.last_failure
    manager.reset_circuit("flash_attn_v2_attention")
    assert circuit.state is CircuitState.CLOSED
    circuit.record_failure()
    manager.reset_all()
    assert circuit.failure_count == 0



def test_seed_circuit_breaker_with_dispatch_integration():
    """The seed's "Circuit Breaker with Dispatch Integration": a kernel returning NaN (caught by the output
    check) trips its breaker at failure_threshold; every call is served by the fallback, equal to the reference."""
    from layerzero.dispatch import create_orchestrator
    from layerzero.errors import CircuitOpenError, FallbackChainExhaustedError
    from layerzero.registry import KernelRegistry, KernelSpec

    calls = []

    def nan_norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        calls.append(1)
        return x * float("nan")

    kernel_registry = KernelRegistry([
        KernelSpec("lz_nan_norm", "rms_norm", "torch", nan_norm, priority=100),
        KernelSpec("reference_rms_norm", "rms_norm", "torch", "layerzero.kernels.reference:rms_norm", priority=0, tags={"reference"}),
    ])
    config = DispatchConfig(
        mode=DispatchMode.DYNAMIC,
        circuit_breaker_enabled=True,
        failure_threshold=5,
        recovery_timeout_seconds=30.0,
        enable_fallback=True,
        max_fallback_attempts=3,
        check_outputs=True,
    )
    orchestrator = create_orchestrator(config=config, kernel_registry=kernel_registry)
    inputs = {"x": torch.randn(2, 8), "weight": torch.randn(8)}
    for _ in range(7):
        try:
            result = orchestrator.dispatch("rms_norm", inputs)
        except CircuitOpenError as e:  # pragma: no cover - must not happen: the fallback serves
            pytest.fail(f"All circuits open: {e}")
        except FallbackChainExhaustedError as e:  # pragma: no cover
            pytest.fail(f"All fallbacks failed: {e}")
        assert result.was_fallback and result.kernel_id == "reference_rms_norm"
        torch.testing.assert_close(result.output, reference.rms_norm(**inputs))
    assert len(calls) == 5  # opened after failure_threshold=5, then skipped without being called
    stats = orchestrator.circuits.get_all_stats()["lz_nan_norm"]
    assert stats.state is CircuitState.OPEN and stats.failure_count == 5
