"""LayerZero's Transformers integration.

``import layerzero_hf`` registers the ``"layerzero"`` attention implementation (so
``from_pretrained(..., attn_implementation="layerzero")`` works) and exposes per-instance patching of norms,
RoPE and MLP activations::

    import layerzero_hf
    report = layerzero_hf.patch(model)          # PatchReport: what was patched, what was left alone, arm
    with layerzero_hf.patched(model): ...       # patched for the block only
    layerzero_hf.unpatch(model)                 # every forward restored exactly
    model = layerzero_hf.from_pretrained(path)  # load with attn_implementation="layerzero", then patch
    layerzero_hf.patch(model, layerzero_hf.PatchTargets(kinds=["rms_norm"]),   # what to patch
                       layerzero_hf.KernelChoice(kernels={"rms_norm": "torch_rms_norm"}))  # which kernels

Architectures are data (``patches/<arch>.yaml``; unknown ones are detected and numerically self-checked);
each patch kind is registered with its parameter schema (``register_patch_kind``).
Per-model rules and A/B experiments come from ``configs/models.yaml`` (or ``$LAYERZERO_HF_RULES``, or
``patch(rules=...)``); a model loaded with ``attn_implementation="layerzero"`` gets its rules and arm on the
first attention call even without ``patch``. Each model dispatches through its own orchestrator
(``orchestrator_of(model)``, ``model_telemetry(model)``, ``model_arm(model)``).
"""

from __future__ import annotations

try:
    import transformers as _transformers  # noqa: F401 - the integration target; fail here, clearly, without it
except ImportError as _e:
    raise ImportError(
        "layerzero_hf is LayerZero's Transformers integration and needs transformers>=5.17: "
        "pip install 'layerzero-dispatch[hf]'"
        f" ({_e})"
    ) from _e

import layerzero_hf.attention  # noqa: E402,F401 - registers attn_implementation="layerzero"
import layerzero_hf.builtin_kinds  # noqa: E402,F401 - registers the rms_norm, layer_norm, rope and mlp patch kinds
from layerzero_hf.auto import from_pretrained  # noqa: E402
from layerzero_hf.compare import compare, compare_policies  # noqa: E402
from layerzero_hf.model_orchestrators import orchestrator_for  # noqa: E402
from layerzero_hf.patching import (
    KernelChoice,
    Param,
    PatchConfigError,
    PatchTargets,
    is_patched,
    model_arm,
    model_telemetry,
    orchestrator_of,
    patch,
    patch_report,
    default_patch_kinds,
    patch_kinds,
    patched,
    register_patch_kind,
    unpatch,
)
from layerzero_hf.report import PatchedModule, PatchReport, SkippedModule
from layerzero_hf.rules import load_rules
from layerzero_hf.specs import builtin_specs, load_arch_spec
from layerzero_hf.tune import tune, tuned_ranking

__all__ = [
    "KernelChoice",
    "Param",
    "PatchConfigError",
    "PatchTargets",
    "compare",
    "compare_policies",
    "from_pretrained",
    "PatchReport",
    "PatchedModule",
    "SkippedModule",
    "builtin_specs",
    "is_patched",
    "load_arch_spec",
    "load_rules",
    "model_arm",
    "model_telemetry",
    "orchestrator_for",
    "orchestrator_of",
    "patch",
    "default_patch_kinds",
    "patch_kinds",
    "patch_report",
    "patched",
    "register_patch_kind",
    "tune",
    "tuned_ranking",
    "unpatch",
]
