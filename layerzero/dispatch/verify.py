"""Verified kernels: the canary that keeps a kernel that is wrong on real arguments from serving them.

A kernel's own conformance tests cover synthetic shapes; models pass other ones (odd head dims, strided
cache views, partial rotary tables). So the dispatcher checks kernels where they run:

* **First call of each shape bucket**: before the result is served, it is compared with the operation's
  fp32 reference on the same inputs (per-dtype tolerance from :mod:`layerzero.validation`, and NaN/Inf
  where the reference has none). This happens on the cache-miss path, which already pays for selection;
  it costs one reference computation and one host sync per bucket and kernel.
* **A sample of later calls** (every ``verify_sample_every``-th call of a dispatcher): the reference and
  the comparison are queued on the device and the verdict is read later, when a CUDA event says it is
  ready, so the hot path never waits for the GPU. On CPU the check is immediate.

A failed check removes the kernel from that bucket's plan (the next kernel of the plan serves the call
and the bucket from then on), records a failure on the kernel's circuit breaker and logs a warning
naming the kernel, the operation and the error. Calls bigger than ``verify_max_elements`` (the reference
would need too much memory), calls inside CUDA-graph capture and calls traced by ``torch.compile`` are
not checked. ``DispatchConfig(verify_kernels=False, verify_sample_every=0)`` turns both checks off.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Hashable, Mapping

import torch

from layerzero.operations import is_attention
from layerzero.validation import compare_outputs, outputs_match

if TYPE_CHECKING:
    from layerzero.registry import KernelRegistry, KernelSpec

log = logging.getLogger("layerzero.verify")

__all__ = ["KernelVerifier", "capture_underway"]


class KernelVerifier:
    """Checks kernel outputs against the fp32 reference for one dispatcher."""

    def __init__(self, registry: "KernelRegistry", max_elements: int, sample_every: int):
        self.registry = registry
        self.max_elements = int(max_elements)
        self.sample_every = int(sample_every)
        self._pending: list[tuple[Any, Any, Hashable, str, str, str]] = []
        self._lock = threading.Lock()
        self.checked = 0
        self.failed = 0

    # ------------------------------------------------------------------ eligibility
    def _reference(self, operation: str, spec: "KernelSpec") -> "KernelSpec | None":
        if spec.is_reference or _capturing_or_tracing():
            return None
        return self.registry.reference_for(operation)

    def _small_enough(self, operation: str, inputs: Mapping[str, Any]) -> bool:
        if is_attention(operation):
            q, k = inputs.get("query"), inputs.get("key")
            if isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.dim() == 4 and k.dim() == 4:
                return q.shape[0] * q.shape[1] * q.shape[2] * k.shape[1] <= self.max_elements
            return False
        total = sum(t.numel() for t in inputs.values() if isinstance(t, torch.Tensor))
        return total <= self.max_elements

    # ------------------------------------------------------------------ checks
    def check_now(self, operation: str, spec: "KernelSpec", inputs: Mapping[str, Any],
                  kwargs: Mapping[str, Any], out: Any) -> str | None:
        """Why ``out`` is wrong (compared with the reference right away), or None when it matches or the call
        is not checkable."""
        ref = self._reference(operation, spec)
        if ref is None or not self._small_enough(operation, inputs):
            return None
        self.checked += 1
        try:
            with torch.no_grad():
                expected = ref.impl(**ref.map_arguments(inputs, kwargs))
        except Exception:  # noqa: BLE001 - an input the reference cannot run proves nothing about the kernel
            return None
        why = compare_outputs(operation, out, expected, {**inputs, **kwargs})
        if why is not None:
            self.failed += 1
        return why

    def sample(self, key: Hashable, plan: Any, operation: str, inputs: Mapping[str, Any],
               kwargs: Mapping[str, Any], out: Any) -> str | None:
        """A sampled later call. On CPU: checked now (returns the reason on failure). On CUDA: the reference
        and the comparison are queued; :meth:`poll` reads the verdict once the device has finished."""
        spec = plan.kernels[0]
        first = next((t for t in inputs.values() if isinstance(t, torch.Tensor)), None)
        if first is None or first.device.type != "cuda":
            return self.check_now(operation, spec, inputs, kwargs, out)
        ref = self._reference(operation, spec)
        if ref is None or not self._small_enough(operation, inputs):
            return None
        try:
            with torch.no_grad():
                expected = ref.impl(**ref.map_arguments(inputs, kwargs))
                verdict = outputs_match(operation, out, expected, {**inputs, **kwargs})
                # The verdict waits in pinned host memory, not on the device: a device tensor kept past this
                # call would outlive it in whatever memory pool it was allocated from, and inside the warm-up
                # run of a CUDA-graph tree (torch.compile mode="reduce-overhead", static-cache generate) that
                # is the graph's private pool, which then fails ("tensor(s) in the cudagraph pool not
                # tracked as outputs"). The copy is queued on the stream; the event below says when it landed.
                ok = torch.empty((), dtype=torch.bool, pin_memory=True)
                ok.copy_(verdict, non_blocking=True)
        except Exception:  # noqa: BLE001
            return None
        event = torch.cuda.Event()
        event.record()
        with self._lock:
            self._pending.append((event, ok, key, plan, operation, spec.kernel_id))
        self.checked += 1
        return None

    def poll(self) -> list[tuple[Hashable, Any, str, str]]:
        """Sampled checks that finished and failed: (key, plan, operation, reason). Never waits. Nothing
        while a CUDA graph is being captured: querying an event there is not permitted and would
        invalidate the capture (the checks are read on a later call outside the capture)."""
        if not self._pending or capture_underway():
            return []
        failed: list[tuple[Hashable, Any, str, str]] = []
        with self._lock:
            keep = []
            for item in self._pending:
                event, ok, key, plan, operation, kernel_id = item
                if not event.query():
                    keep.append(item)
                elif not bool(ok):  # the event completed: reading the flag does not wait
                    self.failed += 1
                    failed.append((key, plan, operation, f"sampled check failed for {kernel_id}"))
            self._pending = keep
        return failed


def capture_underway() -> bool:
    """A CUDA graph is being captured on the current stream (or a capture there was invalidated)."""
    try:
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    except Exception:  # noqa: BLE001
        return False


def _capturing_or_tracing() -> bool:
    return torch.compiler.is_compiling() or capture_underway()
