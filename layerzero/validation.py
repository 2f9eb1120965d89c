"""Input validation of every operation, before any kernel runs, and the tolerances kernels are held to.

Why here, at the bottom of the package: a caller's mistake must be reported as the caller's mistake. If a
bad call reached a kernel, the kernel would raise (or, worse, return something), the dispatcher would count
that as a kernel fault, open the kernel's circuit breaker and refuse valid calls from everybody else for
the breaker's cool-down. So the dispatcher validates a call

* on every cache miss (the first call of each shape bucket, before selection), and
* whenever a kernel raises (a cached call whose non-key facts are wrong, e.g. a weight of the wrong length),

and raises :class:`~layerzero.errors.InvalidInputError` naming the argument, the value and the fix. The
cached hot path pays nothing: the facts that the cache key holds (operation, ranks, dtypes, devices,
options) are checked on the miss that created the entry, and everything else is checked when it makes a
kernel fail.

The checks shared by every operation (unknown arguments, missing or mistyped tensors, devices) live here;
the shape and option checks of each operation live with it (``Operation.check_inputs`` in
:mod:`layerzero.operations`). :func:`problems` returns every problem found, so a caller fixing one mistake is not sent back for the next.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

import torch

from layerzero import operations as _operations
from layerzero.errors import InvalidInputError
from layerzero.operations import OPERATIONS
from layerzero.operations.base import FLOATS, Problem

__all__ = [
    "TOLERANCES",
    "compare_outputs",
    "outputs_match",
    "problems",
    "tolerance",
    "validate",
]

# Options that are tensors whenever given, of any operation: a call passing one that its operation does not
# take hears that it is unknown, and also what is wrong with its value.
_TENSOR_OPTIONS: tuple[str, ...] = tuple(dict.fromkeys(
    name for op in _operations.all_operations() for name in op.tensor_options
))

# (atol, rtol) per dtype, for a kernel's output against the fp32 reference. Low-precision kernels round
# inputs and outputs and accumulate differently from the oracle; attention sums over keys, so it gets a
# little more room than elementwise operations.
TOLERANCES: dict[torch.dtype, dict[str, tuple[float, float]]] = {
    torch.float32: {"attention": (2e-4, 2e-4), "default": (1e-5, 1e-5)},
    torch.float16: {"attention": (4e-3, 4e-3), "default": (2e-3, 2e-3)},
    torch.bfloat16: {"attention": (3e-2, 3e-2), "default": (1.6e-2, 1.6e-2)},
}


def tolerance(operation: str, dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for an output of ``dtype`` of ``operation`` against the fp32 reference."""
    table = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    op = _operations.find(operation)
    if op is None:
        return table["attention" if _operations.is_attention(str(operation)) else "default"]
    return table[op.tolerance_class]


def compare_outputs(operation: str, out: Any, expected: Any, arguments: Mapping[str, Any] | None = None) -> str | None:
    """Why ``out`` does not match the reference output ``expected`` (per-dtype tolerance, NaN/Inf where the
    reference has none), or None when it does. With the call's ``arguments``, elements the operation's
    contract leaves undefined (:meth:`~layerzero.operations.base.Operation.defined_rows`: fully masked
    attention rows) are not compared, and the relative tolerance scales with the operation's
    :meth:`~layerzero.operations.base.Operation.error_scales` (RoPE: the magnitude of its rounded terms)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = expected if isinstance(expected, (tuple, list)) else (expected,)
    if len(outs) != len(refs):
        return f"returned {len(outs)} tensors, the reference {len(refs)}"
    defined, scales = _comparison_facts(operation, arguments)
    for i, (o, r) in enumerate(zip(outs, refs)):
        if not isinstance(o, torch.Tensor):
            return f"output {i} is {type(o).__name__}, not a tensor"
        if tuple(o.shape) != tuple(r.shape):
            return f"output {i} has shape {tuple(o.shape)}, the reference {tuple(r.shape)}"
        of, rf, bad_ref, ok, (atol, rtol) = _within_tolerance(operation, i, o, r, defined, scales)
        if bool((~torch.isfinite(of) & ~bad_ref).any()):
            return f"output {i} has NaN or Inf where the reference has none"
        if not bool(ok.all()):
            err = float(((of - rf).abs().masked_fill(bad_ref, 0)).max())
            return f"output {i} max error {err:.4g} > tolerance (atol {atol:g}, rtol {rtol:g}, {o.dtype})"
    return None


def outputs_match(operation: str, out: Any, expected: Any, arguments: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The verdict of :func:`compare_outputs` as a bool tensor on the outputs' device, without a host sync
    (the canary's sampled checks on CUDA read it once the device has finished). Same tolerances, undefined
    elements and error scales; outputs are assumed to have the reference's shapes."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = expected if isinstance(expected, (tuple, list)) else (expected,)
    defined, scales = _comparison_facts(operation, arguments)
    verdict = None
    for i, (o, r) in enumerate(zip(outs, refs)):
        ok = _within_tolerance(operation, i, o, r, defined, scales)[3].all()
        verdict = ok if verdict is None else verdict & ok
    return verdict if verdict is not None else torch.tensor(True)


def _comparison_facts(operation: str, arguments: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """(defined elements, error scales) of a call, or (None, None) without its arguments."""
    if not arguments:
        return None, None
    op = _operations.find(operation)
    if op is None:
        return None, None
    return op.defined_rows(arguments), op.error_scales(arguments)


def _within_tolerance(operation: str, i: int, o: torch.Tensor, r: torch.Tensor, defined: Any, scales: Any) -> tuple:
    """(output, reference, reference-not-finite mask, within-tolerance mask, (atol, rtol)) of output ``i``,
    in fp32; an element the contract leaves undefined takes the reference's value."""
    atol, rtol = tolerance(operation, o.dtype)
    of, rf = o.detach().float(), r.detach().float().to(o.device)
    if defined is not None and i == 0:
        of = torch.where(defined.to(of.device), of, rf)
    bad_ref = ~torch.isfinite(rf)
    magnitude = rf.abs() if scales is None else torch.maximum(rf.abs(), scales[i].to(rf.device))
    return of, rf, bad_ref, bad_ref | ((of - rf).abs() <= atol + rtol * magnitude), (atol, rtol)


def defined_rows(operation: str, arguments: Mapping[str, Any] | None) -> torch.Tensor | None:
    """The operation's mask of defined output elements for these call arguments, or None (all defined)."""
    if not arguments:
        return None
    op = _operations.find(operation)
    return op.defined_rows(arguments) if op is not None else None


# ---------------------------------------------------------------------------------------------- entry points
def validate(operation: str, inputs: Any, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidInputError` listing every problem of this call; return when there is none."""
    found = problems(operation, inputs, kwargs)
    if found:
        raise InvalidInputError(operation, found)


def problems(operation: str, inputs: Any, kwargs: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a call: unknown operation or keyword, missing or mistyped inputs, shapes, dtypes,
    devices and option values that the operation's contract rules out."""
    op = _operations.find(operation)
    if op is None:
        close = difflib.get_close_matches(str(operation), OPERATIONS, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"use one of {', '.join(OPERATIONS)}"
        return [("operation", operation, f"unknown operation; {hint}")]
    if not isinstance(inputs, Mapping):
        return [("inputs", _type(inputs), "inputs must be a dict of named tensors, e.g. {'x': x, 'weight': w}")]
    contract = op.contract
    allowed = contract.parameters
    found: list[Problem] = []
    for name in [*inputs, *kwargs]:
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"{operation} takes {', '.join(sorted(allowed))}"
            found.append((name, _clip(inputs.get(name, kwargs.get(name))), f"unknown argument; {hint}"))
    args = {**kwargs, **inputs}
    unknown = len(found)
    for name in contract.inputs:
        if args.get(name) is None and name not in op.optional_inputs:
            found.append((name, None, f"missing input tensor; pass {name}=<tensor>"))
    tensors: dict[str, torch.Tensor] = {}
    for name in (*contract.inputs, *_TENSOR_OPTIONS):
        value = args.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            found.append((name, _type(value), "expected a torch.Tensor"))
            continue
        tensors[name] = value
        if name != "attn_mask" and value.dtype not in FLOATS:
            found.append((name, value.dtype, "expected a floating-point tensor (float16, bfloat16, float32 or "
                          "float64); cast it with .to(torch.bfloat16) or similar"))
    devices = {str(t.device) for t in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"{n} on {t.device}" for n, t in tensors.items())
        found.append(("inputs", where, "all tensors must be on one device; move them with .to(device)"))
    if len(found) > unknown:  # tensors missing or unusable: the shape checks below would only add noise
        return found
    op.check_inputs(args, found)
    return found


def _type(value: Any) -> str:
    return type(value).__name__


def _clip(value: Any, limit: int = 80) -> Any:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    text = repr(value)
    return value if len(text) <= limit else text[: limit - 3] + "..."
