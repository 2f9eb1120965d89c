"""Selection: from a call's context to a ranked plan of kernels, with reasons for every rejection.

candidates (registry) -> backend available? -> constraints hold? -> policy (locks, denies, allows, rules)
-> rank (the engine's :class:`~layerzero.selection.ranking.Ranking`; the one strategy point, so a new way
of ordering kernels needs no other change) -> the policy's fallback chain. The result is a :class:`Plan`: the chosen kernel first, then the kernels to fall back to in order
(the policy's fallback chain first, then the remaining ranked candidates). Plans are cached in a bounded
LRU keyed on a bucketed description of the call, so a hit costs one dict lookup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable

from layerzero.errors import LayerZeroError, NoKernelAvailableError
from layerzero.context.buckets import Bucketer
from layerzero.context.call_context import SelectionContext
from layerzero.selection.measured_ranking import default_ranking
from layerzero.selection.plan import Plan
from layerzero.selection.ranking import Candidate, RankedKernel, Ranking

if TYPE_CHECKING:
    from layerzero.policy import PolicyEngine
    from layerzero.registry import BackendRegistry, KernelRegistry, KernelSpec

BUCKETED_FIELDS = ("seq_len", "seq_len_q", "seq_len_k", "batch_size")
@dataclass(frozen=True)
class CandidateReport:
    """One candidate in ``explain``. For an eligible kernel ``source`` says what decided its place (the
    ranking's word: "policy", "priority", "measured", ...) and ``measured_us`` the time behind it, if any."""

    kernel_id: str
    backend: str
    priority: int
    status: str  # "chosen", "eligible" (would run as a fallback) or "rejected"
    reasons: tuple[str, ...] = ()
    rank: int | None = None
    source: str | None = None
    measured_us: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "kernel_id": self.kernel_id,
            "backend": self.backend,
            "priority": self.priority,
            "status": self.status,
            "reasons": list(self.reasons),
            "rank": self.rank,
            "source": self.source,
        }
        if self.measured_us is not None:
            out["measured_us"] = self.measured_us
        return out


@dataclass(frozen=True)
class Explanation:
    """Why each candidate was chosen or not, for ``explain()``, the CLI and error messages."""

    operation: str
    context: SelectionContext
    chosen: str | None
    candidates: tuple[CandidateReport, ...]
    fallback_order: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def rejected(self) -> dict[str, tuple[str, ...]]:
        return {c.kernel_id: c.reasons for c in self.candidates if c.status == "rejected"}

    def __getitem__(self, kernel_id: str) -> CandidateReport:
        for c in self.candidates:
            if c.kernel_id == kernel_id:
                return c
        raise KeyError(kernel_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "context": {k: v for k, v in self.context.as_dict().items() if v is not None},
            "chosen": self.chosen,
            "fallback_order": list(self.fallback_order),
            "notes": list(self.notes),
            "candidates": [c.as_dict() for c in self.candidates],
        }

    def __str__(self) -> str:
        lines = [f"{self.operation}: chosen {self.chosen or '(none)'}", f"  context: {self.context}"]
        for c in self.candidates:
            mark = {"chosen": "*", "eligible": "+", "rejected": "-"}[c.status]
            why = f"  ({'; '.join(c.reasons)})" if c.reasons else ""
            src = f" by={c.source}" if c.source else ""
            if c.measured_us is not None:
                src += f" measured={c.measured_us:.1f}us"
            lines.append(f"  {mark} {c.kernel_id:<34} {c.status:<9} prio={c.priority}{src}{why}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


class SelectionEngine:
    """Ranks kernels for a context under one policy and one ranking. Immutable apart from its cache: a new
    policy means a new engine (that is how a policy swap, hot reload included, is atomic)."""

    def __init__(
        self,
        kernel_registry: "KernelRegistry",
        backend_registry: "BackendRegistry",
        policy_engine: "PolicyEngine | None" = None,
        cache_size: int = 4096,
        enable_cache: bool = True,
        include_fallbacks: bool = True,
        ranking: Ranking | None = None,
    ):
        self.kernels = kernel_registry
        self.backends = backend_registry
        self.policy = policy_engine
        self.cache_size = max(1, int(cache_size))
        self._touch_above = self.cache_size // 2
        self.enable_cache = enable_cache
        self.include_fallbacks = include_fallbacks
        self.ranking: Ranking = ranking if ranking is not None else default_ranking()
        self._cache: OrderedDict[Hashable, Plan] = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0
        self._generation = kernel_registry.generation
        self.bucketers = self._make_bucketers()

    # ------------------------------------------------------------------ buckets
    def _make_bucketers(self) -> dict[str, Bucketer]:
        out = {}
        limits = [k.constraints.max_seq_len for k in self.kernels.all() if k.constraints.max_seq_len]
        for name in BUCKETED_FIELDS:
            values: list[float] = []
            if self.policy is not None:
                pol = self.policy.policy
                values.extend(pol.thresholds(name))
                if name in ("seq_len_q", "seq_len_k"):
                    values.extend(pol.thresholds("seq_len"))
                if name == "seq_len":
                    values.extend(pol.thresholds("seq_len_q"))
            bounds = Bucketer.boundaries_for(values)
            if name != "batch_size":
                bounds.extend(limits)
            out[name] = Bucketer(bounds)
        return out

    # ------------------------------------------------------------------ cache
    def lookup(self, key: Hashable) -> Plan | None:
        """The hot path: one dict lookup (plus an LRU touch)."""
        cache = self._cache
        plan = cache.get(key)
        if plan is not None and len(cache) > self._touch_above:
            # Recency only matters once eviction is near: below half capacity a hit skips the LRU touch.
            try:
                cache.move_to_end(key)
            except KeyError:  # evicted by another thread between get and move
                pass
        return plan

    def store(self, key: Hashable, plan: Plan) -> None:
        if not self.enable_cache:
            return
        with self._lock:
            cache = self._cache
            cache[key] = plan
            cache.move_to_end(key)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)

    @property
    def cache_len(self) -> int:
        return len(self._cache)

    def bucket_context(self, ctx: SelectionContext) -> SelectionContext:
        """The context with its varying sizes replaced by bucket ids: equal for every call that must get
        the same plan, so it can key the cache when a caller passes an explicit context."""
        changes = {}
        for name, b in self.bucketers.items():
            v = getattr(ctx, name)
            if v is not None:
                changes[name] = b(v)
        return ctx.replace(**changes) if changes else ctx

    # ------------------------------------------------------------------ selection
    def _evaluate(self, operation: str, ctx: SelectionContext):
        if ctx.operation != operation:
            ctx = ctx.replace(operation=operation)
        candidates = self.kernels.get_by_operation(operation)
        reasons: dict[str, list[str]] = {}
        runnable: list[KernelSpec] = []
        for spec in candidates:
            r = spec.check(ctx, self.backends)
            reasons[spec.kernel_id] = r
            if not r:
                runnable.append(spec)
        index = {s.kernel_id: i for i, s in enumerate(candidates)}
        notes: list[str] = []
        eligible: list[Candidate] = []
        if self.policy is not None:
            runnable_ids = {s.kernel_id for s in runnable}
            verdicts = self.policy.decide(operation, candidates, ctx, runnable=runnable_ids)
            for v in verdicts:
                kid = v.kernel.kernel_id
                if not v.allowed:
                    if kid in runnable_ids:
                        reasons[kid] = [v.reason or "rejected by policy"]
                    elif v.reason:
                        reasons[kid] = reasons[kid] + [v.reason]
                elif kid in runnable_ids:
                    eligible.append(Candidate(v.kernel, v.rank, index[kid]))
                    if v.reason:
                        notes.append(f"{kid}: {v.reason}")
        else:  # no policy: every runnable kernel at the default tier, its built-in priority deciding
            eligible = [Candidate(spec, (0, 0, spec.priority, 0), index[spec.kernel_id]) for spec in runnable]
        ranked = self._rank(operation, ctx, eligible)
        if ranked and self.include_fallbacks and self.policy is not None:
            chain = self.policy.fallback_chain(operation)
            if chain:
                by_id = {r.spec.kernel_id: r for r in ranked}
                head = ranked[0]
                chained = [by_id[k] for k in chain if k in by_id and k != head.spec.kernel_id]
                rest = [r for r in ranked[1:] if all(r is not c for c in chained)]
                ranked = [head, *chained, *rest]
        return ctx, candidates, reasons, ranked, notes

    def _rank(self, operation: str, ctx: SelectionContext, eligible: list[Candidate]) -> list[RankedKernel]:
        """The ranking's order, checked: every eligible kernel exactly once (a ranking that drops or adds
        one would silently change what may run)."""
        if not eligible:
            return []
        ranked = list(self.ranking.rank(operation, ctx, eligible))
        got = [r.spec.kernel_id for r in ranked]
        if len(got) != len(eligible) or set(got) != {c.spec.kernel_id for c in eligible}:
            raise LayerZeroError(
                f"ranking {getattr(self.ranking, 'name', type(self.ranking).__name__)!r} returned {got} for "
                f"{operation}, expected each of {[c.spec.kernel_id for c in eligible]} exactly once")
        return ranked

    def plan(self, operation: str, ctx: SelectionContext) -> Plan:
        """Rank the kernels for ``ctx`` (no cache). Raises NoKernelAvailableError with every reason."""
        ctx, candidates, reasons, ranked, _ = self._evaluate(operation, ctx)
        if not ranked:
            raise NoKernelAvailableError(operation, [(s.kernel_id, reasons[s.kernel_id]) for s in candidates], ctx)
        return Plan(operation, tuple(r.spec for r in ranked), ctx)

    def select(self, operation: str, ctx: SelectionContext) -> "KernelSpec":
        key = (operation, self.bucket_context(ctx))
        plan = self.lookup(key)
        if plan is None:
            self.misses += 1
            plan = self.plan(operation, ctx)
            self.store(key, plan)
        return plan.primary

    def explain(self, operation: str, ctx: SelectionContext) -> Explanation:
        ctx, candidates, reasons, ranked, notes = self._evaluate(operation, ctx)
        order = [r.spec for r in ranked]
        position = {r.spec.kernel_id: (i, r) for i, r in enumerate(ranked)}
        reports = []
        for spec in candidates:
            kid = spec.kernel_id
            if kid in position:
                i, r = position[kid]
                status = "chosen" if i == 0 else "eligible"
                reports.append(CandidateReport(kid, spec.backend, spec.priority, status, (), i, r.source, r.measured_us))
            else:
                reports.append(CandidateReport(kid, spec.backend, spec.priority, "rejected", tuple(reasons[kid])))
        reports.sort(key=lambda c: (c.rank is None, c.rank if c.rank is not None else 0, -c.priority))
        return Explanation(
            operation,
            ctx,
            order[0].kernel_id if order else None,
            tuple(reports),
            tuple(s.kernel_id for s in order),
            tuple(notes),
        )

    @property
    def is_stale(self) -> bool:
        """True when kernels were registered after this engine was built (its cache may miss them)."""
        return self.kernels.generation != self._generation

