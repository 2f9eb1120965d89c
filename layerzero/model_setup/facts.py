"""What per-model rules match on: a plain mapping of facts about a model, not a framework's config object.

Each integration converts its own config into this mapping (the Transformers integration from a
``PretrainedConfig`` and the model class, the vLLM plugin from the config of the model it is building), so
one rules file and one matcher serve both. The three facts rules match on today are typed fields; the
rest (hidden sizes, dtype, ...) ride along in ``extra`` for labels and future match keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

__all__ = ["FACT_KEYS", "ModelFacts", "as_facts"]

FACT_KEYS: tuple[str, ...] = ("model_type", "architectures", "name_or_path")


@dataclass(frozen=True)
class ModelFacts(Mapping[str, Any]):
    """A model's facts: ``model_type``, ``architectures`` (class names, most specific first), ``name_or_path``
    (the id the model was loaded from) and any ``extra`` facts. Reads as a mapping of all of them."""

    model_type: str | None = None
    architectures: tuple[str, ...] = ()
    name_or_path: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, facts: Mapping[str, Any]) -> "ModelFacts":
        """Facts from a mapping; ``architectures`` may be a string or a sequence, missing keys are empty."""
        archs = facts.get("architectures") or ()
        if isinstance(archs, str):
            archs = (archs,)
        model_type = facts.get("model_type")
        extra = {k: v for k, v in facts.items() if k not in FACT_KEYS}
        return cls(None if model_type is None else str(model_type), tuple(str(a) for a in archs),
                   str(facts.get("name_or_path") or ""), extra)

    def model_id(self) -> str:
        """The id an experiment hashes when the caller names none: the name or path, else the first class."""
        return self.name_or_path or (self.architectures or ("",))[0]

    def _as_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "architectures": self.architectures,
                "name_or_path": self.name_or_path, **self.extra}

    def __getitem__(self, key: str) -> Any:
        return self._as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_dict())

    def __len__(self) -> int:
        return len(FACT_KEYS) + len([k for k in self.extra if k not in FACT_KEYS])


def as_facts(facts: Mapping[str, Any] | ModelFacts) -> ModelFacts:
    """``facts`` as :class:`ModelFacts` (a mapping is converted, ModelFacts returned as is)."""
    return facts if isinstance(facts, ModelFacts) else ModelFacts.from_mapping(facts)
