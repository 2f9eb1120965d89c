"""Field-level checks a policy validator runs: is this a known kernel, an operation glob, an integer in
range, a mapping, a list of globs?

Each check records a problem with the field path and the fix and returns a "could not use this" value
(None or empty) instead of raising, so one pass over a document reports every mistake at once. The
document-level structure (which section holds what) lives in :mod:`layerzero.policy.validator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from layerzero.operations import OPERATIONS, matches
from layerzero.policy.schema import (
    MAX_PRIORITY,
    MISSING,
    Problems,
    did_you_mean,
    glob_error,
    is_glob,
    join_path,
    q,
    type_name,
)
from layerzero.registry.kernel_registry import KernelRegistry
from layerzero.registry.kernel_spec import KernelSpec

__all__ = ["FieldChecks"]


class FieldChecks:
    """Checks of single values against the registry and the schema; problems go to ``problems`` and
    warnings (legal but suspicious values) to ``warnings``."""

    def __init__(self, registry: KernelRegistry, problems: Problems):
        self.registry = registry
        self.problems = problems
        self.warnings: list[str] = []
        served = {p for k in registry for p in k.operations if not is_glob(p)}
        self.known_operations: tuple[str, ...] = tuple(dict.fromkeys([*OPERATIONS, *sorted(served)]))
        self._names: list[str] | None = None

    def add(self, field: str, value: Any, message: str) -> None:
        self.problems.add(field, value, message)

    def names(self) -> list[str]:
        """Every registered id and alias, read once: "did you mean" hints need them for each bad name."""
        if self._names is None:
            self._names = self.registry.names()
        return self._names

    def kernel(self, name: Any, path: str) -> KernelSpec | None:
        """The kernel an id or alias names (None, with a problem and the closest names, when none)."""
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
        """Whether the kernel implements one of the operations a pattern covers: a rule, lock or chain entry
        naming a kernel of another operation could never take effect."""
        if any(spec.serves(op) for op in covered):
            return True
        label = name if name == spec.kernel_id else f"{name} ({spec.kernel_id})"
        self.add(path, name, f"kernel {label} does not implement {pattern} (it serves "
                 f"{', '.join(spec.operations)}); fix: pick a kernel of that operation")
        return False

    def integer(self, value: Any, path: str, what: str) -> int | None:
        """A priority: an int within +-MAX_PRIORITY (bools and floats are mistakes, huge values overflow)."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, value, f"{what} must be an integer, got {type_name(value)}; fix: write e.g. 100")
            return None
        if abs(value) > MAX_PRIORITY:
            self.add(path, value, f"{what} is out of range; fix: use an integer between -{MAX_PRIORITY} and "
                     f"{MAX_PRIORITY}")
            return None
        return int(value)

    def mapping(self, value: Any, path: str, example: str) -> Mapping | None:
        """A section that is a mapping; absent or null is an empty one (every section is optional)."""
        if value is None or value is MISSING:
            return {}
        if not isinstance(value, Mapping):
            self.add(path, value, f"must be a mapping, got {type_name(value)}; fix: write it as {example}")
            return None
        return value

    def sequence(self, value: Any, path: str, example: str) -> list | None:
        """A section that is a list; absent or null is an empty one, and a bare string is not a list."""
        if value is None or value is MISSING:
            return []
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            self.add(path, value, f"must be a list, got {type_name(value)}; fix: write it as {example}")
            return None
        return list(value)

    def unknown_keys(self, data: Mapping, allowed: tuple[str, ...], path: str) -> None:
        """Report misspelt keys: an unknown key would otherwise be ignored silently."""
        for key in data:
            if key not in allowed:
                self.add(join_path(path, key), key, f"unknown key {q(key)}{did_you_mean(key, allowed)}; fix: use one of "
                         f"{', '.join(allowed)}")

    def globs(self, value: Any, path: str) -> tuple[str, ...]:
        """The usable kernel globs of ``kernel_denies``/``kernel_allows`` (broken ones reported, dropped)."""
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
