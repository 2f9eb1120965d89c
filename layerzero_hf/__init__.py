"""LayerZero's Transformers integration.

``import layerzero_hf`` registers the ``"layerzero"`` attention implementation (so
``from_pretrained(..., attn_implementation="layerzero")`` works) and exposes per-instance patching of norms,
RoPE and MLP activations::

    import layerzero_hf
    report = layerzero_hf.patch(model)          # PatchReport: what was patched, what was left alone, arm
    with layerzero_hf.patched(model): ...       # patched for the block only
    layerzero_hf.unpatch(model)                 # every forward restored exactly

Architectures are data (``patches/<arch>.yaml``; unknown ones are detected and numerically self-checked).
Per-model rules and A/B experiments come from ``configs/models.yaml`` (or ``$LAYERZERO_HF_RULES``, or
``patch(config=...)``); a model loaded with ``attn_implementation="layerzero"`` gets its rules and arm on the
first attention call even without ``patch``. Each model dispatches through its own orchestrator
(``orchestrator_of(model)``, ``model_telemetry(model)``, ``model_arm(model)``).
"""

from __future__ import annotations

try:  # the attention function lives in its own module; patching works without it
    import layerzero_hf.attention  # noqa: F401
except ImportError:  # pragma: no cover - only while the attention module is absent
    pass

from layerzero_hf.loading import orchestrator_for
from layerzero_hf.patching import (
    is_patched,
    model_arm,
    model_telemetry,
    orchestrator_of,
    patch,
    patch_report,
    patched,
    unpatch,
)
from layerzero_hf.report import PatchedModule, PatchReport, SkippedModule
from layerzero_hf.rules import load_rules
from layerzero_hf.specs import builtin_specs, load_arch_spec

__all__ = [
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
    "patch_report",
    "patched",
    "unpatch",
]

try:  # kernel comparison for notebooks (layerzero_hf/compare.py); never breaks `import layerzero_hf`
    from layerzero_hf.compare import compare, compare_policies  # noqa: E402,F401
except Exception:  # pragma: no cover - only if the compare module itself is broken
    pass
