"""PolicyEngine: applies one :class:`Policy` to a list of candidate kernels.

The selection engine calls :meth:`PolicyEngine.decide` on selection-cache misses, so the per-call work is
kept to dictionary lookups: which rules can apply to an operation, which lock holds and whether a kernel
name matches a deny/allow glob are memoised on the (immutable) policy; conditions are precompiled
closures. Swapping policies is one reference assignment (:meth:`set_policy`), so a hot reload never shows
a reader half a config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Sequence

from layerzero.operations import OPERATIONS, matches
from layerzero.policy.loader import load_policy
from layerzero.policy.model import Policy
from layerzero.policy.schema import is_glob
from layerzero.registry import get_global_kernel_registry
from layerzero.registry.kernel_registry import KernelRegistry
from layerzero.registry.kernel_spec import KernelSpec
from layerzero.context.call_context import SelectionContext

# rank tiers: the first element of PolicyVerdict.rank
REJECTED, DEFAULT, RULED, LOCKED = -1, 0, 1, 2


def _cached(memo: dict, key: tuple, make: Callable[[], "PolicyVerdict"]) -> "PolicyVerdict":
    got = memo.get(key)
    if got is None:
        got = memo[key] = make()
    return got


def _for_operation(context: SelectionContext, operation: str | None) -> tuple[str | None, SelectionContext]:
    """The operation a helper call is about (the argument, else the context's) and the context carrying it:
    conditions on ``operation`` must see the operation being asked about."""
    op = operation if operation is not None else context.operation
    return op, context if op is None or context.operation == op else context.replace(operation=op)


@dataclass(frozen=True)
class PolicyVerdict:
    """What the policy says about one candidate.

    ``reason`` is why it was rejected, or, for an allowed kernel, a note worth showing in ``explain()``
    (e.g. "lock to X ignored: X cannot run"). ``rank`` sorts allowed kernels: higher is better; it is
    ``(tier, rule priority, built-in priority, -rule index)`` with tier 2 = locked, 1 = chosen by an
    applying rule, 0 = no rule, -1 = rejected."""

    kernel: KernelSpec
    allowed: bool
    reason: str | None
    rank: tuple
    rule_index: int | None = None
    locked: bool = False

    @property
    def kernel_id(self) -> str:
        return self.kernel.kernel_id


class PolicyEngine:
    """Applies a policy to candidate kernels. ``policy=None`` means :meth:`Policy.empty` (built-in
    priorities only)."""

    def __init__(self, policy: Policy | None = None, registry: KernelRegistry | None = None):
        self._policy = policy if policy is not None else Policy.empty()
        self._registry = registry
        self._kernel_ops: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}

    # ------------------------------------------------------------------ policy
    @property
    def policy(self) -> Policy:
        return self._policy

    def set_policy(self, policy: Policy) -> None:
        """Swap the policy (one reference assignment: readers see the old or the new one, never a mix)."""
        if not isinstance(policy, Policy):
            raise TypeError(f"set_policy needs a Policy, got {type(policy).__name__}; load one with load_policy()")
        self._policy = policy

    @property
    def registry(self) -> KernelRegistry:
        if self._registry is None:
            self._registry = get_global_kernel_registry()
        return self._registry

    def load(self, source: "str | os.PathLike[str] | Mapping[str, Any] | None") -> Policy:
        """Load, validate and install a policy; on ConfigValidationError the current policy stays."""
        policy = load_policy(source, self.registry)
        self._policy = policy
        return policy

    # ------------------------------------------------------------------ decisions
    def decide(
        self,
        operation: str | None,
        candidates: Sequence[KernelSpec],
        context: SelectionContext,
        runnable: Collection[str] | None = None,
    ) -> list[PolicyVerdict]:
        """One verdict per candidate, in the candidates' order.

        ``runnable`` is the set of kernel ids whose backend and constraints accept the context; it decides
        whether a lock can be honoured. When it is None the locked kernel counts as runnable if it is
        among the candidates. ``operation=None`` skips locks and lets a rule apply to a kernel when its
        glob matches any operation that kernel serves."""
        policy = self._policy
        best = self._winning_rules(policy, operation, context) if operation is not None else None

        locked_id: str | None = None
        lock_block: str | None = None
        lock_note: str | None = None
        lock_key = ""
        lock = policy.lock_for(operation)
        if lock is not None:
            lock_key, kid = lock
            if runnable is not None:
                can_run = kid in runnable
            else:
                can_run = any(c.kernel_id == kid for c in candidates)
            if can_run:
                locked_id = kid
            elif policy.defaults.lock_mode == "strict":
                lock_block = (
                    f"operation {operation} locked to {kid} (kernel_locks[{lock_key!r}], lock_mode strict), "
                    "which cannot run"
                )
            else:
                lock_note = f"lock to {kid} ignored: {kid} cannot run (kernel_locks[{lock_key!r}], lock_mode prefer)"

        # Verdicts are immutable and depend only on (policy, kernel, outcome), so they are built once per
        # policy and reused: a cache miss in selection then costs dict lookups, not object construction.
        memo = policy._memo
        verdicts: list[PolicyVerdict] = []
        append = verdicts.append
        for spec in candidates:
            base = memo.get(spec)
            if base is None:
                base = memo[spec] = self._static_verdicts(policy, spec)
            denied, excluded, plain = base
            if denied is not None:
                append(denied)
                continue
            kid = spec.kernel_id
            if lock_block is not None:
                append(_cached(memo, ("lock_block", spec, lock_block),
                               lambda: PolicyVerdict(spec, False, lock_block, (REJECTED, 0, spec.priority, 0))))
                continue
            if locked_id is not None:
                if kid == locked_id:
                    append(_cached(memo, ("locked", spec),
                                   lambda: PolicyVerdict(spec, True, None, (LOCKED, 0, spec.priority, 0), None, True)))
                else:
                    append(_cached(memo, ("locked_out", spec, operation), lambda: PolicyVerdict(
                        spec, False, f"operation {operation} is locked to {locked_id} (kernel_locks[{lock_key!r}])",
                        (REJECTED, 0, spec.priority, 0),
                    )))
                continue
            if excluded is not None:
                append(excluded)
                continue
            won = best.get(kid) if best is not None else self._winning_rule_for_kernel(policy, spec, context)
            if won is not None:
                append(_cached(memo, ("ruled", spec, won, lock_note), lambda: PolicyVerdict(
                    spec, True, lock_note, (RULED, won[0], spec.priority, -won[1]), won[1]
                )))
            elif lock_note is not None:
                append(_cached(memo, ("noted", spec, lock_note),
                               lambda: PolicyVerdict(spec, True, lock_note, plain.rank)))
            else:
                append(plain)
        return verdicts

    @staticmethod
    def _static_verdicts(
        policy: Policy, spec: KernelSpec
    ) -> tuple[PolicyVerdict | None, PolicyVerdict | None, PolicyVerdict]:
        """(denied verdict, not-in-allows verdict, plain allowed verdict) of one kernel under a policy."""
        names, prio = spec.names, spec.priority
        hit = policy.denied_by(names) if policy.denies else None
        denied = None
        if hit is not None:
            denied = PolicyVerdict(spec, False, f"denied by kernel_denies[{hit}] {policy.denies[hit]!r}",
                                   (REJECTED, 0, prio, 0))
        excluded = None
        if policy.allows and not policy.admitted(spec.kernel_id, names):
            excluded = PolicyVerdict(spec, False, f"not in kernel_allows [{', '.join(policy.allows)}]",
                                     (REJECTED, 0, prio, 0))
        return denied, excluded, PolicyVerdict(spec, True, None, (DEFAULT, 0, prio, 0))

    @staticmethod
    def _winning_rules(policy: Policy, operation: str, context: SelectionContext) -> dict[str, tuple[int, int]]:
        """kernel id -> (priority, index) of its best applying rule (highest priority, then earliest)."""
        best: dict[str, tuple[int, int]] = {}
        for rule in policy.rules_for(operation):
            if rule.holds(context):
                cur = best.get(rule.kernel)
                if cur is None or rule.priority > cur[0]:
                    best[rule.kernel] = (rule.priority, rule.index)
        return best

    def _operations_of(self, spec: KernelSpec) -> tuple[str, ...]:
        key = (spec.kernel_id, spec.operations)
        ops = self._kernel_ops.get(key)
        if ops is None:
            extra = [p for p in spec.operations if not is_glob(p) and p not in OPERATIONS]
            ops = tuple(op for op in OPERATIONS if spec.serves(op)) + tuple(extra)
            self._kernel_ops[key] = ops
        return ops

    def _winning_rule_for_kernel(
        self, policy: Policy, spec: KernelSpec, context: SelectionContext
    ) -> tuple[int, int] | None:
        ops = self._operations_of(spec)
        won: tuple[int, int] | None = None
        for rule in policy.rules:
            if rule.kernel != spec.kernel_id or not any(matches(rule.operation, op) for op in ops):
                continue
            if rule.holds(context) and (won is None or rule.priority > won[0]):
                won = (rule.priority, rule.index)
        return won

    # ------------------------------------------------------------------ seed-facing helpers
    def filter_kernels(
        self,
        candidates: Sequence[KernelSpec],
        context: SelectionContext,
        operation: str | None = None,
        check: bool = True,
    ) -> list[KernelSpec]:
        """The candidates the policy allows, best first.

        With ``check`` (default) kernels whose backend or constraints reject the context are dropped too,
        and that runnable set decides whether a lock holds: a custom dispatcher that picks
        ``max(score_kernels(filter_kernels(...)))`` then always gets a kernel that can run."""
        op, ctx = _for_operation(context, operation)
        runnable: set[str] | None = None
        if check:
            runnable = {k.kernel_id for k in candidates if not k.check(ctx)}
        verdicts = self.decide(op, candidates, ctx, runnable)
        kept = [v for v in verdicts if v.allowed and (runnable is None or v.kernel.kernel_id in runnable)]
        kept.sort(key=lambda v: v.rank, reverse=True)
        return [v.kernel for v in kept]

    def score_kernels(
        self,
        candidates: Sequence[KernelSpec],
        context: SelectionContext,
        operation: str | None = None,
        runnable: Collection[str] | None = None,
    ) -> list[tuple[KernelSpec, float]]:
        """``(kernel, score)`` in the candidates' order; higher is better and orders exactly like
        :attr:`PolicyVerdict.rank` of :meth:`decide` with the same arguments (scores are dense ranks from 1
        upwards; rejected kernels get -inf)."""
        op, ctx = _for_operation(context, operation)
        verdicts = self.decide(op, candidates, ctx, runnable)
        ranks = sorted({v.rank for v in verdicts if v.allowed})
        position = {r: float(i + 1) for i, r in enumerate(ranks)}
        return [(v.kernel, position[v.rank] if v.allowed else float("-inf")) for v in verdicts]

    def explain_rules(self, operation: str, context: SelectionContext) -> list[tuple[int, str, tuple[str, ...]]]:
        """``(rule index, description, failing conditions)`` for every rule of ``operation``, for
        ``explain()`` and the CLI: an empty tuple means the rule applies."""
        return [(r.index, r.describe(), r.why_not(context)) for r in self._policy.rules_for(operation)]

    def fallback_chain(self, operation: str) -> tuple[str, ...]:
        """Canonical kernel ids to fall back to for ``operation`` (see :meth:`Policy.fallback_chain`)."""
        return self._policy.fallback_chain(operation)

    def __repr__(self) -> str:
        return f"PolicyEngine({self._policy!r})"
