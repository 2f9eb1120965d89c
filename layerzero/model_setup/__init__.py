"""Framework-neutral model setup: per-model rules, A/B arms and each model's own orchestrator.

Both integrations (Transformers and vLLM) describe a model as a mapping of facts
(:mod:`~layerzero.model_setup.facts`), resolve the rules file and experiment arm for it
(:mod:`~layerzero.model_setup.resolve`), build and register its orchestrator
(:mod:`~layerzero.model_setup.setup`), and tie that orchestrator's life to the model's through one
weak-reference lifecycle (:mod:`~layerzero.model_setup.bindings`). Only how a framework's config becomes
facts, and where the orchestrator name is stored, stays in the integrations.
"""

from __future__ import annotations

from layerzero.model_setup.arms import Arm, Experiment, arm_distribution
from layerzero.model_setup.bindings import SetupBindings, release_when_collected
from layerzero.model_setup.comparison import ArmResult, PolicyComparison, compare_outputs
from layerzero.model_setup.facts import FACT_KEYS, ModelFacts, as_facts
from layerzero.model_setup.parsing import parse_arms, parse_experiment, parse_rules
from layerzero.model_setup.policy_sources import (
    default_dispatch_config,
    default_policy_mapping,
    is_kernel_map,
    policy_mapping,
    policy_object,
)
from layerzero.model_setup.resolve import RULES_ENV, load_rules, resolve
from layerzero.model_setup.rules import MATCH_KEYS, Matcher, Overrides, Resolution, Rule, RuleSet
from layerzero.model_setup.setup import ModelSetup, Owner, build_setup, release

__all__ = [
    "FACT_KEYS",
    "MATCH_KEYS",
    "RULES_ENV",
    "Arm",
    "ArmResult",
    "Experiment",
    "Matcher",
    "ModelFacts",
    "ModelSetup",
    "Overrides",
    "Owner",
    "PolicyComparison",
    "Resolution",
    "Rule",
    "RuleSet",
    "SetupBindings",
    "arm_distribution",
    "as_facts",
    "build_setup",
    "compare_outputs",
    "default_dispatch_config",
    "default_policy_mapping",
    "is_kernel_map",
    "load_rules",
    "parse_arms",
    "parse_experiment",
    "parse_rules",
    "policy_mapping",
    "policy_object",
    "release",
    "release_when_collected",
    "resolve",
]
