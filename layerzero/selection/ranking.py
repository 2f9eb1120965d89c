"""Rankings: how the selection engine orders the kernels that passed the backend, constraint and policy
checks of a call.

The engine decides *which* kernels may run (availability, constraints, the policy's locks, denies and
allows); a :class:`Ranking` decides *in what order*. Each candidate arrives with its policy rank
``(tier, rule priority, built-in priority, -rule index)`` (higher is better; tier 2 = locked, 1 = chosen
by an applying rule, 0 = no rule). A ranking returns every candidate exactly once, best first, each as a
:class:`RankedKernel` that says why it sits where it does (``explain`` prints it).

Built in: :class:`PriorityRanking` (policy rank, then hand-set priority) and :class:`RegistrationOrder`
(static dispatch: the order kernels were registered). Measured-cost ranking lives in
:mod:`layerzero.selection.measured_ranking`. A ranking that must see the call itself to settle a bucket
(autotune times the candidates on the call's own tensors) also implements :class:`CallRanking`.

The dispatcher takes its ranking from ``DispatchConfig.ranking`` (None: :func:`layerzero.selection.measured_ranking.default_ranking`), so a new
ranking plugs in without touching the dispatcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Hashable, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from layerzero.context import SelectionContext
    from layerzero.registry import KernelSpec
    from layerzero.selection.plan import Plan


@dataclass(frozen=True)
class Candidate:
    """A kernel that may run this call, with the policy's verdict on it."""

    spec: "KernelSpec"
    policy_rank: tuple
    registration_index: int = 0


@dataclass(frozen=True)
class RankedKernel:
    """One kernel in ranked order. ``source`` names what decided its place ("priority", "policy",
    "measured", "registration order", ...); ``measured_us`` is the measured time behind it, if any."""

    spec: "KernelSpec"
    source: str = "priority"
    measured_us: float | None = None


@runtime_checkable
class Ranking(Protocol):
    """Orders a call's candidates. Must be deterministic for a given (operation, context, candidates):
    the engine caches its answer per bucket of calls."""

    name: str

    def rank(
        self, operation: str, context: "SelectionContext", candidates: Sequence[Candidate]
    ) -> list[RankedKernel]:
        ...


@runtime_checkable
class CallRanking(Ranking, Protocol):
    """A ranking that settles a bucket's order on its first call, from the call itself (autotune).

    ``rank`` gives the order before that (``explain``, calls that cannot be measured); ``rank_call`` gets
    the plan ``rank`` produced (policy fallback chains applied) and the call, and returns the plan to run
    and whether the dispatcher may cache it for the bucket (False: the next call of the bucket asks
    again, e.g. while torch.compile traces and timing is unsafe)."""

    def rank_call(
        self, plan: "Plan", key: Hashable, operation: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any]
    ) -> "tuple[Plan, bool]":
        ...


class PriorityRanking:
    """The policy's rank: locks, then applying rules by their priority, then built-in priority."""

    name = "priority"

    def rank(
        self, operation: str, context: "SelectionContext", candidates: Sequence[Candidate]
    ) -> list[RankedKernel]:
        ordered = sorted(candidates, key=lambda c: c.policy_rank, reverse=True)
        return [RankedKernel(c.spec, "policy" if c.policy_rank[0] > 0 else "priority") for c in ordered]


class RegistrationOrder:
    """Static dispatch: the order in which kernels were registered is the ranking."""

    name = "registration order"

    def rank(
        self, operation: str, context: "SelectionContext", candidates: Sequence[Candidate]
    ) -> list[RankedKernel]:
        ordered = sorted(candidates, key=lambda c: c.registration_index)
        return [RankedKernel(c.spec, self.name) for c in ordered]
