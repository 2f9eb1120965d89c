"""A custom dispatcher (the ``CustomDispatcher`` of the public API examples) plugged into the orchestrator.

The dispatcher is the API example's code unchanged; the strategy lives in ``PreferenceSelector``: per operation,
an ordered list of preferred kernels; the first that can run the call wins (each kernel's constraints and
backend are checked against the call's context, and the reasons a preferred kernel was skipped are
kept), else the highest-priority kernel that can run. Registered as the orchestrator's DYNAMIC dispatcher,
it serves ``orchestrator.dispatch`` like a built-in one.

Runs on CPU in a second: ``python examples/custom_dispatcher.py``.
"""

from __future__ import annotations

import time

import torch

from layerzero.dispatch import (
    DispatchConfig,
    DispatchMode,
    DispatchOrchestrator,
    DispatchResult,
    DispatchTiming,
)
from layerzero.dispatch.protocols import BaseDispatcher
from layerzero.errors import NoKernelAvailableError
from layerzero.registry import KernelSpec, get_global_kernel_registry
from layerzero.selection import SelectionContext


class PreferenceSelector:
    """First preferred kernel that can run the call, else the best-priority one that can."""

    def __init__(self, kernel_registry, preferences: dict[str, list[str]]):
        self._registry = kernel_registry
        self._preferences = {op: [kernel_registry.get(k) for k in ids] for op, ids in preferences.items()}
        self.skipped: dict[str, list[str]] = {}  # kernel id -> why it was passed over (last call)

    def select(self, operation: str, context: SelectionContext) -> KernelSpec:
        ctx = context.replace(operation=operation)
        self.skipped = {}
        for spec in self._preferences.get(operation, []):
            reasons = spec.check(ctx)
            if not reasons:
                return spec
            self.skipped[spec.kernel_id] = reasons
        runnable = [s for s in self._registry.get_by_operation(operation) if not s.check(ctx)]
        if not runnable:
            rejections = [(s.kernel_id, s.check(ctx)) for s in self._registry.get_by_operation(operation)]
            raise NoKernelAvailableError(operation, rejections, ctx)
        return max(runnable, key=lambda s: s.priority)


class CustomDispatcher(BaseDispatcher):
    """Custom dispatcher with specialized logic."""

    def __init__(
        self,
        config: DispatchConfig,
        kernel_registry,
        custom_selector,
    ):
        self._config = config
        self._kernel_registry = kernel_registry
        self._custom_selector = custom_selector
        self._call_count = 0

    @property
    def mode(self) -> DispatchMode:
        return DispatchMode.DYNAMIC

    def dispatch(
        self,
        operation: str,
        inputs: dict[str, torch.Tensor],
        context: SelectionContext | None = None,
        **kwargs,
    ) -> DispatchResult:
        start_time = time.perf_counter_ns()
        self._call_count += 1

        # Build context if not provided
        if context is None:
            context = self._build_context(inputs, **kwargs)

        # Custom kernel selection logic
        selection_start = time.perf_counter_ns()
        kernel_spec = self._custom_selector.select(operation, context)
        selection_end = time.perf_counter_ns()

        # Execute kernel
        execution_start = time.perf_counter_ns()
        output = self._execute_kernel(kernel_spec, inputs, kwargs)
        execution_end = time.perf_counter_ns()

        end_time = time.perf_counter_ns()

        # Build timing info
        timing = DispatchTiming(
            total_ns=end_time - start_time,
            selection_ns=selection_end - selection_start,
            execution_ns=execution_end - execution_start,
        )

        return DispatchResult(
            output=output,
            kernel_id=kernel_spec.kernel_id,
            timing=timing,
            was_fallback=False,
        )

    def get_kernel_for_operation(
        self,
        operation: str,
        context: SelectionContext,
    ) -> KernelSpec:
        return self._custom_selector.select(operation, context)

    def _build_context(self, inputs: dict[str, torch.Tensor], **kwargs) -> SelectionContext:
        # Extract tensor info
        first_tensor = next(iter(inputs.values()))
        return SelectionContext(
            batch_size=first_tensor.shape[0],
            dtype=str(first_tensor.dtype).replace("torch.", ""),
            device=str(first_tensor.device),
            **kwargs,
        )

    def _execute_kernel(self, kernel_spec: KernelSpec, inputs: dict, kwargs: dict):
        # Map arguments and execute
        mapped_kwargs = kernel_spec.map_arguments(inputs, kwargs)
        return kernel_spec.impl(**mapped_kwargs)


def main() -> None:
    registry = get_global_kernel_registry()
    selector = PreferenceSelector(registry, {
        # FlashAttention first where it can run (a CUDA box with flash-attn), else SDPA's math kernel
        "attention.causal": ["flash_attn_v2_attention", "torch_sdpa_math_attention"],
        "swiglu": ["liger_swiglu", "torch_swiglu"],
    })
    config = DispatchConfig(mode=DispatchMode.DYNAMIC)
    custom = CustomDispatcher(config, registry, selector)

    orchestrator = DispatchOrchestrator(config)
    orchestrator.register_dispatcher(DispatchMode.DYNAMIC, custom)

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 16, 4, 32) for _ in range(3))
    result = orchestrator.dispatch("attention.causal", {"query": q, "key": k, "value": v}, is_causal=True)
    print(f"attention.causal -> {result.kernel_id}  (total {result.timing.total_ns / 1e3:.1f} us, selection "
          f"{result.timing.selection_ns / 1e3:.1f} us)")
    for kid, reasons in selector.skipped.items():
        print(f"  skipped {kid}: {'; '.join(reasons)}")
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
    torch.testing.assert_close(result.output, expected, rtol=1e-4, atol=1e-5)

    gate, up = torch.randn(8, 64), torch.randn(8, 64)
    result = orchestrator.dispatch("swiglu", {"gate": gate, "up": up})
    print(f"swiglu -> {result.kernel_id}")
    torch.testing.assert_close(result.output, torch.nn.functional.silu(gate) * up)

    # no preference for rms_norm: the best-priority kernel that can run it
    result = orchestrator.dispatch("rms_norm", {"x": torch.randn(8, 64), "weight": torch.ones(64)})
    print(f"rms_norm -> {result.kernel_id} (no preference: highest priority that can run)")
    print(f"calls through the custom dispatcher: {custom._call_count}")


if __name__ == "__main__":
    main()
