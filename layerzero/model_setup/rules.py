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

from dataclasses import dataclass
from typing import Any, Mapping

from layerzero.model_setup.arms import Experiment
from layerzero.model_setup.matching import MATCH_KEYS, Matcher, Overrides
from layerzero.policy.merge import merge_policy

__all__ = ["MATCH_KEYS", "Matcher", "Overrides", "Resolution", "Rule", "RuleSet"]

@dataclass(frozen=True)
class Rule:
    name: str
    match: Matcher
    overrides: Overrides


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    experiments: tuple[Experiment, ...] = ()
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
