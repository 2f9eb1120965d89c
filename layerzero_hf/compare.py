"""Kernel comparison for notebooks: every eligible kernel on the shapes a real model produces.

``compare(model)`` runs one forward of the model patched by LayerZero (attention included) with a
recording orchestrator in front of the model's own (:mod:`layerzero_hf.capture`), so it sees the exact
(operation, inputs, options) of every dispatch: the real shapes, dtypes, GQA ratios, RoPE layouts and norm
casting modes, not a guess from the config. Each distinct call is then replayed through every kernel the
model's policy finds eligible (or the kernels you name), timed, and checked against the fp32 reference.
Shape lists (``TuneShape`` fields) and explicit calls work too, without a model.

The result is a plain pandas DataFrame (a list of dicts without pandas); draw it with
:func:`plot_comparison` or ``df.layerzero.plot()`` (:mod:`layerzero_hf.compare_plot`). Rows whose timing
spread is over the noise threshold carry ``noisy=True``. ``compare_policies(model, inputs, a, b)`` is the
model-level A/B (:mod:`layerzero_hf.policy_ab`).

The measurement itself is :mod:`layerzero.tuning.kernel_compare`, shared with ``layerzero bench``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from layerzero.tuning.kernel_compare import COLUMNS, Call, call_from_shape, measure_calls
from layerzero_hf.capture import capture_calls
from layerzero_hf.compare_plot import plot_comparison, register_accessor
from layerzero_hf.policy_ab import ArmResult, PolicyComparison, compare_policies
from layerzero_hf.policy_args import patch_arguments, policy_object

__all__ = [
    "ArmResult",
    "ComparisonList",
    "PolicyComparison",
    "capture_calls",
    "compare",
    "compare_policies",
    "plot_comparison",
]


class ComparisonList(list):
    """The result rows when pandas is not installed (a list of dicts) with the same ``plot()``."""

    def plot(self, **kwargs: Any) -> Any:
        return plot_comparison(self, **kwargs)


def _as_result(rows: list[dict[str, Any]]) -> Any:
    """A plain DataFrame (``df.layerzero.plot()`` registered), or a :class:`ComparisonList` without pandas."""
    try:
        import pandas as pd
    except ImportError:
        return ComparisonList(rows)
    register_accessor()
    return pd.DataFrame(rows, columns=list(COLUMNS))


def compare(
    model_or_inputs: Any = None,
    ops: Iterable[str] | str | None = None,
    kernels: Sequence[str] | str | None = None,
    shapes: Iterable[Any] | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    repeats: int = 10,
    progress: bool = True,
    *,
    warmup: int = 2,
    inputs: Any = None,
    batch: int = 1,
    seq_len: int = 32,
    policy: Any = None,
) -> Any:
    """Time every eligible kernel on real call shapes; returns a plain DataFrame (or a list of dicts without
    pandas) with columns ``operation, shape, kernel_id, backend, status, chosen, median_us, p10_us, p90_us,
    spread, noisy, speedup_vs_reference, speedup_vs_torch, max_error, ok, calls, error``. Plot it with
    ``plot_comparison(df)`` or ``df.layerzero.plot()``; ``noisy`` rows should be measured again before
    their speed-ups are believed.

    ``model_or_inputs``: a Transformers model (one forward with ``inputs``, or ``batch`` x ``seq_len``
    random tokens, is recorded), a shape dict / ``TuneShape`` or a list of them (the ``shapes`` argument
    does the same), or ``(operation, inputs[, kwargs])`` tuples. ``ops`` filters operations (globs).
    ``kernels`` replaces "every eligible kernel" with the kernels named (those that cannot run the call are
    reported with the reason instead of run). ``dtype``/``device`` re-materialise the calls there (model
    calls are cast/moved; shapes are built there; defaults: the model's, else cuda/bf16 when present,
    cpu/fp32 otherwise). ``policy`` decides "chosen"/"eligible" (default: the model's, else the global one).
    ``speedup_vs_torch`` is against the plain-PyTorch kernel of the op (SDPA, F.rms_norm, eager RoPE and
    activations); ``max_error`` is against the fp32 reference on fp32 copies of the same inputs.
    """
    from layerzero.operations import matches

    op_filter = [ops] if isinstance(ops, str) else list(ops) if ops is not None else None
    kernel_ids = [kernels] if isinstance(kernels, str) else list(kernels) if kernels is not None else None
    calls, orchestrator = _collect_calls(model_or_inputs, shapes, dtype, device, inputs, batch, seq_len, policy)
    if op_filter:
        calls = [c for c in calls if any(matches(p, c.operation) for p in op_filter)]
    if dtype is not None or device is not None:
        calls = [_move(c, dtype, device) for c in calls]
    rows = measure_calls(calls, orchestrator, kernels=kernel_ids, warmup=warmup, repeats=repeats,
                         progress=progress, desc="layerzero compare")
    return _as_result(rows)


def _collect_calls(source: Any, shapes: Iterable[Any] | None, dtype: Any, device: Any, inputs: Any, batch: int,
                   seq_len: int, policy: Any) -> tuple[list[Call], Any]:
    from layerzero.tuning.shapes import parse_shapes
    from layerzero.dispatch import create_orchestrator, get_global_orchestrator
    from layerzero.dispatch.types import DispatchConfig

    def orchestrator_for_policy() -> Any:
        if policy is None:
            return get_global_orchestrator()
        return create_orchestrator(DispatchConfig(enable_telemetry=False), policy=policy_object(policy))

    if isinstance(source, torch.nn.Module):
        patch_kwargs = patch_arguments(policy) if policy is not None else {}
        return capture_calls(source, inputs, batch=batch, seq_len=seq_len, **patch_kwargs)
    shape_items: list[Any] = list(shapes) if shapes is not None else []
    direct: list[Call] = []
    if source is not None:
        items = source if isinstance(source, list) else [source]
        for item in items:
            if isinstance(item, tuple) and item and isinstance(item[0], str):
                op, call_inputs = item[0], item[1]
                call_kwargs = dict(item[2]) if len(item) > 2 else {}
                direct.append(Call(op, dict(call_inputs), call_kwargs))
            else:
                shape_items.append(item)
    if not shape_items and not direct:
        raise ValueError("compare: pass a model, shapes (dicts like {'operation': 'rms_norm', 'tokens': 128, "
                         "'hidden': 1024}) or (operation, inputs) tuples")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default_dtype = _dtype_name(dtype) if dtype is not None else ("bfloat16" if dev.type == "cuda" else "float32")
    parsed = parse_shapes(shape_items, "compare(shapes=...)", default_dtype) if shape_items else []
    return [call_from_shape(s, dev) for s in parsed] + direct, orchestrator_for_policy()


def _dtype_name(dtype: Any) -> str:
    from layerzero.context.call_context import dtype_name

    return dtype_name(dtype)


def _move(call: Call, dtype: Any, device: Any) -> Call:
    dt = getattr(torch, _dtype_name(dtype)) if dtype is not None else None

    def conv(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        if device is not None:
            v = v.to(device)
        if dt is not None and v.is_floating_point():
            v = v.to(dt)
        return v

    return Call(call.operation, {k: conv(v) for k, v in call.inputs.items()},
                {k: conv(v) for k, v in call.kwargs.items()}, call.calls)
