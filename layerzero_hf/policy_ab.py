"""``compare_policies``: the same inputs through a model patched with policy A, then policy B.

The model-level A/B: which kernel ran each operation under each arm (recorded on one forward), how far
the outputs (logits) differ, and the forward timings from the shared harness
(:func:`layerzero.tuning.measure.measure`, with its noise flag). The model's previous patch state is
restored.

The result types and the output comparison are framework-neutral (:mod:`layerzero.model_setup.comparison`);
running an arm (patching, recording, the forward inputs) is what this module adds for Transformers.
"""

from __future__ import annotations

from typing import Any

import torch

from layerzero.model_setup import ArmResult, PolicyComparison, compare_outputs
from layerzero.tuning.measure import measure
from layerzero_hf.capture import forward_inputs, recorder_on
from layerzero_hf.policy_args import patch_arguments

__all__ = ["ArmResult", "PolicyComparison", "compare_policies"]


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
    return compare_outputs(arms[0], arms[1], _output_tensor(arms[0].output), _output_tensor(arms[1].output))


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
