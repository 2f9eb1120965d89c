"""Offline tuning sweep (``layerzero tune``): fill the autotune cache for a list of shapes ahead of time."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from layerzero.tuning.shapes import TuneShape


def tune(
    shapes: Iterable[TuneShape],
    device: str | torch.device | None = None,
    cache_path: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Tune every shape once; returns ``{shape description: chosen kernel}``. Uses tqdm when installed."""
    from layerzero.dispatch import AutotuneDispatcher, DispatchConfig, DispatchMode

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dispatcher = AutotuneDispatcher(DispatchConfig(mode=DispatchMode.AUTOTUNE, autotune_cache_path=cache_path))
    shapes = list(shapes)
    from layerzero.tuning.progress import progress_bar

    bar = progress_bar(len(shapes), "layerzero tune", "shape") if progress else None
    chosen: dict[str, Any] = {}
    try:
        for shape in shapes:
            inputs, kwargs = shape.inputs(dev)
            result = dispatcher.dispatch(shape.operation, inputs, **kwargs)
            chosen[repr(shape)] = result.kernel_id
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {"cache": str(dispatcher.tuning.path), "entries": len(dispatcher.tuning), "chosen": chosen}
