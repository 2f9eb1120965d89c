"""Measured-cost ranking: order a call's kernels by what they were measured to cost on this kind of device.

The policy still decides what may run and what must win: locks (tier 2) and applying rules (tier 1) keep
their places, and so do rule priorities. Only *within* one policy tier and rule priority does measurement
replace the hand-set priority, and only where it covers the whole group: when every kernel of the group
has a measured cost for the call's cost bucket they are ordered cheapest first (a cost is the device time,
or the host issue time where larger). When some have none (a backend that was not installed when the table
was measured: the shipped tables were swept without FlashInfer, whose every configuration costs minutes of
JIT), the unmeasured kernels keep their places in the policy's order (built-in priority), since times that
leave a candidate out say nothing about it, and the measured ones are ordered cheapest first among the
places they hold: installing one more backend neither loses the measurements of the others nor lets them
push the newcomer down. Where a noisy measurement could sit on either side of a neighbour, the group keeps
the policy's order. A call with no measurement at all is ranked exactly as
:class:`~layerzero.selection.ranking.PriorityRanking` ranks it.

Times come from merged cost tables (:mod:`layerzero.tuning.cost_table`: shipped < user < local), loaded
once per device class and kept; a ranking call does no file I/O. Answers are memoised per (operation,
cost bucket, candidate set), so a selection-cache miss costs a dict lookup once a bucket has been seen.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

from layerzero.selection.ranking import Candidate, RankedKernel, Ranking
from layerzero.tuning.cost_table import (
    CostBucket,
    CostTable,
    CostTableSource,
    Measurement,
    bucket_for,
    context_device_class,
    device_class,
)

if TYPE_CHECKING:
    from layerzero.context import SelectionContext

TableSource = Callable[[str], "CostTable | None"]
MEMO_LIMIT = 4096


def _decisive(ordered: Sequence[Measurement]) -> bool:
    """Whether an order by cost holds whatever the noise: next to a noisy measurement, the cheaper one's
    highest plausible cost stays below the costlier one's lowest."""
    for a, b in zip(ordered, ordered[1:]):
        if (a.noisy or b.noisy) and not a.cost_range_us[1] < b.cost_range_us[0]:
            return False
    return True


def _group(policy_rank: tuple) -> tuple:
    """The part of a policy rank that measurement may not override: (tier, rule priority)."""
    return tuple(policy_rank[:2]) if len(policy_rank) > 2 else ()


class MeasuredRanking:
    """Ranks by measured time within each (policy tier, rule priority) group; see the module docstring.

    ``table_source``: a :class:`CostTable` (used for every device), or a callable from a device class
    (``"sm90"``, ``"cpu"``) to a table or None (default: a :class:`CostTableSource`, which merges the
    shipped, user and local tables)."""

    name = "measured"

    def __init__(self, table_source: CostTable | TableSource | None = None):
        if isinstance(table_source, CostTable):
            table = table_source
            self._source: TableSource = lambda _cls: table
        else:
            self._source = table_source if table_source is not None else CostTableSource()
        self._memo: dict[Hashable, tuple[tuple[str, str, float | None], ...]] = {}
        self._lock = threading.Lock()

    @property
    def source(self) -> TableSource:
        return self._source

    def lookup(self, operation: str, context: "SelectionContext") -> tuple[CostBucket, dict[str, Measurement]] | None:
        """The measured bucket that applies to a call (exact or nearest) and its times by kernel id, or None;
        ``explain`` can name the bucket when it is not the call's own."""
        cls = context_device_class(context)
        bucket = bucket_for(operation, context) if cls is not None else None
        table = self._source(cls) if bucket is not None else None  # type: ignore[arg-type]
        return table.lookup(bucket) if table is not None else None  # type: ignore[arg-type]

    def times_for(self, operation: str, context: "SelectionContext") -> dict[str, Measurement]:
        """The measured times that apply to a call (exact or nearest bucket), by kernel id."""
        found = self.lookup(operation, context)
        return dict(found[1]) if found is not None else {}

    def rank(
        self, operation: str, context: "SelectionContext", candidates: Sequence[Candidate]
    ) -> list[RankedKernel]:
        key = (operation, context_device_class(context), bucket_for(operation, context),
               tuple(sorted((c.spec.kernel_id, c.policy_rank, c.registration_index) for c in candidates)))
        hit = self._memo.get(key)
        if hit is None:
            ranked = self._rank(operation, context, candidates)
            with self._lock:
                if len(self._memo) >= MEMO_LIMIT:
                    self._memo.clear()
                self._memo[key] = tuple((r.spec.kernel_id, r.source, r.measured_us) for r in ranked)
            return ranked
        specs = {c.spec.kernel_id: c.spec for c in candidates}  # the caller's spec objects, not memoised ones
        return [RankedKernel(specs[kid], source, us) for kid, source, us in hit]

    def _rank(self, operation: str, context: "SelectionContext", candidates: Sequence[Candidate]
              ) -> list[RankedKernel]:
        times = self.times_for(operation, context) if candidates else {}
        groups: dict[tuple, list[Candidate]] = {}
        for c in candidates:
            groups.setdefault(_group(c.policy_rank), []).append(c)
        out: list[RankedKernel] = []
        for group in sorted(groups, reverse=True):
            members = groups[group]
            timed = [c for c in members if not c.spec.is_reference]  # the fp32 references stay last resort
            ordered = sorted(timed, key=lambda c: (times[c.spec.kernel_id].cost_us, c.spec.kernel_id)) \
                if timed and all(c.spec.kernel_id in times for c in timed) else None
            if ordered and _decisive([times[c.spec.kernel_id] for c in ordered]):
                out.extend(RankedKernel(c.spec, "measured", times[c.spec.kernel_id].cost_us) for c in ordered)
                out.extend(RankedKernel(c.spec, "priority") for c in members if c.spec.is_reference)
                continue
            # Some member has no usable measurement (not installed when the table was measured, or dropped as
            # noisy): it keeps its place in the policy's order, and the measured members are ordered by cost
            # among the places they hold, if their order does not depend on noise. Otherwise the whole group
            # keeps the policy's order; the times that exist are still shown.
            ordered = sorted(members, key=lambda c: (_neg(c.policy_rank), c.registration_index, c.spec.kernel_id))
            measured = [c for c in ordered if not c.spec.is_reference and c.spec.kernel_id in times]
            by_cost = sorted(measured, key=lambda c: (times[c.spec.kernel_id].cost_us, c.spec.kernel_id))
            if len(by_cost) >= 2 and _decisive([times[c.spec.kernel_id] for c in by_cost]):
                places = iter(by_cost)
                ids = {c.spec.kernel_id for c in measured}
                ordered = [next(places) if c.spec.kernel_id in ids else c for c in ordered]
            else:
                ids = set()
            for c in ordered:
                found = times.get(c.spec.kernel_id)
                if c.spec.kernel_id in ids:
                    source = "measured"
                else:
                    source = "policy" if c.policy_rank and c.policy_rank[0] > 0 else "priority"
                out.append(RankedKernel(c.spec, source, found.cost_us if found is not None else None))
        return out

    def clear(self) -> None:
        """Forget memoised answers (and reload tables when the source can): new measurements apply."""
        invalidate = getattr(self._source, "invalidate", None)
        if invalidate is not None:
            invalidate()
        with self._lock:
            self._memo.clear()


def rank_note(ranked: RankedKernel) -> str:
    """What ``explain`` prints beside a ranked kernel: ``measured 181.3 us``, or the source that placed it."""
    if ranked.measured_us is not None:
        return f"{ranked.source} {ranked.measured_us:.1f} us"
    return ranked.source


def _neg(rank: tuple) -> tuple:
    return tuple(-x for x in rank)


_shared: dict[Hashable, MeasuredRanking] = {}
_shared_lock = threading.Lock()


def measured_ranking_for_device(device: Any = None, *, user_path: Any = None, scope: str | None = None
                                ) -> MeasuredRanking:
    """The process-wide measured ranking (one per user table path and scope), with the table of
    ``device``'s class loaded now rather than on the first selection. ``scope``: a model's config hash,
    whose own measurements (``layerzero_hf.tune``) go on top of the general ones."""
    key = (str(user_path) if user_path is not None else None, scope)
    with _shared_lock:
        ranking = _shared.get(key)
        if ranking is None:
            source = CostTableSource(user_path=user_path, scopes=(scope,) if scope else ())
            ranking = _shared[key] = MeasuredRanking(source)
    ranking.source(device_class(device))
    return ranking


def reset_measured_rankings() -> None:
    """Reload every shared ranking's tables on next use (after new local measurements were saved)."""
    with _shared_lock:
        rankings = list(_shared.values())
    for r in rankings:
        r.clear()


def default_ranking() -> "Ranking":
    """The ranking a dispatcher uses when its config names none: measured cost where the call's device
    class has measurements (the shipped, user and local cost tables, :mod:`layerzero.tuning.cost_table`),
    else, and always within the policy's locks and rules, the policy's rank then built-in priority. One
    process-wide instance, so its tables are loaded once."""
    return measured_ranking_for_device()
