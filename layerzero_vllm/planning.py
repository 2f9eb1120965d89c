"""Decide, when vLLM builds a layer, which kernel it runs, and check that one can run at all.

A layer asks its model's orchestrator which kernel the policy chooses for a decode-sized call (1 token)
and a prefill-sized call (``max_num_batched_tokens``), with and without the fused residual where the op
has one, in the model's dtype and on vLLM's device. Three outcomes:

* every probe chooses vLLM's own kernel (the default: :mod:`layerzero_vllm.exact`): the layer keeps
  vLLM's forward method, bound by vLLM itself; no LayerZero code runs per call, so it cannot be slower;
* the policy chooses other kernels for some sizes: the layer dispatches through LayerZero per call
  (vLLM's kernel remains one of the candidates, so shape rules can still send calls to it);
* no kernel can run a probe (for example a policy denying every ``rms_norm`` kernel): PluginConfigError
  naming the user's file and field, raised while vLLM loads the model, before any request is served.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

from layerzero_vllm.exact import VLLM_KERNELS

logger = logging.getLogger("vllm.plugins.layerzero")

DEFAULT_PREFILL_TOKENS = 2048

Probe = Callable[[int, bool, torch.device], tuple[dict[str, Any], dict[str, Any]]]


@dataclass(frozen=True)
class LayerPlan:
    """What one layer runs: ``direct`` means vLLM's own forward, untouched; ``kernels`` are the policy's
    choices at the probe sizes (``{"decode": id, "prefill": id, ...}``)."""

    operation: str
    kernels: tuple[tuple[str, str], ...]
    direct: bool

    def describe(self) -> str:
        chosen = sorted({k for _, k in self.kernels})
        if self.direct:
            return f"{chosen[0]} (vLLM's own forward, called directly)"
        return "LayerZero dispatch per call: " + ", ".join(f"{size} -> {k}" for size, k in self.kernels)


_lock = threading.Lock()
_plans: dict[tuple, LayerPlan] = {}
_layers: dict[str, dict[str, Any]] = {}  # vLLM class name -> {"operation", "plans": {describe: layers}}


def prefill_tokens() -> int:
    """vLLM's ``max_num_batched_tokens`` for the model being built (the largest call a layer sees)."""
    try:
        from vllm.config import get_current_vllm_config_or_none

        cfg = get_current_vllm_config_or_none()
        n = getattr(getattr(cfg, "scheduler_config", None), "max_num_batched_tokens", None)
        return int(n) if n else DEFAULT_PREFILL_TOKENS
    except Exception:  # noqa: BLE001 - outside vLLM (unit tests): a representative size
        return DEFAULT_PREFILL_TOKENS


def device() -> torch.device:
    """The device vLLM runs the model on (probes are allocated there, so device constraints apply)."""
    try:
        from vllm.platforms import current_platform

        return torch.device(current_platform.device_type)
    except Exception:  # noqa: BLE001
        return torch.device("cpu")


def plan_layer(operation: str, key: tuple, probe: Probe, orchestrator: str | None, where: str,
               fused: bool) -> LayerPlan:
    """The plan for a layer (cached per ``key``: same op, shapes, dtype and orchestrator, same plan)."""
    full_key = (operation, orchestrator, *key)
    plan = _plans.get(full_key)
    if plan is not None:
        return plan
    from layerzero import ops
    from layerzero.errors import LayerZeroError

    orch = ops.get_orchestrator(orchestrator)
    dev = device()
    sizes = {"decode": 1, "prefill": prefill_tokens()}
    chosen: list[tuple[str, str]] = []
    for label, tokens in sizes.items():
        for with_residual in ((False, True) if fused else (False,)):
            inputs, kwargs = probe(tokens, with_residual, dev)
            name = f"{label}+residual" if with_residual else label
            try:
                spec = orch.select(operation, inputs, **kwargs)
            except LayerZeroError as exc:
                from layerzero_vllm.diagnose import no_kernel_error

                raise no_kernel_error(operation, f"{where}, {name} ({tokens} tokens)", exc) from exc
            chosen.append((name, spec.kernel_id))
    direct = all(k == VLLM_KERNELS.get(operation) for _, k in chosen)
    plan = LayerPlan(operation, tuple(chosen), direct)
    with _lock:
        _plans[full_key] = plan
    return plan


def forget(orchestrator: str) -> None:
    """Drop the cached plans of a released orchestrator (its model is gone; the name is never reused)."""
    with _lock:
        for key in [k for k in _plans if k[1] == orchestrator]:
            del _plans[key]


def record(vllm_class: str, plan: LayerPlan, runs_layerzero: bool, note: str = "") -> None:
    """Count a built layer under its plan; log the first layer of each (class, plan) pair."""
    text = plan.describe() if runs_layerzero or plan.direct else f"vLLM's own forward ({note})"
    with _lock:
        entry = _layers.setdefault(vllm_class, {"operation": plan.operation, "runs": {}})
        first = text not in entry["runs"]
        entry["runs"][text] = entry["runs"].get(text, 0) + 1
    if first:
        logger.info("LayerZero vLLM plugin: %s (%s) runs %s", vllm_class, plan.operation, text)


def layers() -> dict[str, dict[str, Any]]:
    """What the layers built in this process run: ``{vLLM class: {"operation", "runs": {what: layers}}}``."""
    with _lock:
        return {cls: {"operation": e["operation"], "runs": dict(e["runs"])} for cls, e in _layers.items()}


def summary() -> str:
    """One line naming every op the loaded model uses and what each runs (for the start-up log)."""
    parts = []
    for cls, entry in sorted(layers().items()):
        runs = "; ".join(f"{what} x{n}" for what, n in entry["runs"].items())
        parts.append(f"{cls} ({entry['operation']}): {runs}")
    return " | ".join(parts) if parts else "no replaceable op was built"
