"""Load and validate a policy: YAML text, a file, or a mapping -> :class:`Policy`, or one
:class:`~layerzero.errors.ConfigValidationError` listing every problem.

Nothing else escapes: YAML syntax errors, binary files, alias bombs, self-referencing anchors, absurd
numbers and plain type mistakes all become :class:`~layerzero.errors.ValidationProblem` s naming the file,
the field path (``dispatch_rules[2].conditions.batch_size_gte``), the offending value and the fix. That is
what lets a hot-reloading dispatcher keep serving the previous policy on any bad edit.

Files and YAML go through :mod:`layerzero.config_files` (regular files only, opened without blocking, size
and alias limits, safe construction only); the composed node graph also yields duplicate keys, which
a plain ``safe_load`` would silently resolve to the last one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from layerzero.config_files import compose_yaml, construct_yaml, read_config_text
from layerzero.data_files import DEFAULT_POLICY, find_data_file
from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.operations import OPERATIONS, matches
from layerzero.policy.conditions import compile_conditions
from layerzero.policy.model import DispatchRule, Policy, PolicyDefaults, _names_match
from layerzero.policy.schema import (
    DEFAULT_LOCK_MODE,
    DEFAULT_PRIORITY,
    DEFAULT_VERSION,
    DEFAULTS_KEYS,
    LOCK_MODES,
    MAX_PRIORITY,
    MAX_SOURCE_BYTES,
    MISSING,
    RULE_KEYS,
    TOP_LEVEL_KEYS,
    Problems,
    clip,
    did_you_mean,
    glob_error,
    is_glob,
    join_path,
    q,
    type_name,
)
from layerzero.registry.kernel_registry import KernelRegistry
from layerzero.registry.kernel_spec import KernelSpec

DOCUMENT = "<document>"
INTERNAL_ERROR_MARK = "internal error while validating"



# ============================================================================================== public API
def load_policy(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    registry: KernelRegistry | None = None,
) -> Policy:
    """A validated policy from a YAML file path or an already-parsed mapping.

    ``None`` loads the shipped default policy (``configs/default_policy.yaml``). Kernel ids and aliases
    resolve through ``registry`` (default: the global kernel registry). Raises only
    :class:`ConfigValidationError`."""
    if source is None:
        path = default_policy_path()
        if path is None:
            raise ConfigValidationError(
                [ValidationProblem(DOCUMENT, None, "the default policy file is not installed; fix: reinstall "
                                   "layerzero or pass a policy path")]
            )
        source = path
    if isinstance(source, Mapping):
        return _guarded(lambda: _from_mapping(source, None, registry, _mapping_hash(source)), None)
    if isinstance(source, (str, bytes, os.PathLike)):
        path = os.fsdecode(source)
        label = path if "\n" not in path and len(path) <= 1024 else "<not a path>"
        return _guarded(lambda: _from_file(path, registry, label), label)
    raise ConfigValidationError(
        [ValidationProblem(DOCUMENT, clip(source), f"a policy source is a file path or a mapping, got "
                           f"{type_name(source)}; fix: pass a path or a dict")]
    )


def parse_policy_text(text: str, source: str | None = None, registry: KernelRegistry | None = None) -> Policy:
    """A validated policy from YAML text; ``source`` names it in problems (a path, or "<inline>")."""
    return _guarded(lambda: _from_text(text, source, registry), source)


def validate_policy(
    source: str | os.PathLike[str] | Mapping[str, Any], registry: KernelRegistry | None = None
) -> list[ValidationProblem]:
    """Every problem of a policy source (empty when it is valid); for CLIs and editors."""
    try:
        load_policy(source, registry)
    except ConfigValidationError as e:
        return list(e.problems)
    return []


def default_policy_path() -> Path | None:
    """The shipped default policy: package data when installed, else the repository's ``configs/``."""
    return find_data_file(DEFAULT_POLICY)


def load_default_policy(registry: KernelRegistry | None = None) -> Policy:
    return load_policy(None, registry)


# ============================================================================================== plumbing
def _guarded(build, source: str | None) -> Policy:
    """Run a build step; turn any escape other than ConfigValidationError into one (the loader's promise),
    marked as an internal error so tests and users can tell it from a config mistake."""
    try:
        return build()
    except ConfigValidationError:
        raise
    except RecursionError:
        raise ConfigValidationError(
            [ValidationProblem(DOCUMENT, None, "the document is nested too deeply (or refers to itself); fix: "
                               "flatten it", source)], source=source,
        ) from None
    except Exception as e:  # noqa: BLE001 - the loader's contract is "only ConfigValidationError escapes"
        detail = clip(f"{type(e).__name__}: {e}")
        raise ConfigValidationError(
            [ValidationProblem(DOCUMENT, detail, f"{INTERNAL_ERROR_MARK} ({detail!r}); this is a LayerZero bug: "
                               "please report it with the config", source)], source=source,
        ) from e


def _fail(problems: Problems) -> None:
    if problems:
        raise ConfigValidationError(problems.items, source=problems.source)


def _from_file(path: str, registry: KernelRegistry | None, label: str | None = None) -> Policy:
    """Read through the guarded reader: regular files only (a FIFO is rejected, never waited on), size
    limit, UTF-8; any failure is a ConfigValidationError naming the file."""
    label = path if label is None else label
    try:
        text = read_config_text(path, "policy file", MAX_SOURCE_BYTES, text_api="parse_policy_text(text)")
    except ConfigValidationError as e:
        raise ConfigValidationError([replace(p, source=label) for p in e.problems], source=label) from None
    return _from_text(text, label, registry)


def _from_text(text: str, source: str | None, registry: KernelRegistry | None) -> Policy:
    problems = Problems(source)
    if not isinstance(text, str):
        problems.add(DOCUMENT, text, f"policy text must be a str, got {type_name(text)}; fix: decode it first")
        _fail(problems)
    if len(text) > MAX_SOURCE_BYTES:
        problems.add(DOCUMENT, f"{len(text)} characters", "the text is too large for a policy; fix: pass the right text")
        _fail(problems)
    data = _parse_yaml(text, problems)
    if data is MISSING:  # unparseable: nothing more to check
        _fail(problems)
    # Duplicate keys are reported together with every other problem of the parsed document.
    return _from_mapping(data, source, registry, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
                         problems)


MAX_FLOW_DEPTH = 64


def _flow_depth_exceeds(text: str, limit: int) -> bool:
    """Cheap over-estimate guard: PyYAML's scanner is quadratic in flow nesting and its composer recursive,
    so ``[[[[...`` thousands deep takes seconds before failing. Count ``[``/``{`` outside quotes and
    comments; no real policy nests anywhere near ``limit``."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    quote = ""
    prev = "\n"
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and prev in " \t\n":
            quote = "\n"  # skip the comment up to the end of the line
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth = max(0, depth - 1)
        prev = ch
    return False


def _parse_yaml(text: str, problems: Problems) -> Any:
    """The parsed document, or MISSING (with a problem recorded) when there is none to validate."""
    if _flow_depth_exceeds(text, MAX_FLOW_DEPTH):
        problems.add(DOCUMENT, None, f"the document nests lists/mappings more than {MAX_FLOW_DEPTH} levels deep; "
                     "fix: flatten it")
        return MISSING
    try:
        node = compose_yaml(text, problems.source)
        if node is None:
            problems.add(DOCUMENT, text[:80], "the policy is empty; fix: write at least `version: \"1.0\"` (see "
                         "configs/default_policy.yaml)")
            return MISSING
        _check_duplicate_keys(node, problems)
        return construct_yaml(node, problems.source)
    except ConfigValidationError as e:
        for p in e.problems:
            problems.add(p.field, p.value, p.message)
    return MISSING


def _check_duplicate_keys(root: yaml.Node, problems: Problems) -> None:
    """Report keys that appear twice in one mapping; safe_load would keep only the last silently."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()
    budget = 200_000
    while stack and budget > 0:
        node, path = stack.pop()
        budget -= 1
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = key_node.value
                    child = join_path(path, key)
                    if key in first_line:
                        problems.add(child, key, f"duplicate key {q(key)} (lines {first_line[key]} and "
                                     f"{key_node.start_mark.line + 1}); fix: keep one of them")
                    else:
                        first_line[key] = key_node.start_mark.line + 1
                    stack.append((value_node, child))
                else:
                    stack.append((value_node, path))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, f"{path}[{i}]"))


def _mapping_hash(data: Mapping[str, Any]) -> str:
    """sha256 of a mapping's content, key order ignored. Each container is digested once (by identity),
    so shared sub-structures (YAML aliases) cost nothing extra and cycles terminate."""
    memo: dict[int, bytes] = {}

    def digest(value: Any, depth: int) -> bytes:
        if isinstance(value, (Mapping, list, tuple)):
            key = id(value)
            got = memo.get(key)
            if got is not None:
                return got
            memo[key] = b"<cycle>"
            if depth > 200:
                out = b"<deep>"
            elif isinstance(value, Mapping):
                parts = sorted(digest(k, depth + 1) + b":" + digest(v, depth + 1) for k, v in value.items())
                out = hashlib.sha256(b"map{" + b",".join(parts) + b"}").digest()
            else:
                out = hashlib.sha256(b"seq[" + b",".join(digest(v, depth + 1) for v in value) + b"]").digest()
            memo[key] = out
            return out
        if isinstance(value, int) and not isinstance(value, bool):
            text = f"int:{value:x}"  # hex: no str-digit limit for huge ints
        elif isinstance(value, (str, float, bool, type(None))):
            text = f"{type(value).__name__}:{value!r}"
        else:
            text = f"{type(value).__name__}:{clip(value)!r}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

    return digest(data, 0).hex()


# ============================================================================================== validation
class _Validator:
    """One pass over a parsed document. Every check records problems and carries on, so the user sees the
    complete list; the Policy is built only when there are none."""

    def __init__(self, registry: KernelRegistry, problems: Problems):
        self.registry = registry
        self.problems = problems
        self.warnings: list[str] = []
        served = {p for k in registry for p in k.operations if not is_glob(p)}
        self.known_operations: tuple[str, ...] = tuple(dict.fromkeys([*OPERATIONS, *sorted(served)]))
        self._names: list[str] | None = None

    # ---------------------------------------------------------------- helpers
    def add(self, field: str, value: Any, message: str) -> None:
        self.problems.add(field, value, message)

    def names(self) -> list[str]:
        if self._names is None:
            self._names = self.registry.names()
        return self._names

    def kernel(self, name: Any, path: str) -> KernelSpec | None:
        if not isinstance(name, str):
            self.add(path, name, f"a kernel is named by its id or alias (a string), got {type_name(name)}; fix: "
                     "write e.g. torch_sdpa_attention")
            return None
        spec = self.registry.find(name)
        if spec is None:
            self.add(path, name, f"unknown kernel {q(name)}{did_you_mean(name, self.names())}; fix: use a registered "
                     "kernel id or alias (layerzero.registry.get_global_kernel_registry().names())")
        return spec

    def operations(self, pattern: Any, path: str) -> tuple[str, ...] | None:
        """The known operations an operation name/glob covers (None, with a problem, when none)."""
        err = glob_error(pattern)
        if err is not None:
            self.add(path, pattern, f"operation pattern {err}; fix: use an operation name such as attention.causal "
                     "or a glob such as 'attention.*'")
            return None
        covered = tuple(op for op in self.known_operations if matches(pattern, op))
        if not covered:
            self.add(path, pattern, f"operation {q(pattern)} matches no known operation"
                     f"{did_you_mean(pattern, self.known_operations)}; fix: use one of "
                     f"{', '.join(self.known_operations)} or a glob such as 'attention.*'")
            return None
        return covered

    def serves(self, spec: KernelSpec, name: str, pattern: str, covered: tuple[str, ...], path: str) -> bool:
        if any(spec.serves(op) for op in covered):
            return True
        label = name if name == spec.kernel_id else f"{name} ({spec.kernel_id})"
        self.add(path, name, f"kernel {label} does not implement {pattern} (it serves "
                 f"{', '.join(spec.operations)}); fix: pick a kernel of that operation")
        return False

    def integer(self, value: Any, path: str, what: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, value, f"{what} must be an integer, got {type_name(value)}; fix: write e.g. 100")
            return None
        if abs(value) > MAX_PRIORITY:
            self.add(path, value, f"{what} is out of range; fix: use an integer between -{MAX_PRIORITY} and "
                     f"{MAX_PRIORITY}")
            return None
        return int(value)

    def mapping(self, value: Any, path: str, example: str) -> Mapping | None:
        if value is None or value is MISSING:
            return {}
        if not isinstance(value, Mapping):
            self.add(path, value, f"must be a mapping, got {type_name(value)}; fix: write it as {example}")
            return None
        return value

    def sequence(self, value: Any, path: str, example: str) -> list | None:
        if value is None or value is MISSING:
            return []
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            self.add(path, value, f"must be a list, got {type_name(value)}; fix: write it as {example}")
            return None
        return list(value)

    def unknown_keys(self, data: Mapping, allowed: tuple[str, ...], path: str) -> None:
        for key in data:
            if key not in allowed:
                self.add(join_path(path, key), key, f"unknown key {q(key)}{did_you_mean(key, allowed)}; fix: use one of "
                         f"{', '.join(allowed)}")

    def globs(self, value: Any, path: str) -> tuple[str, ...]:
        items = self.sequence(value, path, "a list of kernel-id globs such as ['*_debug']")
        if items is None:
            return ()
        out = []
        for i, item in enumerate(items):
            err = glob_error(item)
            if err is not None:
                self.add(f"{path}[{i}]", item, f"kernel glob {err}; fix: write a glob such as 'flash_attn_*' (ids "
                         "and aliases are matched)")
            else:
                out.append(item)
                self.warn_if_unmatched(item, f"{path}[{i}]", always=path == "kernel_allows")
        return tuple(out)

    def warn_if_unmatched(self, pattern: str, path: str, always: bool) -> None:
        """A glob that matches no registered kernel is legal (the kernel may be registered later) but often a
        typo: an allow typo silently shrinks the eligible set. Warn for allows, and for exact deny names."""
        if not (always or not is_glob(pattern)):
            return
        if any(fnmatchcase(n, pattern) for n in self.names()):
            return
        self.warnings.append(f"{path}: {q(pattern)} matches no registered kernel id or alias"
                             f"{did_you_mean(pattern, self.names())}")

    # ---------------------------------------------------------------- document
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
        hit = _names_match(denies, spec.names)
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
            hit = _names_match(denies, spec.names)
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


def _from_mapping(
    data: Any,
    source: str | None,
    registry: KernelRegistry | None,
    config_hash: str,
    problems: Problems | None = None,
) -> Policy:
    if registry is None:
        from layerzero.registry import get_global_kernel_registry

        registry = get_global_kernel_registry()
    problems = problems if problems is not None else Problems(source)
    policy = _Validator(registry, problems).build(data, source, config_hash)
    _fail(problems)
    assert policy is not None
    return policy
