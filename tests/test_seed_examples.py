"""Every snippet of ../shared/seed/code_examples.md, run as written with the CPU adaptation the task allows:
``device="cpu"`` where it says cuda, shapes scaled down so attention runs in milliseconds on a CPU, and
float32 where float16 CPU attention would only measure rounding. Every attention output is compared with
the fp32 reference attention (``layerzero.kernels.reference.attention``).

Names the snippets use but do not define (``kernel_impl``, ``MyCustomSelector``, ``alert_channel``,
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

        # helpers the seed leaves to the reader
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
