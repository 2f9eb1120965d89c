"""Per-instance patching of a Transformers model: the public entry points, in one place.

The work is split by job: :mod:`layerzero_hf.patch_config` (the arguments: ``PatchTargets``,
``KernelChoice``), :mod:`layerzero_hf.kinds` and :mod:`layerzero_hf.builtin_kinds` (the registered patch
kinds and their parameter schemas), :mod:`layerzero_hf.replacements` (the replacement forwards),
:mod:`layerzero_hf.overlay` (per-instance globals for RoPE), :mod:`layerzero_hf.planner` (what to bind) and
:mod:`layerzero_hf.lifecycle` (binding, unpatching, reports, pickling).
"""

from __future__ import annotations

from layerzero_hf.kinds import Param, Replacement, SkipModule, default_patch_kinds, patch_kinds, register_patch_kind
from layerzero_hf.lifecycle import (  # noqa: F401 - _unpatched_on_load: what models pickled by earlier versions load
    _unpatched_on_load,
    is_patched,
    model_arm,
    model_telemetry,
    orchestrator_of,
    patch,
    patch_report,
    patched,
    unpatch,
)
from layerzero_hf.patch_config import KernelChoice, PatchConfigError, PatchTargets

__all__ = [
    "KernelChoice",
    "Param",
    "PatchConfigError",
    "PatchTargets",
    "Replacement",
    "SkipModule",
    "is_patched",
    "model_arm",
    "model_telemetry",
    "orchestrator_of",
    "patch",
    "default_patch_kinds",
    "patch_kinds",
    "patch_report",
    "patched",
    "register_patch_kind",
    "unpatch",
]
