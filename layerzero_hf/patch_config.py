"""``patch()``'s arguments as two objects: what to patch (:class:`PatchTargets`) and how kernels are chosen
(:class:`KernelChoice`).

Fifteen loose keywords mixed two questions (which modules to replace; which kernels serve them) and one of
them, ``config=``, meant the rules file here but the Transformers config everywhere else. The objects are
frozen and validated on construction, so a bad value fails where it was written, naming the field, the
value and the fix (:class:`PatchConfigError`, a ``ConfigValidationError`` that is also a ``PatchError``).
The old keywords still work: :func:`resolve_arguments` maps each onto its field, and ``config=`` (now
``rules=``) warns with a ``DeprecationWarning``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from layerzero.errors import ConfigValidationError, PatchError, ValidationProblem
from layerzero_hf.kinds import default_patch_kinds, patch_kinds
from layerzero_hf.specs import ArchSpec

__all__ = ["HOOK_MODES", "SELF_CHECK_MODES", "KernelChoice", "PatchConfigError", "PatchTargets",
           "resolve_arguments"]

SELF_CHECK_MODES: tuple[str, ...] = ("unknown", "all", "none")
HOOK_MODES: tuple[str, ...] = ("skip", "compose")


class PatchConfigError(ConfigValidationError, PatchError):
    """Invalid ``patch()`` arguments: every problem, each with field, value and fix. Both a
    ConfigValidationError (like invalid rules or specs) and a PatchError (like any refused patch)."""


class _Problems:
    """Collects problems for one object; ``source`` names it in messages (``PatchTargets``)."""

    def __init__(self, source: str):
        self.source = source
        self.items: list[ValidationProblem] = []

    def add(self, fld: str, value: Any, message: str) -> None:
        self.items.append(ValidationProblem(fld, value, message, self.source))

    def flag(self, fld: str, value: Any, *, optional: bool = False) -> None:
        if not (isinstance(value, bool) or (optional and value is None)):
            self.add(fld, value, "expected True or False" + (" or None" if optional else ""))

    def choice(self, fld: str, value: Any, choices: tuple[str, ...]) -> None:
        if value not in choices:
            self.add(fld, value, f"use one of {', '.join(choices)}")

    def name(self, fld: str, value: Any) -> None:
        if value is not None and not (isinstance(value, str) and value):
            self.add(fld, value, "expected a non-empty string or None")

    def strings(self, fld: str, value: Any, what: str) -> tuple[str, ...]:
        items = (value,) if isinstance(value, str) else value
        try:
            items = tuple(items)
        except TypeError:
            items = (value,)
        if not all(isinstance(v, str) and v for v in items):
            self.add(fld, value, f"expected a list of {what} (strings)")
            return ()
        return items

    def raise_any(self) -> None:
        if self.items:
            raise PatchConfigError(self.items, self.source)


@dataclass(frozen=True)
class PatchTargets:
    """What to patch.

    ``kinds``: the patch kinds to apply (None = every registered kind but the opt-in ones: rms_norm,
    layer_norm, rope, mlp, residual_norm, and any registered with ``register_patch_kind``).
    ``include``/``exclude``: module-path globs (``"model.layers.0.*"``) limiting which modules are
    considered (empty include = all). ``spec``: an ArchSpec, a YAML path or a mapping replacing the shipped
    architecture spec. ``detect``: None = structural
    detection only when no spec covers the model type; True = also for modules the spec does not cover;
    False = never. ``verify``: numerical self-checks, "unknown" (detected replacements only), "all" (spec'd
    ones too, once per class) or "none" (detected ones are still checked). ``hooks``: "compose" (bind under
    accelerate dispatch hooks) or "skip" (leave every module with an instance forward alone).
    ``attention``: switch the model to ``attn_implementation="layerzero"`` (restored by ``unpatch``).
    ``strict``: a requested kernel that cannot run here raises instead of warning.
    """

    kinds: tuple[str, ...] | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    spec: Any = None
    detect: bool | None = None
    verify: str = "unknown"
    hooks: str = "compose"
    attention: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        bad = _Problems("PatchTargets")
        if self.kinds is not None:
            kinds = bad.strings("kinds", self.kinds, "patch kinds")
            unknown = sorted(set(kinds) - set(patch_kinds()))
            if unknown:
                bad.add("kinds", unknown, f"unknown patch kind(s); use any of {', '.join(patch_kinds())} (or "
                        "register one with layerzero_hf.register_patch_kind)")
            object.__setattr__(self, "kinds", tuple(sorted(set(kinds))))
        object.__setattr__(self, "include", bad.strings("include", self.include, "module-path globs"))
        object.__setattr__(self, "exclude", bad.strings("exclude", self.exclude, "module-path globs"))
        if self.spec is not None and not isinstance(self.spec, (ArchSpec, str, os.PathLike, Mapping)):
            bad.add("spec", type(self.spec).__name__, "expected an ArchSpec, a YAML path or a mapping "
                    "(layerzero_hf.load_arch_spec loads one)")
        bad.flag("detect", self.detect, optional=True)
        bad.choice("verify", self.verify, SELF_CHECK_MODES)
        bad.choice("hooks", self.hooks, HOOK_MODES)
        bad.flag("attention", self.attention)
        bad.flag("strict", self.strict)
        bad.raise_any()

    @property
    def selected_kinds(self) -> tuple[str, ...]:
        """The kinds this patch applies (every registered one but the opt-in ones when ``kinds`` is None)."""
        return default_patch_kinds() if self.kinds is None else self.kinds


@dataclass(frozen=True)
class KernelChoice:
    """How kernels are chosen for the patched model.

    ``rules``: per-model rules (``configs/models.yaml`` format: a path, a mapping or a RuleSet; None = the
    shipped file or ``$LAYERZERO_HF_RULES``; False = no rules). ``policy``: a policy path, mapping or
    ``Policy`` merged over the rules. ``kernels``: operation -> kernel id, overriding both. ``arms``:
    replaces the matched experiment's arms; ``arm`` forces one; ``experiment``/``model_id`` select and seed
    the experiment. ``dispatch_config``: options for the model's orchestrator.
    """

    rules: Any = None
    policy: Any = None
    kernels: Mapping[str, str] | None = None
    arms: Any = None
    arm: str | None = None
    experiment: str | None = None
    model_id: str | None = None
    dispatch_config: Any = None

    def __post_init__(self) -> None:
        bad = _Problems("KernelChoice")
        if isinstance(self.rules, (bool, int, float)) and self.rules is not False:
            bad.add("rules", self.rules, "use a rules file path, a mapping, a RuleSet, None (the shipped rules) "
                    "or False (no rules)")
        if isinstance(self.policy, (bool, int, float)):
            bad.add("policy", self.policy, "use a policy file path, a mapping, a layerzero.policy.Policy or None")
        if self.kernels is not None:
            if not isinstance(self.kernels, Mapping):
                bad.add("kernels", self.kernels, 'expected a mapping operation -> kernel id, e.g. '
                        '{"rms_norm": "torch_rms_norm"}')
            else:
                object.__setattr__(self, "kernels", dict(self.kernels))
        for fld in ("arm", "experiment", "model_id"):
            bad.name(fld, getattr(self, fld))
        bad.raise_any()


# ---------------------------------------------------------------------------------------------- legacy keywords
TARGET_KEYWORDS: dict[str, str] = {"only": "kinds", "include": "include", "exclude": "exclude", "spec": "spec",
                                   "detect_unknown": "detect", "self_check": "verify", "hooks": "hooks",
                                   "attention": "attention", "strict": "strict"}
CHOICE_KEYWORDS: dict[str, str] = {f.name: f.name for f in dataclasses.fields(KernelChoice)}


def resolve_arguments(where: str, targets: Any, choice: Any, keywords: Mapping[str, Any], *,
                      stacklevel: int = 3) -> tuple[PatchTargets, KernelChoice]:
    """``(targets, choice)`` from ``patch()``'s arguments: the objects (or defaults), with each keyword
    argument (``only=``, ``kernels=``, ...) replacing its field. ``config=`` and a positional rules file are
    the old spellings of ``rules=`` (DeprecationWarning). Keyword problems name the keyword the caller used."""
    keywords = dict(keywords)
    if targets is not None and not isinstance(targets, PatchTargets):
        _deprecated(where, f"{where}(model, <rules>) with the rules positional", stacklevel)
        keywords = _rename_config(where, {"config": targets, **keywords})
        targets = None
    if "config" in keywords:
        _deprecated(where, f"{where}(config=...)", stacklevel)
        keywords = _rename_config(where, keywords)
    unknown = sorted(set(keywords) - set(TARGET_KEYWORDS) - set(CHOICE_KEYWORDS))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {unknown}; it takes targets=PatchTargets(...), "
                        f"choice=KernelChoice(...) or the keywords {sorted({*TARGET_KEYWORDS, *CHOICE_KEYWORDS})}")
    if choice is not None and not isinstance(choice, KernelChoice):
        raise PatchConfigError([ValidationProblem("choice", type(choice).__name__, "expected a KernelChoice "
                                                  "(layerzero_hf.KernelChoice(rules=..., kernels=...)) or None",
                                                  f"{where}()")], f"{where}()")
    targets = _replaced(where, targets or PatchTargets(), TARGET_KEYWORDS, keywords)
    choice = _replaced(where, choice or KernelChoice(), CHOICE_KEYWORDS, keywords)
    return targets, choice


def _deprecated(where: str, what: str, stacklevel: int) -> None:
    warnings.warn(f"{what} is deprecated: pass the rules file as {where}(model, rules=...) (or "
                  "choice=KernelChoice(rules=...)); 'config' now means only the Transformers config",
                  DeprecationWarning, stacklevel=stacklevel + 1)


def _rename_config(where: str, keywords: dict[str, Any]) -> dict[str, Any]:
    if "rules" in keywords:
        raise PatchConfigError([ValidationProblem("config", keywords["config"], "given together with rules=; "
                                                  "pass the rules file once, as rules=", f"{where}()")], f"{where}()")
    keywords["rules"] = keywords.pop("config")
    return keywords


def _replaced(where: str, obj: Any, names: Mapping[str, str], keywords: Mapping[str, Any]) -> Any:
    """``obj`` with the fields given as keywords replaced (validated again); problems are relabelled with the
    keyword the caller wrote (``only``, not ``kinds``)."""
    given = {names[k]: v for k, v in keywords.items() if k in names}
    if not given:
        return obj
    try:
        return dataclasses.replace(obj, **given)
    except PatchConfigError as exc:
        labels = {f: k for k, f in names.items() if k in keywords}
        problems = [ValidationProblem(labels[p.field], p.value, p.message, f"{where}({labels[p.field]}=...)")
                    if p.field in labels else p for p in exc.problems]
        raise PatchConfigError(problems, f"{where}()") from None
