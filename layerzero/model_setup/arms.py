"""A/B experiments: models split between arms (policies or kernel maps) to compare kernels in production.

The split is a hash of a seed and the model id, never ``random()``, so a model lands in the same arm in
every process and on every restart (sticky assignment).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.model_setup.rules import Matcher, Overrides

__all__ = ["Arm", "Experiment", "arm_distribution"]


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    overrides: Overrides


@dataclass(frozen=True)
class Experiment:
    name: str
    match: Matcher
    seed: str
    arms: tuple[Arm, ...]

    def assign(self, model_id: str) -> Arm:
        """Sticky arm of ``model_id``: a point in [0, 1) from SHA-256 of (seed, experiment, id) walks the
        cumulative weights. Same inputs, same arm, in every process."""
        digest = hashlib.sha256(f"{self.seed}\x00{self.name}\x00{model_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2.0**64
        total = sum(a.weight for a in self.arms)
        acc = 0.0
        for arm in self.arms:
            acc += arm.weight / total
            if point < acc:
                return arm
        return self.arms[-1]

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise ConfigValidationError(
            [ValidationProblem("arm", name, f"experiment {self.name!r} has arms {[a.name for a in self.arms]}")]
        )


def arm_distribution(experiment: Experiment, model_ids: Sequence[str]) -> dict[str, int]:
    """How many of ``model_ids`` each arm receives (for checking a split before rolling it out)."""
    counts = {a.name: 0 for a in experiment.arms}
    for mid in model_ids:
        counts[experiment.assign(mid).name] += 1
    return counts
