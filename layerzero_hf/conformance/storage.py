"""Saving recorded calls, so a run can record on one machine (or one process) and replay elsewhere.

One ``torch.save`` file: metadata is plain JSON-able values, tensors keep their strides and storage
offsets (``torch.save`` stores the storage and the view), and it loads with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from layerzero_hf.conformance.recording import RecordedCall

__all__ = ["load_calls", "save_calls"]

FORMAT = "layerzero-recorded-calls/1"


def save_calls(calls: Iterable[RecordedCall], path: str | Path) -> None:
    """Write ``calls`` to ``path`` (tensors as recorded, on their device; ``load_calls`` can move them)."""
    payload = [{**c.metadata(), "inputs": dict(c.inputs), "options": dict(c.options)} for c in calls]
    torch.save({"format": FORMAT, "calls": payload}, Path(path))


def load_calls(path: str | Path, map_location: Any = None) -> list[RecordedCall]:
    """Read calls written by :func:`save_calls`; ``map_location`` as for ``torch.load`` (e.g. ``"cpu"``)."""
    data = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"load_calls: {path} is not a recorded-calls file (format {found!r}, expected {FORMAT!r}); "
                         "write it with layerzero_hf.conformance.save_calls")
    return [RecordedCall(c["operation"], c["inputs"], c["options"], c["phase"], c["module"], c["label"], c["count"])
            for c in data["calls"]]
