"""One pass over a parsed policy document: every section checked, every problem recorded, and the
:class:`~layerzero.policy.model.Policy` built only when there are none.

Kernel names become canonical ids here, denies are applied to what the other sections name (denies win,
with a warning), and glob locks that disagree on an operation are reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from layerzero.config_files import DOCUMENT
from layerzero.policy.checks import FieldChecks
from layerzero.policy.conditions import compile_conditions
from layerzero.policy.model import DispatchRule, Policy, PolicyDefaults, names_match
from layerzero.policy.schema import (
    DEFAULT_LOCK_MODE,
    DEFAULT_PRIORITY,
    DEFAULT_VERSION,
    DEFAULTS_KEYS,
    LOCK_MODES,
    MISSING,
    RULE_KEYS,
    TOP_LEVEL_KEYS,
    did_you_mean,
    join_path,
    q,
    type_name,
)
from layerzero.registry.kernel_spec import KernelSpec

__all__ = ["PolicyValidator"]


class PolicyValidator(FieldChecks):
    """Validates one document section by section. Every check records problems and carries on, so the
    user sees the complete list; :meth:`build` returns the Policy only when there are none."""

    def build(self, data: Any, source: str | None, config_hash: str) -> Policy | None:
        if data is None or data is MISSING:
            self.add(DOCUMENT, data, "the policy is empty; fix: write at least `version: \"1.0\"`")
            return None
        if not isinstance(data, Mapping):
            self.add(DOCUMENT, data, f"a policy is a mapping with keys {', '.join(TOP_LEVEL_KEYS)}, got "
                     f"{type_name(data)}; fix: start the file with `version: \"1.0\"`")
            return None
        self.unknown_keys(data, TOP_LEVEL_KEYS, "")

        version = data.get("version", MISSING)
        if version is MISSING:
            version = DEFAULT_VERSION
        elif not isinstance(version, str):
            example = version if isinstance(version, (int, float)) and not isinstance(version, bool) else "1.0"
            self.add("version", version, f"version must be a string, got {type_name(version)}; fix: quote it, "
                     f"e.g. version: \"{q(example).strip(chr(39))}\"")
            version = DEFAULT_VERSION

        denies = self.globs(data.get("kernel_denies"), "kernel_denies")
        allows = self.globs(data.get("kernel_allows"), "kernel_allows")
        defaults, fallback_spec = self.defaults(data.get("defaults", MISSING))
        explicit: set[str] = set()
        fallback_operations = None
        if fallback_spec is not None:
            explicit.add(fallback_spec.kernel_id)
            usable = self.not_denied(fallback_spec, "defaults.fallback_policy", denies, "the fallback policy")
            fallback_operations = fallback_spec.operations if usable else ()
        rules = self.rules(data.get("dispatch_rules"), defaults.default_priority, denies, explicit)
        locks = self.locks(data.get("kernel_locks"), denies, explicit)
        chains = self.chains(data.get("fallback_chains"), denies, explicit)
        if self.problems:
            return None
        return Policy(
            version=version,
            defaults=defaults,
            rules=rules,
            locks=locks,
            denies=denies,
            allows=allows,
            fallback_chains=chains,
            source=source,
            config_hash=config_hash,
            explicit_kernels=frozenset(explicit),
            fallback_operations=fallback_operations,
            warnings=tuple(self.warnings),
        )

    def not_denied(self, spec: KernelSpec, path: str, denies: tuple[str, ...], what: str) -> bool:
        """Whether a kernel named at ``path`` escapes every deny glob. Denies win: a denied rule kernel,
        chain entry or fallback policy is dropped with a warning (merged policy fragments, e.g. per-model
        rules over the default policy, legitimately deny kernels that the base names)."""
        hit = names_match(denies, spec.names)
        if hit is None:
            return True
        self.warnings.append(f"{path}: kernel {spec.kernel_id} is denied by kernel_denies[{hit}] {denies[hit]!r}; "
                             f"{what} is ignored")
        return False

    def defaults(self, value: Any) -> tuple[PolicyDefaults, KernelSpec | None]:
        data = self.mapping(value, "defaults", "{fallback_policy: torch_sdpa_attention, default_priority: 50}")
        if not data:
            return PolicyDefaults(), None
        self.unknown_keys(data, DEFAULTS_KEYS, "defaults")
        fallback = data.get("fallback_policy")
        spec = self.kernel(fallback, "defaults.fallback_policy") if fallback is not None else None
        prio = data.get("default_priority", MISSING)
        priority = DEFAULT_PRIORITY
        if prio is not MISSING:
            priority = self.integer(prio, "defaults.default_priority", "default_priority")
            priority = DEFAULT_PRIORITY if priority is None else priority
        mode = data.get("lock_mode", MISSING)
        if mode is MISSING:
            mode = DEFAULT_LOCK_MODE
        elif not (isinstance(mode, str) and mode in LOCK_MODES):
            self.add("defaults.lock_mode", mode, f"lock_mode must be one of {', '.join(LOCK_MODES)}"
                     f"{did_you_mean(mode, LOCK_MODES)}; fix: prefer (ignore a lock whose kernel cannot run) or "
                     "strict (run nothing)")
            mode = DEFAULT_LOCK_MODE
        return PolicyDefaults(spec.kernel_id if spec else None, priority, mode), spec

    def rules(self, value: Any, default_priority: int, denies: tuple[str, ...], explicit: set[str]) -> tuple[DispatchRule, ...]:
        items = self.sequence(value, "dispatch_rules", "a list of {operation, conditions, kernel, priority}")
        out = []
        for i, item in enumerate(items or ()):
            path = f"dispatch_rules[{i}]"
            if not isinstance(item, Mapping):
                self.add(path, item, f"a rule is a mapping with keys {', '.join(RULE_KEYS)}, got {type_name(item)}; "
                         "fix: write `- operation: attention.*` followed by conditions, kernel and priority")
                continue
            self.unknown_keys(item, RULE_KEYS, path)
            ok = True
            pattern = item.get("operation", MISSING)
            covered = None
            if pattern is MISSING:
                self.add(f"{path}.operation", None, "a rule needs an operation; fix: add `operation: attention.*` "
                         "(a name or glob)")
                ok = False
            else:
                covered = self.operations(pattern, f"{path}.operation")
                ok = ok and covered is not None
            n_before = len(self.problems)
            conditions = compile_conditions(item.get("conditions"), f"{path}.conditions", self.problems)
            ok = ok and len(self.problems) == n_before
            name = item.get("kernel", MISSING)
            spec = None
            if name is MISSING:
                self.add(f"{path}.kernel", None, "a rule needs a kernel; fix: add `kernel: <kernel id or alias>`")
                ok = False
            else:
                spec = self.kernel(name, f"{path}.kernel")
                if spec is not None:
                    explicit.add(spec.kernel_id)
                    if covered is not None:
                        ok = self.serves(spec, name, pattern, covered, f"{path}.kernel") and ok
                    ok = self.not_denied(spec, f"{path}.kernel", denies, "the rule") and ok
                else:
                    ok = False
            prio = item.get("priority", MISSING)
            priority = default_priority
            if prio is not MISSING:
                got = self.integer(prio, f"{path}.priority", "priority")
                ok = ok and got is not None
                priority = default_priority if got is None else got
            if ok and spec is not None:
                out.append(DispatchRule(i, pattern, conditions, spec.kernel_id, priority, name))
        return tuple(out)

    def locks(self, value: Any, denies: tuple[str, ...], explicit: set[str]) -> dict[str, str]:
        data = self.mapping(value, "kernel_locks", "{attention.prefill: flash_attn_v2_attention}")
        out: dict[str, str] = {}
        covers: dict[str, tuple[str, ...]] = {}
        for pattern, name in (data or {}).items():
            path = join_path("kernel_locks", pattern)
            covered = self.operations(pattern, path)
            spec = self.kernel(name, path)
            if spec is None or covered is None:
                continue
            explicit.add(spec.kernel_id)
            if not self.serves(spec, name, pattern, covered, path):
                continue
            hit = names_match(denies, spec.names)
            if hit is not None:
                # A lock says "only this kernel", a deny says "never this kernel": no reading satisfies both.
                self.add(path, name, f"kernel {spec.kernel_id} is locked here but denied by kernel_denies[{hit}] "
                         f"{denies[hit]!r}; fix: remove the lock or narrow the deny glob")
                continue
            out[pattern] = spec.kernel_id
            covers[pattern] = covered
        # An exact key decides its operation; glob keys that disagree on one operation are ambiguous.
        clashes: dict[tuple[str, str], list[str]] = {}
        for op in self.known_operations:
            if op in out:
                continue
            hits = [(p, k) for p, k in out.items() if op in covers[p]]
            for p2, k2 in hits[1:]:
                if k2 != hits[0][1]:
                    clashes.setdefault((hits[0][0], p2), []).append(op)
        for (p1, p2), ops in clashes.items():
            self.add(join_path("kernel_locks", p2), out[p2], f"locks {p1!r} -> {out[p1]} and {p2!r} -> {out[p2]} both "
                     f"match {', '.join(ops)}; fix: add an exact lock for each or make the globs disjoint")
        return out

    def chains(self, value: Any, denies: tuple[str, ...], explicit: set[str]) -> dict[str, tuple[str, ...]]:
        data = self.mapping(value, "fallback_chains", "{attention.causal: [torch_sdpa_attention, reference_attention]}")
        out: dict[str, tuple[str, ...]] = {}
        for pattern, names in (data or {}).items():
            path = join_path("fallback_chains", pattern)
            covered = self.operations(pattern, path)
            items = self.sequence(names, path, "a list of kernel ids, most preferred first")
            if items is None:
                continue
            if not items:
                self.add(path, names, "an empty fallback chain does nothing; fix: list kernels or remove the key")
                continue
            chain: list[str] = []
            for i, name in enumerate(items):
                here = f"{path}[{i}]"
                spec = self.kernel(name, here)
                if spec is None:
                    continue
                explicit.add(spec.kernel_id)
                if covered is not None and not self.serves(spec, name, pattern, covered, here):
                    continue
                if not self.not_denied(spec, here, denies, "this fallback entry"):
                    continue
                if spec.kernel_id in chain:
                    self.add(here, name, f"kernel {spec.kernel_id} appears twice in this chain; fix: keep the first")
                    continue
                chain.append(spec.kernel_id)
            if covered is not None:
                out[pattern] = tuple(chain)
        return out
