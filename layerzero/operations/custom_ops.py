"""``torch.library`` custom ops (``layerzero::<name>``): their schema and fake, declared by each operation.

Why split from the implementation: a custom op's schema and fake (meta) function are pure shape logic that
belongs with the operation they describe, while its implementation calls the dispatcher, which sits many
floors above. So an operation module declares its ops here with a typed signature stub and a fake; the
functional API (:mod:`layerzero.ops`) binds the implementation and the autograd formula when it is
imported. Calling an op before that raises an error that says so.

Each :class:`CustomOp` also says how its flat arguments map to a dispatcher call ``(operation, inputs,
options)``, the dtypes of its outputs, and how to recompute its forward with the fp32 reference (used by
the compiled backward).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from layerzero.errors import LayerZeroError

Call = tuple[str, dict[str, Any], dict[str, Any]]  # (operation, inputs, options)

__all__ = ["CustomOp", "custom_op", "custom_ops", "define", "unbound"]


@dataclass(frozen=True)
class CustomOp:
    """One ``layerzero::<name>`` op. ``arg_names`` are its arguments in order, ``tensor_names`` the tensor
    ones; ``to_call`` maps named arguments to a dispatcher call, ``out_dtypes`` gives each output's dtype
    and ``reference`` recomputes the forward from ``(tensors, options)`` with the fp32 reference."""

    name: str
    definition: Any  # torch._library.custom_ops.CustomOpDef
    arg_names: tuple[str, ...]
    tensor_names: tuple[str, ...]
    to_call: Callable[[Mapping[str, Any]], Call]
    out_dtypes: Callable[[Mapping[str, Any]], tuple[torch.dtype, ...]]
    reference: Callable[[dict[str, Any], dict[str, Any]], Any]


_CUSTOM_OPS: dict[str, CustomOp] = {}


def unbound(name: str) -> LayerZeroError:
    """The error of a custom op called before :mod:`layerzero.ops` bound its implementation."""
    return LayerZeroError(f"layerzero::{name} runs through the dispatcher; import layerzero.ops before calling it")


def define(
    name: str,
    signature: Callable[..., Any],
    fake: Callable[..., Any],
    to_call: Callable[[Mapping[str, Any]], Call],
    out_dtypes: Callable[[Mapping[str, Any]], tuple[torch.dtype, ...]],
    reference: Callable[[dict[str, Any], dict[str, Any]], Any],
) -> CustomOp:
    """Declare ``layerzero::<name>`` with the schema of ``signature`` (a typed stub) and its fake."""
    definition = torch.library.custom_op(f"layerzero::{name}", signature, mutates_args=())
    definition.register_fake(fake)
    params = inspect.signature(signature).parameters
    tensors = tuple(n for n, p in params.items() if "Tensor" in str(p.annotation))
    op = CustomOp(name, definition, tuple(params), tensors, to_call, out_dtypes, reference)
    _CUSTOM_OPS[name] = op
    return op


def custom_op(name: str) -> CustomOp:
    """The custom op ``layerzero::<name>`` (KeyError when unknown)."""
    return _CUSTOM_OPS[name]


def custom_ops() -> tuple[CustomOp, ...]:
    """Every declared custom op, in declaration order."""
    return tuple(_CUSTOM_OPS.values())
