"""Kernel comparison for notebooks: every eligible kernel on the shapes a real model produces.

``compare(model)`` runs one forward of the model patched by LayerZero (attention included) with a
recording orchestrator in front of the model's own, so it sees the exact (operation, inputs, options) of
every dispatch: the real shapes, dtypes, GQA ratios, RoPE layouts and norm casting modes, not a guess from
the config. Each distinct call is then replayed through every kernel the model's policy finds eligible
(or the kernels you name), timed, and checked against the fp32 reference. Shape lists (``TuneShape``
fields) and explicit calls work too, without a model.

``compare_policies(model, inputs, a, b)`` is the model-level A/B: the same inputs through the model
patched with policy (or kernel map) A, then B; it reports the output difference, the forward timings
and which kernel ran each operation under each arm.

The measurement itself is :mod:`layerzero.tuning.kernel_compare`, shared with ``layerzero bench``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from layerzero.tuning.kernel_compare import COLUMNS, Call, call_from_shape, measure_calls
from layerzero.tuning.measure import measure

__all__ = [
    "ComparisonList",
    "PolicyComparison",
    "capture_calls",
    "compare",
    "compare_policies",
    "plot_comparison",
]

_TOP_LEVEL_POLICY_KEYS = frozenset(
    {"version", "defaults", "dispatch_rules", "kernel_locks", "kernel_denies", "kernel_allows", "fallback_chains"}
)


# ============================================================================================== capture
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
def _recording(model: torch.nn.Module, keep_inputs: bool = True, **patch_kwargs: Any) -> Iterator[_Recorder]:
    """Patch ``model`` (unless it already is, and no patch arguments are given), put a recorder in front
    of its orchestrator, and restore everything afterwards."""
    import layerzero_hf

    if layerzero_hf.is_patched(model) and not patch_kwargs:
        report = layerzero_hf.patch_report(model)
        if report is not None and report.attn_implementation not in (None, "layerzero"):
            warnings.warn(f"the model is patched but its attention runs through Transformers' "
                          f"{report.attn_implementation!r} implementation, so attention is not compared; patch it "
                          "with attention=True (or unpatch it and let compare() patch it)", stacklevel=6)
        ctx: Any = contextlib.nullcontext(report)
    else:
        patch_kwargs.setdefault("attention", True)
        ctx = layerzero_hf.patched(model, **patch_kwargs)
    with ctx as report, _recorder_on(report.orchestrator, keep_inputs) as recorder:
        yield recorder


@contextlib.contextmanager
def _recorder_on(name: str, keep_inputs: bool = True) -> Iterator[_Recorder]:
    """Put a recorder in front of the orchestrator registered as ``name`` (what the model's patched
    modules and attention function look up on every call), and put the real one back afterwards."""
    from layerzero import ops

    real = ops.get_orchestrator(name)
    recorder = _Recorder(real, keep_inputs)
    ops.register_orchestrator(name, recorder)
    try:
        yield recorder
    finally:
        ops.register_orchestrator(name, real)


def _forward_inputs(model: torch.nn.Module, inputs: Any, batch: int, seq_len: int) -> dict[str, Any]:
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
    kwargs = _forward_inputs(model, inputs, batch, seq_len)
    with _recording(model, **patch_kwargs) as recorder, torch.no_grad():
        model(**kwargs)
    return list(recorder.calls.values()), recorder.real


# ============================================================================================== results
class ComparisonList(list):
    """The result rows when pandas is not installed (a list of dicts) with the same ``plot()``."""

    def plot(self, **kwargs: Any) -> Any:
        return plot_comparison(self, **kwargs)


def _as_result(rows: list[dict[str, Any]]) -> Any:
    try:
        import pandas  # noqa: F401 - only: is it installed?
    except ImportError:
        return ComparisonList(rows)
    return _frame_class()(rows, columns=list(COLUMNS))


_FRAME: type | None = None


def _frame_class() -> type:
    """A DataFrame whose ``.plot()`` draws the kernel comparison; ``.plot.bar()`` etc. remain pandas'.
    Built on first use so pandas stays optional. Derived frames (filters, groupbys) are plain DataFrames."""
    global _FRAME
    if _FRAME is None:
        import pandas as pd
        from pandas.plotting import PlotAccessor

        class _Plot:
            def __init__(self, frame: Any):
                self._frame = frame

            def __call__(self, **kwargs: Any) -> Any:
                return plot_comparison(self._frame, **kwargs)

            def __getattr__(self, name: str) -> Any:
                return getattr(PlotAccessor(pd.DataFrame(self._frame)), name)

        class KernelComparison(pd.DataFrame):
            """Tidy kernel comparison (one row per call shape x kernel); ``.plot()`` draws it."""

            @property
            def _constructor(self) -> type:
                return pd.DataFrame

            @property
            def plot(self) -> Any:  # type: ignore[override]
                return _Plot(self)

        _FRAME = KernelComparison
    return _FRAME


# ============================================================================================== compare
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
    """Time every eligible kernel on real call shapes; returns a DataFrame (or a list of dicts without
    pandas) with columns ``operation, shape, kernel_id, backend, status, chosen, median_us, p10_us, p90_us,
    speedup_vs_reference, speedup_vs_torch, max_error, ok, calls, error``.

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
        return create_orchestrator(DispatchConfig(enable_telemetry=False), policy=_policy_object(policy))

    if isinstance(source, torch.nn.Module):
        patch_kwargs = _patch_arguments(policy) if policy is not None else {}
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
    from layerzero.selection.context import dtype_name

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


def _policy_object(policy: Any) -> Any:
    from layerzero.policy import Policy, load_policy

    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping) and _is_kernel_map(policy):
        return load_policy({"kernel_locks": dict(policy)})
    return load_policy(policy)


def _is_kernel_map(policy: Mapping[str, Any]) -> bool:
    """``{"rms_norm": "torch_rms_norm", "attention.*": "torch_sdpa"}``: operation -> kernel, no policy keys."""
    from layerzero.operations import expand

    return bool(policy) and all(isinstance(k, str) and k not in _TOP_LEVEL_POLICY_KEYS and expand(k)
                                and isinstance(v, str) for k, v in policy.items())


def _patch_arguments(policy: Any) -> dict[str, Any]:
    """How ``layerzero_hf.patch`` takes a policy: a kernel map as ``kernels=``, anything else as ``policy=``
    (None: the rules and default policy)."""
    if policy is None:
        return {}
    if isinstance(policy, Mapping) and _is_kernel_map(policy):
        return {"kernels": dict(policy)}
    return {"policy": policy}


# ============================================================================================== plot
def plot_comparison(results: Any, ax: Any = None, metric: str = "median_us", max_panels: int = 12) -> Any:
    """Horizontal bars per kernel (p10-p90 whiskers), one panel per call shape; the chosen kernel in green,
    kernels that failed or do not conform marked. Returns the matplotlib Figure (no pyplot state is
    touched, so it works under the Agg backend and in notebooks alike)."""
    from matplotlib.figure import Figure

    rows = results.to_dict("records") if hasattr(results, "to_dict") else list(results)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["operation"], r["shape"]), []).append(r)
    keys = list(groups)[:max_panels]
    if ax is not None and len(keys) > 1:
        raise ValueError(f"plot_comparison: ax= draws one panel but the results have {len(keys)} call shapes; "
                         "filter the results to one shape first or omit ax")
    if ax is None:
        n = max(1, len(keys))
        cols = 1 if n == 1 else 2
        nrows = math.ceil(n / cols)
        height = max(1.8, max((len(groups[k]) for k in keys), default=1) * 0.45 + 0.9)
        fig = Figure(figsize=(6.5 * cols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, cols, squeeze=False).ravel().tolist()
        for extra in axes[len(keys):]:
            extra.set_visible(False)
    else:
        fig, axes = ax.figure, [ax]
    for axis, key in zip(axes, keys):
        _draw_panel(axis, key, groups[key], metric)
    if not keys:
        axes[0].text(0.5, 0.5, "no results", ha="center", va="center")
    _notebook_display(Figure)
    return fig


def _notebook_display(figure_class: type) -> None:
    """Inside IPython/Jupyter, render Figure objects as PNG when they are a cell's value. matplotlib does
    this only once pyplot is imported; the comparison figure deliberately avoids pyplot's global state."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return
    try:
        from IPython.core.pylabtools import print_figure

        formatter = shell.display_formatter.formatters["image/png"]
        try:
            formatter.lookup_by_type(figure_class)
            return  # already rendered (matplotlib's inline backend or an earlier call)
        except KeyError:
            pass
        formatter.for_type(figure_class, lambda fig: print_figure(fig, "png", bbox_inches="tight"))
    except Exception:  # noqa: BLE001 - display is a nicety; the figure is still returned
        return


def _draw_panel(axis: Any, key: tuple[str, str], group: list[dict[str, Any]], metric: str) -> None:
    labels, values, lo, hi, colors = [], [], [], [], []
    for r in group:
        v = r.get(metric)
        v = float("nan") if v is None else float(v)
        mark = "" if r.get("ok") else " (failed)" if math.isnan(v) else " (wrong)"
        labels.append(r["kernel_id"] + mark)
        values.append(0.0 if math.isnan(v) else v)
        p10, p90 = r.get("p10_us"), r.get("p90_us")
        if metric == "median_us" and p10 is not None and p90 is not None and not math.isnan(v):
            lo.append(max(0.0, v - float(p10)))
            hi.append(max(0.0, float(p90) - v))
        else:
            lo.append(0.0)
            hi.append(0.0)
        colors.append("tab:green" if r.get("chosen") else "tab:red" if not r.get("ok") else "tab:blue")
    y = list(range(len(group)))
    axis.barh(y, values, xerr=[lo, hi], color=colors, capsize=3)
    axis.set_yticks(y, labels)
    axis.invert_yaxis()
    axis.set_xlabel("microseconds (median, p10-p90); labels: speedup vs torch" if metric == "median_us" else metric)
    calls = group[0].get("calls") or 1
    axis.set_title(f"{key[0]}: {key[1]}" + (f"  (x{calls} per forward)" if calls > 1 else ""), fontsize=9)
    for yi, r, v, h in zip(y, group, values, hi):
        s = r.get("speedup_vs_torch")
        if v and s is not None and not math.isnan(s):
            axis.text(v + h, yi, f" {s:.2f}x", va="center", fontsize=8)


# ============================================================================================== A/B
@dataclass
class ArmResult:
    """One arm of :func:`compare_policies`: forward timings and the kernel that ran each operation."""

    name: str
    median_us: float
    p10_us: float
    p90_us: float
    kernels: dict[str, dict[str, int]]  # operation -> kernel id -> calls in one forward
    output: Any = field(repr=False, default=None)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "median_us": self.median_us, "p10_us": self.p10_us, "p90_us": self.p90_us,
                "kernels": self.kernels}


@dataclass
class PolicyComparison:
    """The same inputs through two policies: how different the outputs are and which arm is faster."""

    a: ArmResult
    b: ArmResult
    max_abs_diff: float
    max_rel_diff: float

    @property
    def speedup(self) -> float:
        """How many times faster B's forward is than A's (> 1: B wins)."""
        return self.a.median_us / self.b.median_us if self.b.median_us else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a.as_dict(), "b": self.b.as_dict(), "max_abs_diff": self.max_abs_diff,
                "max_rel_diff": self.max_rel_diff, "speedup_b_over_a": self.speedup}

    def __str__(self) -> str:
        lines = [f"PolicyComparison: max |A-B| = {self.max_abs_diff:.3g} (relative {self.max_rel_diff:.3g}); "
                 f"B is {self.speedup:.2f}x A's speed"]
        for arm in (self.a, self.b):
            lines.append(f"  {arm.name}: forward median {arm.median_us:.1f} us (p10 {arm.p10_us:.1f}, "
                         f"p90 {arm.p90_us:.1f})")
            for op, ks in sorted(arm.kernels.items()):
                lines.append(f"    {op}: " + ", ".join(f"{k} x{n}" for k, n in ks.items()))
        return "\n".join(lines)

    __repr__ = __str__


def _output_tensor(out: Any) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        t = getattr(out, name, None)
        if isinstance(t, torch.Tensor):
            return t
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"compare_policies: cannot find an output tensor in {type(out).__name__} (expected .logits, "
                    ".last_hidden_state or a tensor)")


def compare_policies(
    model: torch.nn.Module,
    inputs: Any,
    policy_a: Any = None,
    policy_b: Any = None,
    *,
    repeats: int = 5,
    warmup: int = 1,
    names: tuple[str, str] = ("A", "B"),
    progress: bool = True,
) -> PolicyComparison:
    """Run ``inputs`` through ``model`` patched with ``policy_a``, then ``policy_b`` (each a policy path,
    mapping or ``Policy``, or a kernel map ``{"rms_norm": "reference_rms_norm"}``; None = the default),
    and compare outputs (logits) and forward timings. The model's previous patch state is restored."""
    kwargs = _forward_inputs(model, inputs, 1, 32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    arms = []
    bar = _bar(2 * (warmup + repeats + 1), progress)
    try:
        for name, pol in zip(names, (policy_a, policy_b)):
            arms.append(_run_arm(model, kwargs, name, pol, device, warmup, repeats, bar))
    finally:
        if bar is not None:
            bar.close()
    out_a, out_b = (_output_tensor(a.output).float() for a in arms)
    if out_a.shape != out_b.shape:
        raise ValueError(f"compare_policies: outputs differ in shape {tuple(out_a.shape)} vs {tuple(out_b.shape)}")
    diff = (out_a - out_b).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = out_a.abs().max().item() if out_a.numel() else 0.0
    return PolicyComparison(arms[0], arms[1], max_abs, max_abs / scale if scale else 0.0)


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="layerzero compare_policies", unit="forward", delay=2.0, leave=False)


def _run_arm(model: torch.nn.Module, kwargs: dict[str, Any], name: str, policy: Any, device: torch.device,
             warmup: int, repeats: int, bar: Any) -> ArmResult:
    patch_kwargs = {"attention": True, **_patch_arguments(policy)}

    def forward() -> Any:
        out = model(**kwargs)
        if bar is not None:
            bar.update(1)
        return out

    import layerzero_hf

    with layerzero_hf.patched(model, **patch_kwargs) as report, torch.no_grad():
        with _recorder_on(report.orchestrator, keep_inputs=False) as recorder:
            output = forward()  # one recorded forward: which kernels ran
        kernels = {op: dict(ks) for op, ks in recorder.kernels.items()}
        timing = measure(forward, device, warmup=warmup, repeats=repeats)  # timed without the recorder
    return ArmResult(name, timing.median_us, timing.p10_us, timing.p90_us, kernels, output)
