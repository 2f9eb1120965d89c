"""How LayerZero's pointwise and norm operations appear in a ``torch.compile`` graph.

* ``"opaque"`` (the default): each call is a ``layerzero::*`` custom op. Inductor cannot look inside it, so
  the dispatcher still picks the kernel at run time, with the policy, fallbacks, breakers and telemetry of
  eager mode; but Inductor cannot fuse the norm with the residual add before it or the projection after it.
* ``"inline"``: the call is traced as the operation's plain-torch kernel (``torch_rms_norm``,
  ``torch_rope``, ...: the same code eager mode runs when it picks those), so Inductor sees ATen ops and
  fuses them with their neighbours as it does for an unpatched model. No dispatch happens for these calls
  inside the compiled graph: no run-time kernel choice, fallback, breaker or telemetry for them.

Which one is faster depends on the model, the shapes and what Inductor makes of the neighbours, so it is a
measurement, not a rule: ``benchmarks/e2e.py --compile-shapes`` measures compiled prefill and the
compiled static-cache decode both ways. Attention is always a custom op (the kernel choice there is the
point, and SDPA traced by Inductor has no softcap, sinks or sliding window).

The strategy is read while ``torch.compile`` traces: set it before compiling (a change recompiles on the
next call, since the traced code depends on it).
"""

from __future__ import annotations

from typing import Callable, Iterable

from layerzero.kernels import torch_ops

__all__ = ["INLINABLE", "compile_strategy", "inlined", "set_compile_strategy"]

# operation -> the plain-torch kernel traced in its place under "inline" (each takes the operation's
# canonical arguments, like every kernel)
INLINABLE: dict[str, Callable] = {
    "rms_norm": torch_ops.torch_rms_norm,
    "layer_norm": torch_ops.torch_layer_norm,
    "rope": torch_ops.torch_rope,
    "swiglu": torch_ops.torch_swiglu,
    "geglu": torch_ops.torch_geglu,
}
STRATEGIES = ("opaque", "inline")

_inlined: dict[str, Callable] = {}


def set_compile_strategy(strategy: str = "opaque", operations: Iterable[str] | None = None) -> None:
    """Trace ``operations`` (default: all of :data:`INLINABLE`) as custom ops (``"opaque"``) or as their
    plain-torch kernels (``"inline"``) under ``torch.compile``; the others keep their strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"compile strategy {strategy!r} is not one of {', '.join(map(repr, STRATEGIES))}")
    names = list(INLINABLE) if operations is None else list(operations)
    unknown = [n for n in names if n not in INLINABLE]
    if unknown:
        raise ValueError(
            f"operations {unknown} cannot be inlined under torch.compile; choose from {', '.join(INLINABLE)} "
            "(attention always stays a custom op)"
        )
    for name in names:
        if strategy == "inline":
            _inlined[name] = INLINABLE[name]
        else:
            _inlined.pop(name, None)


def compile_strategy() -> dict[str, str]:
    """The strategy of every operation that has a choice."""
    return {name: "inline" if name in _inlined else "opaque" for name in INLINABLE}


def inlined(operation: str) -> Callable | None:
    """The kernel to trace for ``operation`` under compile, or None for the custom op."""
    return _inlined.get(operation)
