"""The policy schema as data (keys, modes, limits) and the small helpers every validator shares.

Validation collects problems instead of raising on the first one, so a user fixing a config sees the whole
list at once. Every helper here therefore appends a :class:`ValidationProblem` to a list and returns a
"could not use this" sentinel rather than raising.
"""

from __future__ import annotations

import difflib
import reprlib
from typing import Any, Iterable

from layerzero.errors import ValidationProblem

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "version",
    "defaults",
    "dispatch_rules",
    "kernel_locks",
    "kernel_denies",
    "kernel_allows",
    "fallback_chains",
)
DEFAULTS_KEYS: tuple[str, ...] = ("fallback_policy", "default_priority", "lock_mode")
RULE_KEYS: tuple[str, ...] = ("operation", "conditions", "kernel", "priority")
LOCK_MODES: tuple[str, ...] = ("prefer", "strict")

DEFAULT_PRIORITY = 50
DEFAULT_LOCK_MODE = "prefer"
DEFAULT_VERSION = "0"

# Priorities are compared as ints, but score_kernels() and telemetry turn them into floats; a bound keeps
# every conversion exact and stops "priority: 1e400" style inputs from becoming inf.
MAX_PRIORITY = 1_000_000
# Condition numbers are compared with sizes; anything beyond int64 is a typo, and bounding them keeps
# every float conversion finite.
MAX_CONDITION_NUMBER = 2**63
MAX_SOURCE_BYTES = 4 * 1024 * 1024


class Missing:
    """Marker for "key absent" (distinct from an explicit YAML null)."""

    _instance: "Missing | None" = None

    def __new__(cls) -> "Missing":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<missing>"


MISSING = Missing()


# ---------------------------------------------------------------------------------------------- values
class _Clipped:
    """A bounded stand-in for a huge or self-referencing value, so error messages stay small and can
    always be rendered (a YAML alias bomb or ``&a [*a]`` must not make ``repr`` explode)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Clipped) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxlist = 8
_repr.maxdict = 8
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlong = 60


def _small(value: Any, budget: list[int], depth: int, seen: set[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0 or depth > 4:
        return False
    if isinstance(value, (list, tuple)):
        if id(value) in seen:
            return False
        seen.add(id(value))
        return all(_small(v, budget, depth + 1, seen) for v in value)
    if isinstance(value, dict):
        if id(value) in seen:
            return False
        seen.add(id(value))
        return all(_small(k, budget, depth + 1, seen) and _small(v, budget, depth + 1, seen) for k, v in value.items())
    if isinstance(value, str):
        return len(value) <= 200
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() <= 128
    return isinstance(value, (float, bool, type(None)))


def clip(value: Any) -> Any:
    """The value itself when it is small and plain, else a bounded textual stand-in."""
    try:
        if _small(value, [64], 0, set()):
            return value
        return _Clipped(_repr.repr(value))
    except Exception:  # a pathological object: never let error reporting fail
        return _Clipped(f"<{type(value).__name__}>")


def q(value: Any) -> str:
    """``repr`` of a user value for a message, bounded (a 4 MB string or an alias bomb stays short)."""
    return repr(clip(value))


def join_path(path: str, key: Any) -> str:
    """The field path of ``key`` under ``path``: ``a.b`` for identifier keys, ``a['attention.*']`` else."""
    if isinstance(key, str) and key and len(key) <= 100 and all(ch.isalnum() or ch == "_" for ch in key):
        return f"{path}.{key}" if path else key
    return f"{path}[{q(key)}]"


def type_name(value: Any) -> str:
    """The YAML-ish kind of a value with its article ("an integer", "a list"), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` or ``""``; the hint every "unknown name" message carries."""
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


class Problems:
    """Collects :class:`ValidationProblem` s for one source."""

    def __init__(self, source: str | None):
        self.source = source
        self.items: list[ValidationProblem] = []

    def add(self, field: str, value: Any, message: str) -> None:
        self.items.append(ValidationProblem(field=field, value=clip(value), message=message, source=self.source))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------------------------------------- globs
def glob_error(pattern: Any) -> str | None:
    """Why ``pattern`` is not a usable glob (None when it is).

    fnmatch silently treats an unbalanced ``[`` as a literal, so ``"flash_[attn"`` would quietly match
    nothing; we reject it instead. Empty or whitespace-padded patterns are almost always typos."""
    if not isinstance(pattern, str):
        return f"must be a string glob, got {type_name(pattern)}"
    if pattern == "":
        return "is an empty glob, which matches nothing"
    if pattern != pattern.strip():
        return "has leading or trailing whitespace, so it matches nothing"
    if any(ch in pattern for ch in "\n\r\t\x00"):
        return "contains a control character"
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                return f"has an unbalanced '[' at position {i}"
            i = j + 1
            continue
        if ch == "]":
            return f"has an unmatched ']' at position {i}"
        i += 1
    return None


def is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")
