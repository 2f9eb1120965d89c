"""The condition language of ``dispatch_rules[].conditions``, compiled once into fast predicates.

A condition key is either a :class:`~layerzero.context.call_context.SelectionContext` field (``dtype:
bfloat16`` is equality, ``dtype: [float16, bfloat16]`` is membership) or ``<field>_<op>`` with ``op`` one
of ``gt gte lt lte eq ne in not_in`` (``batch_size_gte: 8``). Values are checked against the field's
type when the policy loads, so a rule can never fail at selection time, and dtype spellings are made
canonical (``fp16`` -> ``float16``) so they compare equal to what contexts carry.

Unknown facts never trigger a rule: when the context's field is ``None`` a condition holds only if it
explicitly asks for ``null`` (``sliding_window: null``). That keeps rules conservative when a caller
builds a partial context.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Callable

import torch

from layerzero.operations import OPERATIONS
from layerzero.policy.schema import (
    MAX_CONDITION_NUMBER,
    Problems,
    did_you_mean,
    is_number,
    join_path,
    q,
    type_name,
)
from layerzero.context.call_context import CONTEXT_FIELDS, SelectionContext, dtype_name

OPERATORS: tuple[str, ...] = ("gt", "gte", "lt", "lte", "eq", "ne", "in", "not_in")
NUMERIC_OPERATORS = frozenset({"gt", "gte", "lt", "lte"})
_SUFFIXES = sorted(OPERATORS, key=len, reverse=True)  # "not_in" before "in"

# Kinds of context fields, derived from the dataclass annotations so new fields work without edits here.
INT, FLOAT, STR, BOOL, CAPABILITY = "int", "float", "str", "bool", "capability"
NUMERIC_KINDS = frozenset({INT, FLOAT, CAPABILITY})

# Fields whose string values form a closed set: a typo there would silently never match.
PLATFORMS = ("cpu", "cuda", "rocm", "mps", "xpu", "hpu", "npu", "xla", "meta", "mtia")
ENUMS: dict[str, tuple[str, ...]] = {
    "operation": OPERATIONS,
    "platform": PLATFORMS,
    "attn_mask": ("bool", "additive"),
    "casting": ("llama", "gemma", "none"),
    "layout": ("bhsd", "bshd"),
}


def _kind_of(annotation: Any) -> tuple[str | None, bool]:
    """``"int | None"`` -> ``("int", True)``; kind None for types a condition cannot compare (``extra``)."""
    if isinstance(annotation, str):
        text = annotation
    else:  # a real type (no postponed annotations): int, or int | None
        text = annotation.__name__ if isinstance(annotation, type) else repr(annotation)
    parts = [p.strip() for p in text.split("|")]
    main = [p for p in parts if p != "None"]
    kinds = {"int": INT, "float": FLOAT, "str": STR, "bool": BOOL, "tuple[int, int]": CAPABILITY}
    return (kinds.get(main[0]) if len(main) == 1 else None), len(main) < len(parts)


FIELD_KINDS: dict[str, tuple[str | None, bool]] = {
    f.name: _kind_of(f.type) for f in dataclasses.fields(SelectionContext)
}
CONDITION_FIELDS: tuple[str, ...] = tuple(sorted(n for n, (k, _) in FIELD_KINDS.items() if k is not None))
assert set(CONDITION_FIELDS) <= CONTEXT_FIELDS


def _all_condition_keys() -> list[str]:
    return [*CONDITION_FIELDS, *(f"{f}_{op}" for f in CONDITION_FIELDS for op in OPERATORS)]


def split_key(key: str) -> tuple[str, str | None]:
    """``"batch_size_gte"`` -> ``("batch_size", "gte")``; a bare field -> ``(field, None)``.

    A bare context field wins over a suffix reading, so no field name can be shadowed by an operator."""
    if key in CONTEXT_FIELDS:
        return key, None
    for op in _SUFFIXES:
        suffix = "_" + op
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], op
    return key, None


@dataclass(frozen=True)
class Condition:
    """One compiled condition. ``value`` is canonical (dtype names, capability tuples, frozensets for
    membership); ``test`` takes the context and says whether the condition holds."""

    key: str
    field: str
    op: str
    value: Any
    test: Callable[[SelectionContext], bool] = dataclasses.field(compare=False, repr=False)

    def __call__(self, ctx: SelectionContext) -> bool:
        return self.test(ctx)

    def __reduce__(self):  # the compiled closure is rebuilt, so policies pickle and deepcopy
        return (_rebuild, (self.key, self.field, self.op, self.value))

    @property
    def shown(self) -> Any:
        """The value as written for people: a membership set in a stable (sorted) order."""
        return sorted(self.value, key=repr) if isinstance(self.value, frozenset) else self.value

    def describe(self) -> str:
        return f"{self.field} {self.op} {self.shown!r}"

    def why_not(self, ctx: SelectionContext) -> str | None:
        """None when the condition holds, else a short reason ("batch_size_gte 8: batch_size is 4")."""
        if self.test(ctx):
            return None
        actual = getattr(ctx, self.field)
        fact = f"{self.field} is unknown" if actual is None else f"{self.field} is {actual!r}"
        return f"{self.key} {self.shown!r}: {fact}"

    def numbers(self) -> tuple[float, ...]:
        """The plain numbers this condition compares its field with (bucket boundaries for selection)."""
        values = self.value if isinstance(self.value, frozenset) else (self.value,)
        return tuple(v for v in values if is_number(v))


def _rebuild(key: str, field: str, op: str, value: Any) -> Condition:
    return Condition(key, field, op, value, _make_test(field, op, value))


_CMP = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
}


def _make_test(field: str, op: str, value: Any) -> Callable[[SelectionContext], bool]:
    get = operator.attrgetter(field)
    if op in ("in", "not_in"):
        members: frozenset = value
        accepts_none = None in members
        if op == "in":
            return lambda ctx: get(ctx) in members
        # not_in with an unknown fact: the fact might be a member, so the condition does not hold.
        return lambda ctx: (v := get(ctx)) not in members and (v is not None or accepts_none)
    if value is None:
        return (lambda ctx: get(ctx) is None) if op == "eq" else (lambda ctx: get(ctx) is not None)
    cmp = _CMP[op]
    return lambda ctx: (v := get(ctx)) is not None and cmp(v, value)


def _canonical_scalar(field: str, kind: str, optional: bool, value: Any, path: str, problems: Problems,
                      numeric_op: bool) -> tuple[bool, Any]:
    """Check one scalar against the field's type; return (ok, canonical value)."""
    if value is None:
        if numeric_op:
            problems.add(path, value, f"{field} cannot be compared with null; fix: give a number")
            return False, None
        if not optional:
            problems.add(path, value, f"{field} is never null (it is a {kind}); fix: give a {kind} value")
            return False, None
        return True, None
    if kind == BOOL:
        if isinstance(value, bool):
            return True, value
        problems.add(path, value, f"{field} is a boolean; fix: use true or false")
        return False, None
    if kind in (INT, FLOAT):
        if not is_number(value):
            problems.add(path, value, f"{field} is a number, got {type_name(value)}; fix: write a plain number such as 8")
            return False, None
        if isinstance(value, float) and value != value:
            problems.add(path, value, f"NaN never compares true; fix: give a finite number for {field}")
            return False, None
        if abs(value) > MAX_CONDITION_NUMBER:
            problems.add(path, value, f"{field} bound is out of range (|value| <= 2**63); fix: use a realistic size")
            return False, None
        if kind == INT and isinstance(value, float) and value.is_integer():
            value = int(value)
        return True, value
    if kind == CAPABILITY:
        cc = _capability(value)
        if cc is None:
            problems.add(
                path, value,
                f"{field} is a CUDA compute capability; fix: write it as \"8.0\", 9.0 or [8, 0]",
            )
            return False, None
        return True, cc
    # strings
    if not isinstance(value, str):
        problems.add(path, value, f"{field} is a string, got {type_name(value)}; fix: quote the value")
        return False, None
    if numeric_op:
        problems.add(path, value, f"{field} is a string and cannot be ordered; fix: use eq, ne, in or not_in")
        return False, None
    if field == "dtype":
        name = dtype_name(value)
        if not isinstance(getattr(torch, name, None), torch.dtype):
            known = ["float16", "bfloat16", "float32", "float64", "fp16", "bf16", "fp32"]
            problems.add(path, value, f"unknown dtype {q(value)}{did_you_mean(value, known)}; fix: use a torch dtype "
                         "name such as bfloat16, float16 or float32")
            return False, None
        return True, name
    allowed = ENUMS.get(field)
    if allowed is not None and value not in allowed:
        problems.add(path, value, f"unknown {field} {q(value)}{did_you_mean(value, allowed)}; fix: use one of "
                     f"{', '.join(allowed)}")
        return False, None
    return True, value


def _capability(value: Any) -> tuple[int, int] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 100 for v in value
    ):
        return (int(value[0]), int(value[1]))
    if isinstance(value, int) and 0 <= value < 100:
        return (value, 0)
    if isinstance(value, float) and value == value and 0 <= value < 100:
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        return None
    major, dot, minor = text.partition(".")
    if not major.isdigit() or (dot and not minor.isdigit()) or len(major) > 2 or len(minor) > 2:
        return None
    return (int(major), int(minor or 0))


def compile_condition(key: Any, value: Any, path: str, problems: Problems) -> Condition | None:
    """Validate one ``key: value`` of a rule's conditions; None (with problems recorded) when invalid."""
    here = join_path(path, key)
    if not isinstance(key, str):
        problems.add(here, key, f"condition keys are strings, got {type_name(key)}; fix: write a key such as "
                     "batch_size_gte")
        return None
    field, op = split_key(key)
    if field == "extra" or (field in CONTEXT_FIELDS and FIELD_KINDS.get(field, (None,))[0] is None):
        problems.add(here, value, f"context field {field!r} cannot be used in conditions; fix: use one of "
                     f"{', '.join(CONDITION_FIELDS)}")
        return None
    if field not in CONTEXT_FIELDS:
        hint = did_you_mean(key, _all_condition_keys())
        problems.add(
            here, value,
            f"unknown condition {q(key)}{hint}; fix: use a SelectionContext field ({', '.join(CONDITION_FIELDS)}), "
            f"optionally suffixed with _{', _'.join(OPERATORS)}",
        )
        return None
    kind, optional = FIELD_KINDS[field]
    assert kind is not None
    # [8, 0] is one compute capability, not a list of two.
    pair = kind == CAPABILITY and isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )
    if op is None:
        op = "in" if isinstance(value, (list, tuple)) and not pair else "eq"
    if op in NUMERIC_OPERATORS and kind not in NUMERIC_KINDS:
        problems.add(here, value, f"operator {op} needs a numeric field but {field} is a {kind}; fix: use eq, ne, in "
                     "or not_in")
        return None
    if op in ("in", "not_in"):
        if not isinstance(value, (list, tuple)):
            problems.add(here, value, f"{op} needs a list, got {type_name(value)}; fix: write [{q(value)}] or use "
                         f"{field}_{'eq' if op == 'in' else 'ne'}")
            return None
        if len(value) == 0:
            problems.add(here, value, f"an empty list {'never' if op == 'in' else 'always'} matches; fix: list at "
                         "least one value or remove the condition")
            return None
        members = []
        ok = True
        for i, item in enumerate(value):
            good, canon = _canonical_scalar(field, kind, optional, item, f"{here}[{i}]", problems, False)
            ok = ok and good
            members.append(canon)
        if not ok:
            return None
        canon_value: Any = frozenset(members)
    else:
        if isinstance(value, (list, tuple, Mapping)) and not pair:
            problems.add(here, value, f"{op} compares with one value, got {type_name(value)}; fix: use "
                         f"{field}_in for a list of values")
            return None
        good, canon_value = _canonical_scalar(field, kind, optional, value, here, problems, op in NUMERIC_OPERATORS)
        if not good:
            return None
    return Condition(key=key, field=field, op=op, value=canon_value, test=_make_test(field, op, canon_value))


def compile_conditions(conditions: Any, path: str, problems: Problems) -> tuple[Condition, ...]:
    if conditions is None:
        return ()
    if not isinstance(conditions, Mapping):
        problems.add(path, conditions, f"conditions must be a mapping, got {type_name(conditions)}; fix: write "
                     "them as {batch_size_gte: 8, dtype: bfloat16}")
        return ()
    out = []
    for key, value in conditions.items():
        cond = compile_condition(key, value, path, problems)
        if cond is not None:
            out.append(cond)
    return tuple(out)
