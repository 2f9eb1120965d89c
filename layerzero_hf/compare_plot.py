"""Plotting kernel comparisons: :func:`plot_comparison` and the ``DataFrame.layerzero`` accessor.

``compare()`` returns a plain pandas DataFrame, so every pandas feature (``df.plot(kind=...)``,
filtering, ``groupby``) works as usual. The comparison chart is :func:`plot_comparison(df)
<plot_comparison>`, also reachable as ``df.layerzero.plot()`` on any DataFrame with the comparison
columns (a filtered frame included): the accessor is registered with pandas the first time this module
is imported with pandas installed.
"""

from __future__ import annotations

import math
import sys
from typing import Any

__all__ = ["ComparisonAccessor", "plot_comparison", "register_accessor"]

ACCESSOR = "layerzero"
_REGISTERED = False


def _figure_class() -> type:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plotting a kernel comparison needs matplotlib: pip install 'layerzero-dispatch[notebook]' "
                          f"(or pip install matplotlib) ({e})") from e
    return Figure


def plot_comparison(results: Any, ax: Any = None, metric: str = "median_us", max_panels: int = 12) -> Any:
    """Horizontal bars per kernel (p10-p90 whiskers), one panel per call shape; the chosen kernel in green,
    kernels that failed or do not conform marked. Returns the matplotlib Figure (no pyplot state is
    touched, so it works under the Agg backend and in notebooks alike). Rows flagged ``noisy`` (spread
    over the noise threshold) are hatched and labelled: their bars are not to be compared.

    Raises ImportError naming the ``notebook`` extra when matplotlib is not installed."""
    Figure = _figure_class()

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
        if r.get("noisy") and r.get("ok"):
            mark += " (noisy)"
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
    bars = axis.barh(y, values, xerr=[lo, hi], color=colors, capsize=3)
    for bar, r in zip(bars, group):
        if r.get("noisy"):
            bar.set_hatch("//")
    axis.set_yticks(y, labels)
    axis.invert_yaxis()
    axis.set_xlabel("microseconds (median, p10-p90); labels: speedup vs torch" if metric == "median_us" else metric)
    calls = group[0].get("calls") or 1
    axis.set_title(f"{key[0]}: {key[1]}" + (f"  (x{calls} per forward)" if calls > 1 else ""), fontsize=9)
    for yi, r, v, h in zip(y, group, values, hi):
        s = r.get("speedup_vs_torch")
        if v and s is not None and not math.isnan(s):
            axis.text(v + h, yi, f" {s:.2f}x", va="center", fontsize=8)


class ComparisonAccessor:
    """``df.layerzero``: the kernel-comparison view of a DataFrame returned by ``compare()`` (or any frame
    with its columns, e.g. ``df[df.operation == "rms_norm"]``)."""

    def __init__(self, frame: Any):
        missing = {"operation", "shape", "kernel_id", "median_us"} - set(frame.columns)
        if missing:
            raise AttributeError(f"df.{ACCESSOR} needs the columns of layerzero_hf.compare(); missing "
                                 f"{sorted(missing)}")
        self._frame = frame

    def plot(self, **kwargs: Any) -> Any:
        """:func:`plot_comparison` of this frame (same keyword arguments)."""
        return plot_comparison(self._frame, **kwargs)

    def noisy(self) -> Any:
        """The rows whose timing spread is over the noise threshold."""
        return self._frame[self._frame["noisy"].astype(bool)] if "noisy" in self._frame else self._frame.iloc[0:0]


def register_accessor() -> bool:
    """Register ``DataFrame.layerzero`` (once); False when pandas is not installed."""
    global _REGISTERED
    if _REGISTERED:
        return True
    try:
        import pandas as pd
    except ImportError:
        return False
    if ACCESSOR not in getattr(pd.DataFrame, "_accessors", set()):
        pd.api.extensions.register_dataframe_accessor(ACCESSOR)(ComparisonAccessor)
    _REGISTERED = True
    return True
