"""Recording the dispatches of one model forward: the exact calls ``compare()`` replays.

A recorder stands in front of the model's orchestrator (the object the patched modules and the
attention function look up by name on every call) for one forward, forwards every call, and keeps the
first call of each distinct signature with its tensors cloned, counting repeats. The model's patch state
is restored afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch

from layerzero.tuning.kernel_compare import Call

__all__ = ["capture_calls", "forward_inputs", "recorder_on", "recording", "stand_in"]

T = TypeVar("T")


class _Recorder:
    """Stands in for a model's orchestrator for one forward: forwards every call and keeps the first
    call of each distinct signature (tensors cloned), counting repeats."""

    def __init__(self, real: Any, keep_inputs: bool = True):
        self.real = real
        self.keep_inputs = keep_inputs
        self.calls: dict[tuple, Call] = {}
        self.kernels: dict[str, dict[str, int]] = {}  # operation -> kernel id -> count

    def dispatch(self, operation: str, inputs: Mapping[str, Any], context: Any = None, mode: Any = None,
                 **kwargs: Any) -> Any:
        result = self.real.dispatch(operation, inputs, context, mode, **kwargs)
        per_op = self.kernels.setdefault(operation, {})
        per_op[result.kernel_id] = per_op.get(result.kernel_id, 0) + 1
        if self.keep_inputs:
            key = (operation, _signature(inputs), _signature(kwargs))
            seen = self.calls.get(key)
            if seen is None:
                self.calls[key] = Call(operation, _clone(inputs), _clone(kwargs))
            else:
                seen.calls += 1
        return result

    def call(self, operation: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any] | None = None) -> Any:
        """The output-only entry point ``layerzero.ops`` uses; recorded like ``dispatch``."""
        return self.dispatch(operation, inputs, **dict(kwargs or {})).output

    def __getattr__(self, name: str) -> Any:  # explain(), kernel_registry, ... of the real orchestrator
        return getattr(self.real, name)


def _signature(values: Mapping[str, Any]) -> tuple:
    out = []
    for k, v in sorted(values.items()):
        if isinstance(v, torch.Tensor):
            out.append((k, tuple(v.shape), v.dtype, str(v.device)))
        elif isinstance(v, (int, float, str, bool, type(None))):
            out.append((k, v))
        else:
            out.append((k, type(v).__name__))
    return tuple(out)


def _clone(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in values.items()}


@contextlib.contextmanager
def recording(model: torch.nn.Module, keep_inputs: bool = True, **patch_kwargs: Any) -> Iterator[_Recorder]:
    """Patch ``model`` (unless it already is, and no patch arguments are given), put a recorder in front
    of its orchestrator, and restore everything afterwards."""
    from layerzero_hf.lifecycle import is_patched, patch_report, patched

    if is_patched(model) and not patch_kwargs:
        report = patch_report(model)
        if report is not None and report.attn_implementation not in (None, "layerzero"):
            warnings.warn(f"the model is patched but its attention runs through Transformers' "
                          f"{report.attn_implementation!r} implementation, so attention is not compared; patch it "
                          "with attention=True (or unpatch it and let compare() patch it)", stacklevel=6)
        ctx: Any = contextlib.nullcontext(report)
    else:
        patch_kwargs.setdefault("attention", True)
        ctx = patched(model, **patch_kwargs)
    with ctx as report, recorder_on(report.orchestrator, keep_inputs) as recorder:
        yield recorder


@contextlib.contextmanager
def stand_in(name: str, make: Callable[[Any], T]) -> Iterator[T]:
    """Register ``make(real)`` as the orchestrator named ``name`` (what the model's patched modules and
    attention function look up on every call), ``real`` being the one registered now, and put the real
    one back afterwards, whatever happens."""
    from layerzero import ops

    real = ops.get_orchestrator(name)
    substitute = make(real)
    ops.register_orchestrator(name, substitute)
    try:
        yield substitute
    finally:
        ops.register_orchestrator(name, real)


def recorder_on(name: str, keep_inputs: bool = True) -> contextlib.AbstractContextManager[_Recorder]:
    """Put a recorder in front of the orchestrator registered as ``name`` for the duration."""
    return stand_in(name, lambda real: _Recorder(real, keep_inputs))


def forward_inputs(model: torch.nn.Module, inputs: Any, batch: int, seq_len: int) -> dict[str, Any]:
    """The forward's keyword arguments: the caller's, or random token ids of the model's vocabulary."""
    if inputs is None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if not vocab:
            raise ValueError("compare: the model has no config.vocab_size; pass inputs=... (a tensor of token "
                             "ids or a dict of forward arguments)")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        gen = torch.Generator().manual_seed(0)
        return {"input_ids": torch.randint(0, int(vocab), (batch, seq_len), generator=gen).to(device)}
    if isinstance(inputs, torch.Tensor):
        return {"input_ids": inputs}
    if isinstance(inputs, Mapping):
        return dict(inputs)
    raise TypeError(f"compare: inputs must be a tensor of token ids or a dict of forward arguments, got "
                    f"{type(inputs).__name__}")


def capture_calls(model: torch.nn.Module, inputs: Any = None, *, batch: int = 1, seq_len: int = 32,
                  **patch_kwargs: Any) -> tuple[list[Call], Any]:
    """The distinct dispatches of one forward of ``model`` (patched for the duration if it is not) and
    the orchestrator that served them (for explain)."""
    kwargs = forward_inputs(model, inputs, batch, seq_len)
    with recording(model, **patch_kwargs) as recorder, torch.no_grad():
        model(**kwargs)
    return list(recorder.calls.values()), recorder.real
