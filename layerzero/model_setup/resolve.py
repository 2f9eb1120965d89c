"""Which rules file applies, and what the rules, the experiment arm and the caller decide for one model.

The order is fixed so a caller can always override a rules file: matching rules in file order, then the
experiment arm, then the caller's ``policy``/``kernels`` (last wins).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from layerzero.config_files import load_yaml_file
from layerzero.data_files import MODEL_RULES, find_data_file
from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.model_setup.arms import Arm, Experiment
from layerzero.model_setup.facts import ModelFacts, as_facts
from layerzero.model_setup.parsing import Problems, kernel_checker, parse_arms, parse_overrides, parse_rules
from layerzero.model_setup.rules import Matcher, Resolution, RuleSet
from layerzero.policy.merge import merge_policy

__all__ = ["RULES_ENV", "load_rules", "resolve"]

RULES_ENV = "LAYERZERO_RULES"


def load_rules(
    source: str | os.PathLike[str] | Mapping[str, Any] | RuleSet | None = None,
    *,
    env_var: str | Sequence[str] | None = RULES_ENV,
    packaged: bool = True,
    origin: str | None = None,
) -> RuleSet:
    """A RuleSet from a path, a mapping, a RuleSet, or (None) the file named by ``env_var``, else the
    shipped ``configs/models.yaml`` when ``packaged`` (so a server can change rules without code), else an
    empty RuleSet. ``origin`` says in errors where a path came from (default: ``env_var``)."""
    if isinstance(source, RuleSet):
        return source
    if isinstance(source, Mapping):
        return parse_rules(source, "<mapping>")
    if origin is None:
        names = (env_var,) if isinstance(env_var, str) else tuple(env_var or ())
        origin = " or ".join(f"${n}" for n in names) or "the caller"
    path = Path(source) if source is not None else find_data_file(MODEL_RULES, env_var=env_var, packaged=packaged)
    if path is None:
        return RuleSet()
    if not path.exists():
        raise ConfigValidationError([ValidationProblem(
            "config", os.fspath(source) if source is not None else str(path),
            f"rules file not found (from {origin}); fix: check the path")])
    return parse_rules(load_yaml_file(path, f"rules file (from {origin})"), str(path))


def resolve(
    ruleset: RuleSet,
    facts: Mapping[str, Any] | ModelFacts,
    *,
    model_id: str | None = None,
    arms: Any = None,
    arm: str | None = None,
    experiment: str | None = None,
    policy: Mapping[str, Any] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> Resolution:
    """Apply matching rules, then the experiment arm, then the caller's policy/kernels (last wins).

    ``arms`` replaces the matched experiment's arms for this call (or defines an experiment named
    ``experiment`` or "patch" when none matches); ``arm`` forces an arm by name (no hashing).
    """
    known = as_facts(facts)
    merged: dict[str, Any] = {}
    kmap: dict[str, str] = {}
    names: list[str] = []
    for rule in ruleset.rules:
        if rule.match(known):
            merged = merge_policy(merged, rule.overrides.policy)
            kmap.update(rule.overrides.kernels)
            names.append(rule.name)
    exp = _pick_experiment(ruleset, known, experiment)
    if arms is not None:
        bad = Problems("patch(arms=...)")
        parsed = parse_arms(arms, "arms", bad, kernel_checker())
        if bad.items:
            raise ConfigValidationError(bad.items, "patch(arms=...)")
        name = exp.name if exp is not None else (experiment or "patch")
        seed = exp.seed if exp is not None else name
        exp = Experiment(name, Matcher(), seed, parsed)
    mid = model_id if model_id is not None else known.model_id()
    chosen: Arm | None = None
    if exp is not None:
        chosen = exp.arm(arm) if arm is not None else exp.assign(mid)
        merged = merge_policy(merged, chosen.overrides.policy)
        kmap.update(chosen.overrides.kernels)
    elif arm is not None:
        raise ConfigValidationError([ValidationProblem(
            "arm", arm, "no experiment matches this model; pass arms=... or add an experiment to the rules file")])
    if policy:
        merged = merge_policy(merged, policy)
    if kernels:
        bad = Problems("patch(kernels=...)")
        ov = parse_overrides({"kernels": dict(kernels)}, "kernels", bad, kernel_checker())
        if bad.items:
            raise ConfigValidationError(bad.items, "patch(kernels=...)")
        kmap.update(ov.kernels)
    return Resolution(merged, kmap, tuple(names), exp.name if exp else None, chosen.name if chosen else None, mid)


def _pick_experiment(ruleset: RuleSet, facts: ModelFacts, name: str | None) -> Experiment | None:
    if name is not None:
        for e in ruleset.experiments:
            if e.name == name:
                return e
        return None
    for e in ruleset.experiments:
        if e.match(facts):
            return e
    return None
