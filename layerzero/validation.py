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

:func:`problems` returns every problem found, so a caller fixing one mistake is not sent back for the next.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Mapping

import torch

from layerzero.errors import InvalidInputError
from layerzero.operations import CONTRACTS, OPERATIONS, is_attention

__all__ = [
    "TOLERANCES",
    "compare_outputs",
    "problems",
    "tolerance",
    "validate",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_OPTIONAL_INPUTS = {"weight", "bias", "attn_mask", "sinks", "residual"}

Problem = tuple[str, Any, str]  # (argument, value, message with the fix)

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
    return table["attention" if is_attention(operation) else "default"]


def compare_outputs(operation: str, out: Any, expected: Any) -> str | None:
    """Why ``out`` does not match the reference output ``expected`` (per-dtype tolerance, NaN/Inf where the
    reference has none), or None when it does."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = expected if isinstance(expected, (tuple, list)) else (expected,)
    if len(outs) != len(refs):
        return f"returned {len(outs)} tensors, the reference {len(refs)}"
    for i, (o, r) in enumerate(zip(outs, refs)):
        if not isinstance(o, torch.Tensor):
            return f"output {i} is {type(o).__name__}, not a tensor"
        if tuple(o.shape) != tuple(r.shape):
            return f"output {i} has shape {tuple(o.shape)}, the reference {tuple(r.shape)}"
        atol, rtol = tolerance(operation, o.dtype)
        of, rf = o.detach().float(), r.detach().float().to(o.device)
        bad_ref = ~torch.isfinite(rf)
        if bool((~torch.isfinite(of) & ~bad_ref).any()):
            return f"output {i} has NaN or Inf where the reference has none"
        ok = bad_ref | ((of - rf).abs() <= atol + rtol * rf.abs())
        if not bool(ok.all()):
            err = float(((of - rf).abs().masked_fill(bad_ref, 0)).max())
            return f"output {i} max error {err:.4g} > tolerance (atol {atol:g}, rtol {rtol:g}, {o.dtype})"
    return None


# ---------------------------------------------------------------------------------------------- entry points
def validate(operation: str, inputs: Any, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidInputError` listing every problem of this call; return when there is none."""
    found = problems(operation, inputs, kwargs)
    if found:
        raise InvalidInputError(operation, found)


def problems(operation: str, inputs: Any, kwargs: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a call: unknown operation or keyword, missing or mistyped inputs, shapes, dtypes,
    devices and option values that the operation's contract rules out."""
    if not isinstance(operation, str) or operation not in CONTRACTS:
        close = difflib.get_close_matches(str(operation), OPERATIONS, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"use one of {', '.join(OPERATIONS)}"
        return [("operation", operation, f"unknown operation; {hint}")]
    if not isinstance(inputs, Mapping):
        return [("inputs", _type(inputs), "inputs must be a dict of named tensors, e.g. {'x': x, 'weight': w}")]
    contract = CONTRACTS[operation]
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
        if args.get(name) is None and name not in _OPTIONAL_INPUTS:
            found.append((name, None, f"missing input tensor; pass {name}=<tensor>"))
    tensors: dict[str, torch.Tensor] = {}
    for name in (*contract.inputs, "residual", "attn_mask", "sinks"):
        value = args.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            found.append((name, _type(value), "expected a torch.Tensor"))
            continue
        tensors[name] = value
        if name != "attn_mask" and value.dtype not in _FLOATS:
            found.append((name, value.dtype, "expected a floating-point tensor (float16, bfloat16, float32 or "
                          "float64); cast it with .to(torch.bfloat16) or similar"))
    devices = {str(t.device) for t in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"{n} on {t.device}" for n, t in tensors.items())
        found.append(("inputs", where, "all tensors must be on one device; move them with .to(device)"))
    if len(found) > unknown:  # tensors missing or unusable: the shape checks below would only add noise
        return found
    _CHECKS[_family(operation)](args, found)
    return found


# ---------------------------------------------------------------------------------------------- per operation
def _attention(a: Mapping[str, Any], found: list[Problem]) -> None:
    q, k, v = a["query"], a["key"], a["value"]
    before = len(found)
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.dim() != 4:
            found.append((name, tuple(t.shape), "expected rank 4 (batch, seq, heads, head_dim); Transformers' "
                          "(batch, heads, seq, head_dim) tensors need .transpose(1, 2)"))
    if len(found) > before:
        return
    if not (q.dtype == k.dtype == v.dtype):
        found.append(("key", (q.dtype, k.dtype, v.dtype), "query, key and value must share one dtype"))
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        found.append(("key", (q.shape[0], k.shape[0], v.shape[0]), "query, key and value batch sizes differ"))
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        found.append(("value", tuple(v.shape), f"key {tuple(k.shape)} and value must have the same seq and heads"))
    if q.shape[3] != k.shape[3]:
        found.append(("key", tuple(k.shape), f"head_dim {k.shape[3]} != query head_dim {q.shape[3]}"))
    if k.shape[2] == 0 or q.shape[2] % k.shape[2]:
        found.append(("key", tuple(k.shape), f"query heads {q.shape[2]} must be a multiple of key/value heads "
                      f"{k.shape[2]} (grouped-query attention)"))
    mask = a.get("attn_mask")
    if mask is not None:
        if mask.dtype != torch.bool and mask.dtype not in _FLOATS:
            found.append(("attn_mask", mask.dtype, "pass a bool mask (True = attend) or a float additive mask; "
                          "an integer 0/1 mask would be added to the scores: use mask.bool()"))
        else:
            target = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
            try:
                torch.broadcast_shapes(tuple(mask.shape), target)
            except RuntimeError:
                found.append(("attn_mask", tuple(mask.shape), f"not broadcastable to (batch, heads, seq_q, seq_k) "
                              f"= {target}"))
    _bool_option(a, "is_causal", found)
    scale = a.get("scale")
    if scale is not None and not _positive(scale):
        found.append(("scale", scale, "expected a positive finite float (None means 1/sqrt(head_dim))"))
    p = a.get("dropout_p", 0.0)
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= float(p) < 1.0:
        found.append(("dropout_p", p, "expected a float in [0, 1)"))
    window = a.get("sliding_window")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        found.append(("sliding_window", window, "expected a positive integer number of keys (None for no window)"))
    softcap = a.get("softcap")
    if softcap is not None and not _positive(softcap):
        found.append(("softcap", softcap, "expected a positive finite float (None for no soft-capping)"))
    sinks = a.get("sinks")
    if sinks is not None and tuple(sinks.shape) != (q.shape[2],):
        found.append(("sinks", tuple(sinks.shape), f"expected one logit per query head: shape ({q.shape[2]},)"))


def _rms_norm(a: Mapping[str, Any], found: list[Problem]) -> None:
    x = a["x"]
    _norm_common(a, x, found)
    casting = a.get("casting", "llama")
    if casting not in ("llama", "gemma", "none"):
        found.append(("casting", casting, "expected 'llama', 'gemma' or 'none'"))
    offset = a.get("offset", 0.0)
    if not isinstance(offset, (int, float)) or isinstance(offset, bool) or not math.isfinite(offset):
        found.append(("offset", offset, "expected a finite float (Gemma: 1.0)"))
    residual = a.get("residual")
    if residual is not None:
        try:
            torch.broadcast_shapes(tuple(residual.shape), tuple(x.shape))
        except RuntimeError:
            found.append(("residual", tuple(residual.shape), f"not broadcastable to x's shape {tuple(x.shape)}"))


def _layer_norm(a: Mapping[str, Any], found: list[Problem]) -> None:
    _norm_common(a, a["x"], found)
    bias = a.get("bias")
    hidden = a["x"].shape[-1] if a["x"].dim() else None
    if bias is not None and tuple(bias.shape) != (hidden,):
        found.append(("bias", tuple(bias.shape), f"expected shape ({hidden},), the last dimension of x"))


def _norm_common(a: Mapping[str, Any], x: torch.Tensor, found: list[Problem]) -> None:
    if x.dim() < 1:
        found.append(("x", tuple(x.shape), "expected at least one dimension (..., hidden)"))
        return
    weight = a.get("weight")
    if weight is not None and tuple(weight.shape) != (x.shape[-1],):
        found.append(("weight", tuple(weight.shape), f"expected shape ({x.shape[-1]},), the last dimension of x "
                      f"{tuple(x.shape)}"))
    eps = a.get("eps", 1e-6)
    if not _positive(eps):
        found.append(("eps", eps, "expected a positive finite float, e.g. 1e-6"))


def _rope(a: Mapping[str, Any], found: list[Problem]) -> None:
    q, k, cos, sin = a["q"], a["k"], a["cos"], a["sin"]
    layout = a.get("layout", "bhsd")
    if layout not in ("bhsd", "bshd"):
        found.append(("layout", layout, "expected 'bhsd' (Transformers) or 'bshd'"))
        return
    before = len(found)
    for name, t in (("q", q), ("k", k)):
        if t.dim() != 4:
            found.append((name, tuple(t.shape), f"expected rank 4 in layout {layout!r}"))
    if len(found) > before:
        return
    seq_dim = 2 if layout == "bhsd" else 1
    if q.shape[0] != k.shape[0] or q.shape[seq_dim] != k.shape[seq_dim] or q.shape[3] != k.shape[3]:
        found.append(("k", tuple(k.shape), f"batch, seq and head_dim must match q {tuple(q.shape)} ({layout})"))
    if tuple(cos.shape) != tuple(sin.shape):
        found.append(("sin", tuple(sin.shape), f"must have the shape of cos {tuple(cos.shape)}"))
    rot = cos.shape[-1] if cos.dim() else 0
    if rot < 2 or rot % 2 or rot > q.shape[3]:
        found.append(("cos", tuple(cos.shape), f"last dimension (rotary dim) must be even and <= head_dim "
                      f"{q.shape[3]}"))
    elif cos.dim() >= 2 and cos.shape[-2] not in (1, q.shape[seq_dim]):
        found.append(("cos", tuple(cos.shape), f"second-to-last dimension must be the sequence length "
                      f"{q.shape[seq_dim]} (tables for these positions)"))
    _bool_option(a, "interleaved", found)


def _gated(a: Mapping[str, Any], found: list[Problem]) -> None:
    gate, up = a["gate"], a["up"]
    if tuple(gate.shape) != tuple(up.shape):
        found.append(("up", tuple(up.shape), f"must have the shape of gate {tuple(gate.shape)}"))
    if gate.dtype != up.dtype:
        found.append(("up", up.dtype, f"must have the dtype of gate ({gate.dtype})"))
    approximate = a.get("approximate", "tanh")
    if approximate not in ("tanh", "none"):
        found.append(("approximate", approximate, "expected 'tanh' or 'none'"))


_CHECKS: dict[str, Callable[[Mapping[str, Any], list[Problem]], None]] = {
    "attention": _attention,
    "rms_norm": _rms_norm,
    "layer_norm": _layer_norm,
    "rope": _rope,
    "swiglu": _gated,
    "geglu": _gated,
}


def _family(operation: str) -> str:
    return "attention" if is_attention(operation) else operation


def _bool_option(a: Mapping[str, Any], name: str, found: list[Problem]) -> None:
    value = a.get(name)
    if value is not None and not isinstance(value, bool):
        found.append((name, value, "expected True or False"))


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _type(value: Any) -> str:
    return type(value).__name__


def _clip(value: Any, limit: int = 80) -> Any:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    text = repr(value)
    return value if len(text) <= limit else text[: limit - 3] + "..."
