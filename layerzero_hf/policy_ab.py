"""``compare_policies``: the same inputs through a model patched with policy A, then policy B.

The model-level A/B: which kernel ran each operation under each arm (recorded on one forward), how far
the outputs (logits) differ, and the forward timings from the shared harness
(:func:`layerzero.tuning.measure.measure`, with its noise flag). The model's previous patch state is
restored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from layerzero.tuning.measure import measure
from layerzero_hf.capture import forward_inputs, recorder_on
from layerzero_hf.policy_args import patch_arguments

__all__ = ["ArmResult", "PolicyComparison", "compare_policies"]


@dataclass
class ArmResult:
    """One arm of :func:`compare_policies`: forward timings and the kernel that ran each operation."""

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


def _output_tensor(out: Any) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        t = getattr(out, name, None)
        if isinstance(t, torch.Tensor):
            return t
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"compare_policies: cannot find an output tensor in {type(out).__name__} (expected .logits, "
                    ".last_hidden_state or a tensor)")


def compare_policies(
    model: torch.nn.Module,
    inputs: Any,
    policy_a: Any = None,
    policy_b: Any = None,
    *,
    repeats: int = 5,
    warmup: int = 1,
    names: tuple[str, str] = ("A", "B"),
    progress: bool = True,
) -> PolicyComparison:
    """Run ``inputs`` through ``model`` patched with ``policy_a``, then ``policy_b`` (each a policy path,
    mapping or ``Policy``, or a kernel map ``{"rms_norm": "reference_rms_norm"}``; None = the default),
    and compare outputs (logits) and forward timings. The model's previous patch state is restored."""
    kwargs = forward_inputs(model, inputs, 1, 32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    arms = []
    # Two steps per arm (the recorded forward, then the timing): the harness decides how many forwards
    # the timing takes, so counting forwards could never match a total fixed in advance.
    bar = _bar(2 * len(names), progress)
    try:
        for name, pol in zip(names, (policy_a, policy_b)):
            arms.append(_run_arm(model, kwargs, name, pol, device, warmup, repeats, bar))
    finally:
        if bar is not None:
            bar.close()
    out_a, out_b = (_output_tensor(a.output).float() for a in arms)
    if out_a.shape != out_b.shape:
        raise ValueError(f"compare_policies: outputs differ in shape {tuple(out_a.shape)} vs {tuple(out_b.shape)}")
    diff = (out_a - out_b).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = out_a.abs().max().item() if out_a.numel() else 0.0
    return PolicyComparison(arms[0], arms[1], max_abs, max_abs / scale if scale else 0.0)


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from layerzero.tuning.progress import progress_bar

    return progress_bar(total, "layerzero compare_policies", "step", delay=2.0, leave=False)


def _run_arm(model: torch.nn.Module, kwargs: dict[str, Any], name: str, policy: Any, device: torch.device,
             warmup: int, repeats: int, bar: Any) -> ArmResult:
    patch_kwargs = {"attention": True, **patch_arguments(policy)}

    def forward() -> Any:
        return model(**kwargs)

    def step(what: str) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{name}: {what}", refresh=False)
            bar.update(1)

    import layerzero_hf

    with layerzero_hf.patched(model, **patch_kwargs) as report, torch.no_grad():
        with recorder_on(report.orchestrator, keep_inputs=False) as recorder:
            output = forward()  # one recorded forward: which kernels ran
        step("kernels recorded")
        kernels = {op: dict(ks) for op, ks in recorder.kernels.items()}
        timing = measure(forward, device, warmup=warmup, repeats=repeats)  # timed without the recorder
        step("timed")
    return ArmResult(name, timing.median_us, timing.p10_us, timing.p90_us, kernels, output, timing.spread,
                     timing.noisy)
