"""Per-model rules: what a rules file says about the models it matches.

A fleet serves many models; which kernels suit one (a Gemma norm that must stay in fp32, a model whose
head_dim a backend cannot take) is a fact about that model, so it lives in a rules file matched on the
model's facts (:mod:`layerzero.model_setup.facts`) rather than in code.

File format (``configs/models.yaml``)::

    version: 1
    rules:
      - name: gemma-norms
        match: {model_type: [gemma, gemma2], architecture: "*ForCausalLM", name_or_path: "google/*"}
        policy: {kernel_denies: ["liger_rms_norm"]}      # a layerzero policy fragment, merged
        kernels: {rms_norm: torch_rms_norm}               # operation -> kernel id (becomes kernel_locks)
    experiments:
      - name: rms-norm-kernel
        match: {model_type: [llama]}
        seed: "2026-11"
        arms:
          - {name: control, weight: 50}
          - {name: reference, weight: 50, kernels: {rms_norm: reference_rms_norm}}

Match fields are AND-ed; a list means any of; strings are globs (``fnmatch``). Rules apply in file
order, later ones overriding earlier ones; then the experiment arm (:mod:`layerzero.model_setup.arms`);
then what the caller passes (:mod:`layerzero.model_setup.resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from layerzero.model_setup.facts import ModelFacts, as_facts
from layerzero.policy.merge import merge_policy

if TYPE_CHECKING:
    from layerzero.model_setup.arms import Experiment

__all__ = ["MATCH_KEYS", "Matcher", "Overrides", "Resolution", "Rule", "RuleSet"]

# match field -> the fact it reads (``architecture`` matches any of the model's architectures)
MATCH_KEYS: tuple[str, ...] = ("model_type", "architecture", "name_or_path")
_FACT_OF = {"model_type": "model_type", "architecture": "architectures", "name_or_path": "name_or_path"}


@dataclass(frozen=True)
class Matcher:
    """Globs per match field; a model matches when every non-empty field has a glob matching its fact."""

    model_type: tuple[str, ...] = ()
    architecture: tuple[str, ...] = ()
    name_or_path: tuple[str, ...] = ()

    def __call__(self, facts: Mapping[str, Any] | ModelFacts) -> bool:
        known = as_facts(facts)
        for key in MATCH_KEYS:
            patterns = getattr(self, key)
            if patterns and not _any_glob(patterns, _values(known[_FACT_OF[key]])):
                return False
        return True


def _values(fact: Any) -> list[str]:
    if fact is None:
        return [""]
    if isinstance(fact, (tuple, list)):
        return [str(v) for v in fact]
    return [str(fact)]


def _any_glob(patterns: Iterable[str], values: Iterable[str]) -> bool:
    vals = list(values)
    return any(fnmatchcase(v, p) for p in patterns for v in vals)


@dataclass(frozen=True)
class Overrides:
    """A policy fragment and a kernel map; what a rule or an arm contributes."""

    policy: Mapping[str, Any] = field(default_factory=dict)
    kernels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    name: str
    match: Matcher
    overrides: Overrides


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    experiments: "tuple[Experiment, ...]" = ()
    source: str | None = None


@dataclass(frozen=True)
class Resolution:
    """Everything the rules decided for one model: the merged policy fragment and kernel map, the rule
    names that matched, and the experiment arm (if any)."""

    policy: Mapping[str, Any]
    kernels: Mapping[str, str]
    rules: tuple[str, ...] = ()
    experiment: str | None = None
    arm: str | None = None
    model_id: str | None = None

    def policy_mapping(self) -> dict[str, Any] | None:
        """The effective policy as a mapping (the kernel map folded into ``kernel_locks``), or None when
        nothing overrides the default policy."""
        merged = merge_policy({}, self.policy)
        if self.kernels:
            merged = merge_policy(merged, {"kernel_locks": dict(self.kernels)})
        return merged or None
