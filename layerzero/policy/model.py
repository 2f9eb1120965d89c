"""The validated, immutable policy.

A :class:`Policy` is built only by the loader (or :meth:`Policy.empty`), holds canonical kernel ids, and
never changes: a reload builds a new object and the engine swaps one reference, so a reader never sees
half a config. Lookups that depend only on the operation string (which rules may apply, which lock
holds, the fallback chain) are memoised on the object because selection-cache misses call them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Callable, Mapping

from layerzero.operations import matches
from layerzero.policy.conditions import Condition
from layerzero.policy.schema import DEFAULT_LOCK_MODE, DEFAULT_PRIORITY, DEFAULT_VERSION
from layerzero.context.call_context import SelectionContext

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_UNSET = object()  # a memo miss (None is a valid memoised answer)


@dataclass(frozen=True)
class PolicyDefaults:
    """``defaults:``. ``fallback_policy`` is a canonical kernel id appended to every fallback chain of an
    operation it serves; ``default_priority`` is the priority of rules that give none; ``lock_mode`` says
    what a lock on a kernel that cannot run does ("prefer": ignore the lock, "strict": run nothing)."""

    fallback_policy: str | None = None
    default_priority: int = DEFAULT_PRIORITY
    lock_mode: str = DEFAULT_LOCK_MODE


@dataclass(frozen=True)
class DispatchRule:
    """One ``dispatch_rules`` entry. ``kernel`` is canonical; ``kernel_name`` is the spelling in the file."""

    index: int
    operation: str
    conditions: tuple[Condition, ...]
    kernel: str
    priority: int
    kernel_name: str = ""

    def matches_operation(self, operation: str) -> bool:
        return matches(self.operation, operation)

    def holds(self, context: SelectionContext) -> bool:
        """All conditions hold for ``context`` (the operation is checked separately)."""
        for cond in self.conditions:
            if not cond.test(context):
                return False
        return True

    def why_not(self, context: SelectionContext) -> tuple[str, ...]:
        """Every condition that fails for ``context`` (empty: the rule's conditions hold)."""
        return tuple(r for r in (c.why_not(context) for c in self.conditions) if r is not None)

    def describe(self) -> str:
        conds = " and ".join(c.describe() for c in self.conditions) or "always"
        return f"dispatch_rules[{self.index}]: {self.operation} when {conds} -> {self.kernel} (priority {self.priority})"


def names_match(globs: tuple[str, ...], names: tuple[str, ...]) -> int | None:
    """Index of the first glob matching any of a kernel's names (id and aliases), or None: denies and
    allows match aliases too, so a kernel cannot slip past a deny under another name."""
    for i, g in enumerate(globs):
        for n in names:
            if n == g or fnmatchcase(n, g):
                return i
    return None


@dataclass(frozen=True, eq=False)
class Policy:
    """A validated policy (see :mod:`layerzero.policy` for the semantics).

    ``locks`` maps operation globs to canonical kernel ids in file order; ``fallback_chains`` maps
    operation names or globs to tuples of canonical ids; ``explicit_kernels`` is every kernel the config
    names (locks, rule kernels, chains, ``defaults.fallback_policy``), which ``kernel_allows`` always
    admits. ``fallback_operations`` are the operation patterns the fallback kernel serves (None: unknown,
    treat as all; empty when the fallback kernel is denied). ``warnings`` lists parts of the config that
    cannot take effect (a rule or chain entry naming a denied kernel). ``config_hash`` is the sha256 of the source text (or of a canonical dump of a mapping)."""

    version: str = DEFAULT_VERSION
    defaults: PolicyDefaults = field(default_factory=PolicyDefaults)
    rules: tuple[DispatchRule, ...] = ()
    locks: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    denies: tuple[str, ...] = ()
    allows: tuple[str, ...] = ()
    fallback_chains: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _EMPTY)
    source: str | None = None
    config_hash: str = hashlib.sha256(b"").hexdigest()
    explicit_kernels: frozenset[str] = frozenset()
    fallback_operations: tuple[str, ...] | None = None
    warnings: tuple[str, ...] = ()
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        setter = object.__setattr__
        if not isinstance(self.locks, MappingProxyType):
            setter(self, "locks", MappingProxyType(dict(self.locks)))
        if not isinstance(self.fallback_chains, MappingProxyType):
            setter(
                self, "fallback_chains", MappingProxyType({k: tuple(v) for k, v in self.fallback_chains.items()})
            )
        setter(self, "rules", tuple(self.rules))
        setter(self, "denies", tuple(self.denies))
        setter(self, "allows", tuple(self.allows))

    def __reduce__(self):
        # MappingProxyType and the memo do not pickle; rebuild from plain data (memo starts empty).
        state = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "_memo"}
        state["locks"] = dict(self.locks)
        state["fallback_chains"] = dict(self.fallback_chains)
        return (_rebuild_policy, (state,))

    @classmethod
    def empty(cls) -> "Policy":
        """No rules, locks, denies or allows: kernels rank by their built-in priority alone."""
        return cls()

    @property
    def is_empty(self) -> bool:
        return not (self.rules or self.locks or self.denies or self.allows or self.fallback_chains
                    or self.defaults.fallback_policy)

    # ------------------------------------------------------------------ per-operation lookups (memoised)
    def _memoised(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per key: the policy never changes, so neither do its answers."""
        got = self._memo.get(key, _UNSET)
        if got is _UNSET:
            got = self._memo[key] = make()
        return got

    def rules_for(self, operation: str | None) -> tuple[DispatchRule, ...]:
        """Rules whose operation glob matches ``operation`` (file order)."""
        return self._memoised(("rules", operation), lambda: tuple(
            r for r in self.rules if operation is not None and r.matches_operation(operation)))

    def lock_for(self, operation: str | None) -> tuple[str, str] | None:
        """``(lock key, kernel id)`` of the lock on ``operation``: an exact key wins over globs; among
        globs the first in file order wins (the loader rejects globs that disagree on a known operation)."""
        if operation is None or not self.locks:
            return None
        return self._memoised(("lock", operation), lambda: self._find_lock(operation))

    def _find_lock(self, operation: str) -> tuple[str, str] | None:
        if operation in self.locks:
            return (operation, self.locks[operation])
        for pattern, kernel in self.locks.items():
            if matches(pattern, operation):
                return (pattern, kernel)
        return None

    def fallback_chain(self, operation: str) -> tuple[str, ...]:
        """Canonical ids to try in order: the exact key's chain, then every matching glob key's chain (file
        order), then ``defaults.fallback_policy`` when it serves the operation; duplicates removed."""
        return self._memoised(("chain", operation), lambda: self._build_chain(operation))

    def _build_chain(self, operation: str) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        if operation in self.fallback_chains:
            seen.update(dict.fromkeys(self.fallback_chains[operation]))
        for pattern, chain in self.fallback_chains.items():
            if pattern != operation and matches(pattern, operation):
                seen.update((k, None) for k in chain if k not in seen)
        fb = self.defaults.fallback_policy
        if fb is not None and fb not in seen and (
            self.fallback_operations is None or any(matches(p, operation) for p in self.fallback_operations)
        ):
            seen[fb] = None
        return tuple(seen)

    def denied_by(self, names: tuple[str, ...]) -> int | None:
        """Index of the first deny glob matching any of a kernel's names (id and aliases)."""
        return self._memoised(("deny", names), lambda: names_match(self.denies, names))

    def admitted(self, kernel_id: str, names: tuple[str, ...]) -> bool:
        """Whether ``kernel_allows`` admits the kernel (always true when it is empty)."""
        if not self.allows or kernel_id in self.explicit_kernels:
            return True
        return self._memoised(("allow", names), lambda: names_match(self.allows, names) is not None)

    # ------------------------------------------------------------------ thresholds
    def thresholds(self, field_name: str, *more: str) -> tuple[float, ...]:
        """Sorted, unique numbers that conditions compare the given field(s) with.

        The selection engine splits its size buckets at these so that two sizes in one bucket satisfy
        exactly the same conditions (a decision cached per bucket is then right for every member)."""
        names = (field_name, *more)
        return self._memoised(("thresholds", names), lambda: tuple(sorted({
            v for rule in self.rules for cond in rule.conditions if cond.field in names for v in cond.numbers()
        })))

    # ------------------------------------------------------------------ rendering
    def to_dict(self) -> dict[str, Any]:
        """A plain-data view (canonical ids) for logging, the CLI and round-trips."""
        def cond_value(c: Condition) -> Any:
            if isinstance(c.value, frozenset):
                return sorted((list(v) if isinstance(v, tuple) else v for v in c.value), key=repr)
            return list(c.value) if isinstance(c.value, tuple) else c.value

        return {
            "version": self.version,
            "defaults": {
                "fallback_policy": self.defaults.fallback_policy,
                "default_priority": self.defaults.default_priority,
                "lock_mode": self.defaults.lock_mode,
            },
            "dispatch_rules": [
                {
                    "operation": r.operation,
                    "conditions": {f"{c.field}_{c.op}": cond_value(c) for c in r.conditions},
                    "kernel": r.kernel,
                    "priority": r.priority,
                }
                for r in self.rules
            ],
            "kernel_locks": dict(self.locks),
            "kernel_denies": list(self.denies),
            "kernel_allows": list(self.allows),
            "fallback_chains": {k: list(v) for k, v in self.fallback_chains.items()},
        }

    def __repr__(self) -> str:
        return (
            f"Policy(version={self.version!r}, source={self.source!r}, rules={len(self.rules)}, "
            f"locks={len(self.locks)}, denies={len(self.denies)}, allows={len(self.allows)}, "
            f"fallback_chains={len(self.fallback_chains)}, config_hash={self.config_hash[:12]!r})"
        )


def _rebuild_policy(state: dict) -> Policy:
    return Policy(**state)
