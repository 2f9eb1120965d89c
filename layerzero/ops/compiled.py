"""The implementations and autograd of the ``layerzero::*`` custom ops, bound when this module is imported.

Each operation declares its custom ops (schema and fake) in :mod:`layerzero.operations`; binding their
implementation here keeps the dispatcher out of the foundation floor. An op's implementation resolves the
orchestrator by name and dispatches, so kernel selection still happens at run time, inside the op, with
the same policy, fallbacks and breakers as eager mode. The ops mutate nothing and always return fresh,
contiguous tensors in the contract's dtype (never an alias of an input), which is what their fakes promise
the compiler.

The custom ops are opaque to autograd, so each gets a backward that recomputes the operation with the fp32
reference and differentiates it, inside one more opaque op (``layerzero::recompute_backward``) so that
AOTAutograd never traces the dispatcher or the reference. This keeps compiled training correct; the
backward runs at reference speed, and attention dropout (a random mask the recompute cannot replay) is
refused with an explicit error.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import torch

from layerzero.operations import CustomOp, custom_op, custom_ops
from layerzero.ops.orchestrators import fresh, get_orchestrator, run

__all__ = ["bind_all"]


def _implementation(spec: CustomOp) -> Callable[..., Any]:
    def implementation(*args: Any) -> Any:
        named = dict(zip(spec.arg_names, args))
        operation, inputs, options = spec.to_call(named)
        out = run(get_orchestrator(named["orchestrator"]), operation, inputs, options)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        tensors = tuple(named[n] for n in spec.tensor_names)
        made = tuple(fresh(o, dtype, tensors) for o, dtype in zip(outs, spec.out_dtypes(named)))
        return made if len(made) > 1 else made[0]

    implementation.__name__ = f"{spec.name}_implementation"
    return implementation


@torch.library.custom_op("layerzero::recompute_backward", mutates_args=())
def _recompute_backward_op(
    op: str, options_json: str, tensors: list[Optional[torch.Tensor]], grads: list[Optional[torch.Tensor]],
    wanted: list[bool],
) -> list[torch.Tensor]:
    spec = custom_op(op)
    options = json.loads(options_json)
    targets = [t for t, want in zip(tensors, wanted) if t is not None and want]
    if not targets:
        return []

    def forward(*diff: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(diff)
        leaves = {n: (next(it) if t is not None and want else t)
                  for n, t, want in zip(spec.tensor_names, tensors, wanted)}
        out = spec.reference(leaves, options)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    # torch.func.vjp rather than torch.autograd: a custom op's body runs below the Autograd dispatch key,
    # where tensors record no graph, but functorch transforms work there.
    outs, vjp = torch.func.vjp(forward, *targets)
    cotangents = tuple(torch.zeros_like(o) if g is None else g.to(o.dtype) for o, g in zip(outs, grads))
    found = vjp(cotangents)
    inputs = (*tensors, *grads)
    return [fresh(g, t.dtype, inputs) for t, g in zip(targets, found)]


@_recompute_backward_op.register_fake
def _(op, options_json, tensors, grads, wanted):
    return [t.new_empty(t.shape) for t, want in zip(tensors, wanted) if t is not None and want]


def _register_autograd(spec: CustomOp) -> None:
    arg_names, tensor_names = spec.arg_names, spec.tensor_names
    tensor_pos = [arg_names.index(n) for n in tensor_names]

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.tensor_pos = tensor_pos
        ctx.options = {n: v for n, v in zip(arg_names, inputs) if n not in tensor_names and n != "orchestrator"}
        ctx.save_for_backward(*(inputs[i] for i in tensor_pos))

    def backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:
        tensors = list(ctx.saved_tensors)
        wanted = [
            bool(ctx.needs_input_grad[i]) and t is not None and t.is_floating_point()
            for i, t in zip(ctx.tensor_pos, tensors)
        ]
        result: list[Any] = [None] * len(arg_names)
        if not any(wanted):
            return tuple(result)
        got = iter(torch.ops.layerzero.recompute_backward(
            spec.name, json.dumps(ctx.options), tensors, list(grads), wanted
        ))
        for i, want in zip(ctx.tensor_pos, wanted):
            if want:
                result[i] = next(got)
        return tuple(result)

    spec.definition.register_autograd(backward, setup_context=setup_context)


def bind_all() -> None:
    """Bind the implementation and autograd of every declared custom op (idempotent: re-binding replaces)."""
    for spec in custom_ops():
        spec.definition.register_kernel(None, _implementation(spec))
        _register_autograd(spec)


bind_all()
