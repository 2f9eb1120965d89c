"""How LayerZero's pointwise and norm operations appear in a ``torch.compile`` graph.

* ``"opaque"``: each call is a ``layerzero::*`` custom op. Inductor cannot look inside it, so
  the dispatcher still picks the kernel at run time, with the policy, fallbacks, breakers and telemetry of
  eager mode; but Inductor cannot fuse the norm with the residual add before it or the projection after it.
* ``"inline"`` (the default): the call is traced as the operation's plain-torch kernel (``torch_rms_norm``,
  ``torch_rope``, ...: the same code eager mode runs when it picks those), so Inductor sees ATen ops and
  fuses them with their neighbours as it does for an unpatched model. No dispatch happens for these calls
  inside the compiled graph: no run-time kernel choice, fallback, breaker or telemetry for them.

Which one is faster depends on the model, the shapes and what Inductor makes of the neighbours, so it is a
measurement, not a rule: ``benchmarks/e2e.py --compile-shapes`` measures compiled prefill and the
compiled static-cache decode both ways. "inline" is the default because it was faster in every case
measured on an H200 (Llama-3.2-1B and Qwen3-1.7B shapes: compiled prefill and the CUDA-graph static-cache
decode; README, "Performance"), and per operation (``benchmarks/compile_strategies.py``: Llama-3.2-1B at 8 x 1024,
norms, RoPE or SwiGLU alone kept opaque measured 0.93-0.99x eager LayerZero against 0.965x all inline, ranges
overlapping; no mix was faster beyond the noise). "opaque" remains for what only dispatch gives inside a graph: a policy's
kernel choice, fallbacks and telemetry per call (the vLLM plugin selects it in its process: a layer runs
LayerZero there only when its policy chose a LayerZero kernel, and that choice must still dispatch). Attention is always a custom op (the kernel choice there is the
point, and SDPA traced by Inductor has no softcap, sinks or sliding window).

The strategy is read while ``torch.compile`` traces: set it before compiling (a change recompiles on the
next call, since the traced code depends on it).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from layerzero.kernels import torch_ops

__all__ = ["DEFAULT_STRATEGY", "INLINABLE", "compile_strategy", "compile_strategy_set_to", "inlined", "set_compile_strategy"]

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
DEFAULT_STRATEGY = "inline"

_inlined: dict[str, Callable] = {}  # filled by set_compile_strategy(DEFAULT_STRATEGY) below


def set_compile_strategy(strategy: str = DEFAULT_STRATEGY, operations: Iterable[str] | None = None) -> None:
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


set_compile_strategy(DEFAULT_STRATEGY)


@contextmanager
def compile_strategy_set_to(strategy: str, operations: Iterable[str] | None = None) -> Iterator[None]:
    """:func:`set_compile_strategy` for a ``with`` block; the strategies before it come back afterwards
    (compile inside the block: a graph traced there keeps what it traced)."""
    before = dict(_inlined)
    set_compile_strategy(strategy, operations)
    try:
        yield
    finally:
        _inlined.clear()
        _inlined.update(before)
