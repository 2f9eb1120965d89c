"""The result of a model-level A/B: the same inputs through one model under two policies (arms).

Framework-neutral: an integration runs each arm (patching the model, recording which kernel ran each
operation, timing forwards with :func:`layerzero.tuning.measure.measure`) and fills these in; how far the
outputs differ is computed here, the same way for every integration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ArmResult", "PolicyComparison", "compare_outputs"]


@dataclass
class ArmResult:
    """One arm of a comparison: forward timings and the kernel that ran each operation."""

    name: str
    median_us: float
    p10_us: float
    p90_us: float
    kernels: dict[str, dict[str, int]]  # operation -> kernel id -> calls in one forward
    output: Any = field(repr=False, default=None)
    spread: float = math.nan  # IQR / median of the forward timings
    noisy: bool = False  # spread over the noise threshold: the speed-up is not to be trusted

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "median_us": self.median_us, "p10_us": self.p10_us, "p90_us": self.p90_us,
                "spread": self.spread, "noisy": self.noisy, "kernels": self.kernels}


@dataclass
class PolicyComparison:
    """The same inputs through two policies: how different the outputs are and which arm is faster."""

    a: ArmResult
    b: ArmResult
    max_abs_diff: float
    max_rel_diff: float

    @property
    def speedup(self) -> float:
        """How many times faster B's forward is than A's (> 1: B wins)."""
        return self.a.median_us / self.b.median_us if self.b.median_us else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a.as_dict(), "b": self.b.as_dict(), "max_abs_diff": self.max_abs_diff,
                "max_rel_diff": self.max_rel_diff, "speedup_b_over_a": self.speedup}

    def __str__(self) -> str:
        lines = [f"PolicyComparison: max |A-B| = {self.max_abs_diff:.3g} (relative {self.max_rel_diff:.3g}); "
                 f"B is {self.speedup:.2f}x A's speed"]
        for arm in (self.a, self.b):
            lines.append(f"  {arm.name}: forward median {arm.median_us:.1f} us (p10 {arm.p10_us:.1f}, "
                         f"p90 {arm.p90_us:.1f})" + ("  NOISY: measure again before trusting it" if arm.noisy else ""))
            for op, ks in sorted(arm.kernels.items()):
                lines.append(f"    {op}: " + ", ".join(f"{k} x{n}" for k, n in ks.items()))
        return "\n".join(lines)

    __repr__ = __str__


def compare_outputs(a: ArmResult, b: ArmResult, out_a: torch.Tensor, out_b: torch.Tensor) -> PolicyComparison:
    """The comparison of two arms whose outputs are ``out_a`` and ``out_b`` (same shape): the largest
    absolute difference, and that difference relative to the largest magnitude of A's output."""
    out_a, out_b = out_a.float(), out_b.float()
    if out_a.shape != out_b.shape:
        raise ValueError(f"compare_policies: outputs differ in shape {tuple(out_a.shape)} vs {tuple(out_b.shape)}")
    diff = (out_a - out_b).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = out_a.abs().max().item() if out_a.numel() else 0.0
    return PolicyComparison(a, b, max_abs, max_abs / scale if scale else 0.0)
