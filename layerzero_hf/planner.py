"""The planner: walks a model once and decides, module by module, what to bind and what to leave alone.

Nothing is bound here. For each module the planner finds the spec entry (or, in detect mode, the
structural proposal) that covers it, asks the registered kind's builder (:mod:`layerzero_hf.kinds`) for a
replacement, and records either the planned binding or the reason it was skipped. Binding happens in
:mod:`layerzero_hf.lifecycle` only after the whole plan succeeded, so a failure leaves the model untouched.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable

from torch import nn

from layerzero_hf import detect
from layerzero_hf.kinds import SkipModule, get_patch_kind
from layerzero_hf.report import PatchedModule, SkippedModule
from layerzero_hf.specs import ArchSpec, PatchSpec

__all__ = ["Planned", "Planner", "composable_hook"]


def composable_hook(module: nn.Module) -> bool:
    """An accelerate hook wrapping the class forward: its wrapper calls ``module._old_forward``, so a
    replacement bound there keeps the hook's device placement/offload around our forward."""
    old = module.__dict__.get("_old_forward")
    return (getattr(module, "_hf_hook", None) is not None and old is not None
            and getattr(old, "__func__", None) is type(module).forward and getattr(old, "__self__", None) is module)


@dataclass
class Planned:
    """One binding to make: ``fn`` goes on ``module`` at ``slot`` ("forward", or "_old_forward" under an
    accelerate hook)."""

    path: str
    module: nn.Module
    fn: Callable
    record: PatchedModule
    slot: str = "forward"


class Planner:
    """Decides, module by module, what to bind; runs the self-checks; collects skips with reasons.

    Also the :class:`~layerzero_hf.kinds.KindContext` the builders receive (``ops``, ``orch``,
    ``overlays``, ``cache``, :meth:`verdict`)."""

    def __init__(self, model: nn.Module, arch: ArchSpec | None, orch: str, *, detect_mode: bool,
                 self_check: str, kinds: Iterable[str], hooks: str = "skip",
                 include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()):
        from layerzero import ops

        self.ops = ops
        self.model = model
        self.arch = arch
        self.orch = orch
        self.detect_mode = detect_mode
        self.self_check = self_check
        self.kinds = frozenset(kinds)
        self.hooks = hooks
        self.include = include
        self.exclude = exclude
        self.planned: list[Planned] = []
        self.skipped: list[SkippedModule] = []
        self.attention: list[nn.Module] = []
        self.overlays: dict[int, types.ModuleType] = {}
        self.cache: dict[Any, Any] = {}
        self._class_verdict: dict[tuple, tuple[dict, str] | str] = {}  # per (kind, class, params) -> ok|reason

    def run(self) -> None:
        attention_classes = set(self.arch.attention_classes) if self.arch else set()
        for path, module in self.model.named_modules():
            if module is self.model:
                continue
            if type(module).__name__ in attention_classes or (
                    (self.arch is None or self.detect_mode) and detect.is_attention_module(module)):
                self.attention.append(module)
            if not self._selected(path):
                continue
            spec = self._spec_for(path, module)
            if spec is not None:
                if spec.kind in self.kinds:
                    self._plan(path, module, spec.kind, dict(spec.params), spec.name, verify=self.self_check == "all")
                continue
            if self.detect_mode:
                proposal = detect.propose(path, module)
                if proposal is not None and proposal.kind in self.kinds:
                    self._plan(path, module, proposal.kind, dict(proposal.params), "detected",
                               verify=self.self_check != "none", detected=True)

    def _selected(self, path: str) -> bool:
        """``PatchTargets.include``/``exclude``: module-path globs ("model.layers.0.*")."""
        if self.include and not any(fnmatchcase(path, p) for p in self.include):
            return False
        return not any(fnmatchcase(path, p) for p in self.exclude)

    def _spec_for(self, path: str, module: nn.Module) -> PatchSpec | None:
        if self.arch is None:
            return None
        for spec in self.arch.patches:
            if spec.match(path, module):
                return spec
        return None

    def _plan(self, path: str, module: nn.Module, kind: str, params: dict, source: str, *, verify: bool,
              detected: bool = False) -> None:
        cls = type(module).__name__
        slot = "forward"
        if "forward" in module.__dict__:
            if self.hooks == "compose" and composable_hook(module):
                slot = "_old_forward"
            else:
                hint = " (an accelerate hook: patch(..., hooks='compose') binds under it)" if (
                    composable_hook(module)) else ""
                self.skipped.append(SkippedModule(path, kind, cls, "already has an instance forward (another "
                                                  f"library's hook or patch); left alone so it keeps working{hint}"))
                return
        registered = get_patch_kind(kind)
        if registered is None:  # a kind unregistered after the spec was parsed
            self.skipped.append(SkippedModule(path, kind, cls, f"patch kind {kind!r} is not registered"))
            return
        try:
            built = registered.build(self, path, module, params, verify=verify, detected=detected)
        except SkipModule as why:
            self.skipped.append(SkippedModule(path, kind, cls, str(why)))
            return
        detail = built.detail + ("; under accelerate hook" if slot != "forward" else "")
        self.planned.append(Planned(path, module, built.fn, PatchedModule(path, kind, built.op, cls, detail, source),
                                    slot))

    def planned_spec(self, path: str, module: nn.Module) -> tuple[str, dict] | None:
        """``(kind, params)`` of the spec entry this patch applies to ``module`` at ``path``, or None when
        no entry matches, the path is not selected, its kind is not applied, or the module already has an
        instance forward (it will be left alone). For builders whose replacement stands in for a child's."""
        if not self._selected(path) or "forward" in module.__dict__:
            return None
        spec = self._spec_for(path, module)
        if spec is None or spec.kind not in self.kinds:
            return None
        return spec.kind, dict(spec.params)

    def verdict(self, key: tuple, compute: Callable[[], tuple[dict, str]]) -> tuple[dict, str]:
        """Self-check results per class (same code, same verdict), so a 32-layer model probes once."""
        if key not in self._class_verdict:
            try:
                self._class_verdict[key] = compute()
            except detect.CheckFailed as exc:
                self._class_verdict[key] = f"self-check failed: {exc}"
            except SkipModule as exc:
                self._class_verdict[key] = str(exc)
        verdict = self._class_verdict[key]
        if isinstance(verdict, str):
            raise SkipModule(verdict)
        return verdict
