"""The output check of ``DispatchConfig.check_outputs``: is what a kernel returned plausible for the call?

Kept apart from the runner so the rule (shape, dtype, NaN/Inf per operation) can move to the operations'
contracts without touching the hot path.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = ["expected_output_check"]


def expected_output_check(operation: str, inputs: Mapping[str, Any], out: Any) -> str | None:
    """Why an output is wrong (shape, dtype, NaN/Inf), or None. Used when ``check_outputs`` is on."""
    tensors = out if isinstance(out, tuple) else (out,)
    if operation.startswith("attention"):
        q, v = inputs["query"], inputs["value"]
        expected = [(tuple(q.shape[:-1]) + (v.shape[-1],), q.dtype)]
    elif operation in ("rms_norm", "layer_norm"):
        x = inputs["x"]
        expected = [(tuple(x.shape), x.dtype)] * len(tensors)
    elif operation == "rope":
        expected = [(tuple(inputs["q"].shape), inputs["q"].dtype), (tuple(inputs["k"].shape), inputs["k"].dtype)]
    elif operation in ("swiglu", "geglu"):
        g = inputs["gate"]
        expected = [(tuple(g.shape), g.dtype)]
    else:
        expected = []
    if expected and len(tensors) != len(expected):
        return f"returned {len(tensors)} tensors, expected {len(expected)}"
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            return f"output {i} is {type(t).__name__}, not a tensor"
        if expected:
            shape, dtype = expected[i]
            if tuple(t.shape) != shape:
                return f"output {i} has shape {tuple(t.shape)}, expected {shape}"
            if t.dtype != dtype:
                return f"output {i} has dtype {t.dtype}, expected {dtype}"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"output {i} contains NaN or Inf"
    return None
