"""Offline tuning sweep (``layerzero tune``): fill the autotune cache for a list of shapes ahead of time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from layerzero.context.call_context import dtype_name


@dataclass(frozen=True)
class TuneShape:
    """One call to tune. Attention: batch, seq_q, seq_k, heads, kv_heads, head_dim; others: tokens, hidden."""

    operation: str
    dtype: str = "bfloat16"
    batch: int = 1
    seq_q: int = 128
    seq_k: int | None = None
    heads: int = 8
    kv_heads: int | None = None
    head_dim: int = 64
    tokens: int = 128
    hidden: int = 1024

    def inputs(self, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        dt = getattr(torch, dtype_name(self.dtype))
        mk = lambda *s: torch.randn(*s, device=device, dtype=dt)  # noqa: E731
        op = self.operation
        if op.startswith("attention"):
            sk = self.seq_k or self.seq_q
            hkv = self.kv_heads or self.heads
            q = mk(self.batch, self.seq_q, self.heads, self.head_dim)
            k = mk(self.batch, sk, hkv, self.head_dim)
            v = mk(self.batch, sk, hkv, self.head_dim)
            return {"query": q, "key": k, "value": v}, {}
        if op == "rms_norm":
            return {"x": mk(self.tokens, self.hidden), "weight": mk(self.hidden)}, {}
        if op == "layer_norm":
            return {"x": mk(self.tokens, self.hidden), "weight": mk(self.hidden), "bias": mk(self.hidden)}, {}
        if op in ("swiglu", "geglu"):
            return {"gate": mk(self.tokens, self.hidden), "up": mk(self.tokens, self.hidden)}, {}
        if op == "rope":
            hkv = self.kv_heads or self.heads
            q = mk(self.batch, self.heads, self.seq_q, self.head_dim)
            k = mk(self.batch, hkv, self.seq_q, self.head_dim)
            cos = mk(self.batch, self.seq_q, self.head_dim)
            sin = mk(self.batch, self.seq_q, self.head_dim)
            return {"q": q, "k": k, "cos": cos, "sin": sin}, {}
        raise ValueError(f"operation: cannot build inputs for {op!r}")


def tune(
    shapes: Iterable[TuneShape],
    device: str | torch.device | None = None,
    cache_path: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Tune every shape once; returns ``{shape description: chosen kernel}``. Uses tqdm when installed."""
    from layerzero.dispatch.autotune import AutotuneDispatcher
    from layerzero.dispatch.types import DispatchConfig, DispatchMode

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
