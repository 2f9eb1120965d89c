"""The seed's "Inference Server Integration" example on CPU (shapes shrunk): warm-up fills the selection
cache, and get_metrics() reads real telemetry."""

from __future__ import annotations

import asyncio

import pytest
import torch

from layerzero.dispatch import DispatchConfig, DispatchMode, create_orchestrator
from layerzero.kernels import reference
from layerzero.registry import get_global_backend_registry, get_global_kernel_registry


class InferenceDispatcher:
    """Dispatch manager for inference server (the seed's class, verbatim)."""

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

    async def warmup(self, representative_shapes: list[dict]):
        for shape in representative_shapes:
            dummy_inputs = self._create_dummy_inputs(shape)
            try:
                self._orchestrator.dispatch("attention.causal", dummy_inputs)
            except Exception:
                pass
        self._warmup_complete = True

    def dispatch_attention(self, query, key, value, is_causal: bool = True):
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

    def _create_dummy_inputs(self, shape: dict):
        return {
            "query": torch.randn(shape["batch"], shape["seq"], shape["heads"], shape["dim"]),
            "key": torch.randn(shape["batch"], shape["seq"], shape["heads"], shape["dim"]),
            "value": torch.randn(shape["batch"], shape["seq"], shape["heads"], shape["dim"]),
        }


def test_seed_inference_server_metrics():
    dispatcher = InferenceDispatcher()
    q = torch.randn(1, 16, 2, 16)
    with pytest.raises(RuntimeError, match="Warmup not complete"):
        dispatcher.dispatch_attention(q, q, q)
    asyncio.run(dispatcher.warmup([
        {"batch": 1, "seq": 16, "heads": 2, "dim": 16},
        {"batch": 2, "seq": 32, "heads": 2, "dim": 16},
        {"batch": 4, "seq": 64, "heads": 2, "dim": 16},
    ]))
    query, key, value = (torch.randn(1, 16, 2, 16) for _ in range(3))
    results = [dispatcher.dispatch_attention(query, key, value) for _ in range(5)]
    for result in results:
        torch.testing.assert_close(result.output, reference.attention(query, key, value, is_causal=True),
                                   rtol=1e-4, atol=1e-5)
    metrics = dispatcher.get_metrics()
    assert metrics["dispatch_count"] == 8 and metrics["fallback_count"] == 0
    # The requests hit the cache the warm-up filled (warm-up shapes may share a bucket, or not).
    assert all(r.cache_hit for r in results)
    assert 5 / 8 <= metrics["cache_hit_rate"] < 1.0
    assert 0 < metrics["p50_latency_us"] <= metrics["p99_latency_us"]
    assert f"{metrics['cache_hit_rate']:.1%}".endswith("%")
