"""Matching a model's facts against globs, and what a match contributes (a policy fragment, a kernel map).

Shared by rules (which models get which overrides) and A/B arms (what each arm changes), so neither
module depends on the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Iterable, Mapping

from layerzero.model_setup.facts import ModelFacts, as_facts

__all__ = ["MATCH_KEYS", "Matcher", "Overrides"]

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
