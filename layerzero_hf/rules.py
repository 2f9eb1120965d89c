"""Per-model rules and A/B experiments for Transformers models: the core rules read from an HF config.

The rules file format, matching, experiments and resolution live in :mod:`layerzero.model_setup` (shared
with the vLLM plugin). What is Transformers-specific is only how a model is described: its config's
``model_type``, ``architectures`` and ``_name_or_path`` (plus the model class when there is one), and the
rules file it reads by default: ``$LAYERZERO_HF_RULES``, else the shipped ``configs/models.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from layerzero.model_setup import (
    MATCH_KEYS,
    Arm,
    Experiment,
    Matcher,
    Overrides,
    Resolution,
    Rule,
    RuleSet,
    arm_distribution,
    parse_arms,
    parse_experiment,
    parse_rules,
    resolve,
)
from layerzero.model_setup import ModelFacts as _CoreFacts
from layerzero.model_setup import load_rules as _load_rules
from layerzero.policy.merge import merge_policy

__all__ = [
    "MATCH_KEYS",
    "RULES_ENV",
    "Arm",
    "Experiment",
    "Matcher",
    "ModelFacts",
    "Overrides",
    "Resolution",
    "Rule",
    "RuleSet",
    "arm_distribution",
    "hf_model_facts",
    "load_rules",
    "merge_policy",
    "parse_arms",
    "parse_experiment",
    "parse_rules",
    "resolve",
]

RULES_ENV = "LAYERZERO_HF_RULES"
_ORIGIN = f"patch(config=...) or ${RULES_ENV}"


def hf_model_facts(config: Any, model: Any = None) -> dict[str, Any]:
    """The facts rules match on, read from a Transformers config and the model class (listed first when
    the config does not name it), plus sizes and dtype for labels."""
    archs = tuple(getattr(config, "architectures", None) or ())
    if model is not None and type(model).__name__ not in archs:
        archs = (type(model).__name__, *archs)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None) or ""
    facts: dict[str, Any] = {"model_type": getattr(config, "model_type", None), "architectures": archs,
                             "name_or_path": str(name)}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            facts[key] = value
    dtype = getattr(config, "dtype", None)
    if dtype is not None:
        facts["dtype"] = str(dtype).replace("torch.", "")
    return facts


class ModelFacts(_CoreFacts):
    """:class:`layerzero.model_setup.ModelFacts` with a constructor from a Transformers config."""

    @classmethod
    def of(cls, config: Any, model: Any = None) -> "ModelFacts":
        core = _CoreFacts.from_mapping(hf_model_facts(config, model))
        return cls(core.model_type, core.architectures, core.name_or_path, core.extra)


def load_rules(source: str | os.PathLike[str] | Path | Mapping[str, Any] | RuleSet | None = None) -> RuleSet:
    """A RuleSet from a path, a mapping, a RuleSet, or (None) the file named by ``$LAYERZERO_HF_RULES``, else
    the shipped ``configs/models.yaml`` (so a server can change rules without code)."""
    return _load_rules(source, env_var=RULES_ENV, packaged=True, origin=_ORIGIN)
