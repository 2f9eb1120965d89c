"""The operations LayerZero dispatches, one :class:`~layerzero.operations.base.Operation` object each.

One signature per operation makes kernels interchangeable and testable against one reference (the table
in docs/architecture.md): every kernel for an operation accepts exactly its contract's keyword arguments
(inputs first, then options) and returns the documented output. Each family module documents its
operations: :mod:`~layerzero.operations.attention`, :mod:`~layerzero.operations.norm`,
:mod:`~layerzero.operations.rope`, :mod:`~layerzero.operations.activation`.

Adding an operation is one new module here (an ``Operation`` subclass, its instances in ``OPERATIONS``
and its custom ops in ``CUSTOM_OPS``), listed in ``_FAMILIES``, plus kernel adapters.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Iterator, Mapping

from layerzero.operations import activation, attention, norm, rope
from layerzero.operations.attention import ATTENTION_OPS, default_is_causal
from layerzero.operations.base import Operation, OperationContract, check_against, implements
from layerzero.operations.custom_ops import CustomOp, custom_op, custom_ops

__all__ = [
    "ATTENTION_OPS",
    "CONTRACTS",
    "OPERATIONS",
    "CustomOp",
    "Operation",
    "OperationContract",
    "all_operations",
    "check_outputs",
    "contract",
    "custom_op",
    "custom_ops",
    "default_is_causal",
    "expand",
    "find",
    "get",
    "implements",
    "is_attention",
    "matches",
]

_FAMILIES = (attention, norm, rope, activation)
_REGISTRY: dict[str, Operation] = {op.name: op for family in _FAMILIES for op in family.OPERATIONS}

CONTRACTS: dict[str, OperationContract] = {name: op.contract for name, op in _REGISTRY.items()}
OPERATIONS: tuple[str, ...] = tuple(_REGISTRY)


def get(operation: str) -> Operation:
    """The :class:`Operation` named ``operation`` (KeyError naming the known ones otherwise)."""
    try:
        return _REGISTRY[operation]
    except (KeyError, TypeError):
        raise KeyError(
            f"unknown operation {operation!r}; known operations: {', '.join(OPERATIONS)}"
        ) from None


def find(operation: Any) -> Operation | None:
    """The :class:`Operation` named ``operation``, or None when there is none."""
    return _REGISTRY.get(operation) if isinstance(operation, str) else None


def all_operations() -> Iterator[Operation]:
    """Every operation, in the order of :data:`OPERATIONS`."""
    return iter(_REGISTRY.values())


def is_attention(operation: str) -> bool:
    return operation.startswith("attention")


def matches(pattern: str, operation: str) -> bool:
    """Glob match of an operation pattern (``attention.*``) against an operation name."""
    return pattern == operation or fnmatchcase(operation, pattern)


def expand(pattern: str) -> tuple[str, ...]:
    """Every known operation a pattern covers."""
    return tuple(op for op in OPERATIONS if matches(pattern, op))


def contract(operation: str) -> OperationContract:
    return get(operation).contract


def check_outputs(operation: str, inputs: Mapping[str, Any], out: Any) -> str | None:
    """Why a kernel's output is wrong (count, shape, dtype, NaN/Inf), or None. The dispatcher runs this
    when ``check_outputs`` is on; an unknown operation gets the type and NaN/Inf checks only."""
    op = find(operation)
    tensors = out if isinstance(out, tuple) else (out,)
    expected = op.expected_outputs(inputs, len(tensors)) if op is not None else []
    return check_against(expected, out)
