"""Shape lists for ``bench``, ``tune`` and ``layerzero_hf.compare``: the default grid and shape files.

A shape is a mapping of :class:`TuneShape` fields (``seq``/``seq_len`` are accepted
for ``seq_q``). A shape file is YAML or JSON: a list of shapes, or ``{"shapes": [...]}``. Every mistake is
reported with its field path and value (``shapes[2].heads: expected a positive integer, got 'x'``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.operations import OPERATIONS, all_operations, find
from layerzero.operations.base import rows_label
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
        """Random inputs and options of this call (the operation's ``sample_inputs``)."""
        op = find(self.operation)
        if op is None:
            raise ValueError(f"operation: cannot build inputs for {self.operation!r}")
        return op.sample_inputs(self, device, getattr(torch, dtype_name(self.dtype)))


_FIELDS = {f.name for f in dataclasses.fields(TuneShape)}
_ALIASES = {"seq": "seq_q", "seq_len": "seq_q", "seq_len_q": "seq_q", "seq_len_k": "seq_k", "kv": "kv_heads",
            "num_heads": "heads", "num_kv_heads": "kv_heads", "hidden_size": "hidden", "batch_size": "batch"}
_INT_FIELDS = _FIELDS - {"operation", "dtype"}
DTYPES = ("float16", "bfloat16", "float32", "float64")


def default_shapes(device: str) -> list[TuneShape]:
    """A small grid per operation: seconds on CPU (float32, tiny), representative on CUDA (bf16, Llama-8B)."""
    cuda = device.startswith("cuda")
    dtype = "bfloat16" if cuda else "float32"
    return [TuneShape(op.name, dtype, **sizes) for op in all_operations() for sizes in op.default_shapes(cuda)]


def parse_shape(raw: Any, where: str = "shape", problems: list[ValidationProblem] | None = None) -> TuneShape | None:
    """One shape mapping -> TuneShape. Problems are appended (or raised when ``problems`` is None)."""
    own = problems is None
    found: list[ValidationProblem] = [] if own else problems  # type: ignore[assignment]
    if isinstance(raw, TuneShape):
        return raw
    if not isinstance(raw, Mapping):
        found.append(ValidationProblem(where, raw, "a shape is a mapping like {operation: rms_norm, tokens: 128, "
                                       "hidden: 1024}"))
    else:
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = _ALIASES.get(str(key), str(key))
            if name not in _FIELDS:
                known = ", ".join(sorted(_FIELDS | set(_ALIASES)))
                found.append(ValidationProblem(f"{where}.{key}", value, f"unknown shape field; use one of {known}"))
                continue
            if name in _INT_FIELDS:
                if value is None and name in ("seq_k", "kv_heads"):
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    found.append(ValidationProblem(f"{where}.{key}", value, "expected a positive integer"))
                    continue
            values[name] = value
        op = values.get("operation")
        if op is None:
            found.append(ValidationProblem(f"{where}.operation", None,
                                           f"missing; use one of {', '.join(OPERATIONS)}"))
        elif op not in OPERATIONS:
            found.append(ValidationProblem(f"{where}.operation", op, f"unknown operation; use one of "
                                           f"{', '.join(OPERATIONS)}"))
        if "dtype" in values:
            name = dtype_name(str(values["dtype"]))
            if name not in DTYPES:
                found.append(ValidationProblem(f"{where}.dtype", values["dtype"],
                                               f"unknown dtype; use one of {', '.join(DTYPES)}"))
            values["dtype"] = name
        if not [p for p in found if p.field.startswith(where)]:
            return TuneShape(**values)
    if own and found:
        raise ConfigValidationError(found)
    return None


def parse_shapes(raw: Iterable[Any] | Mapping[str, Any], source: str | None = None,
                 default_dtype: str | None = None) -> list[TuneShape]:
    """A list of shape mappings (or ``{"shapes": [...]}``) -> TuneShapes; one error lists every problem.
    ``default_dtype`` applies to shapes that do not name one."""
    if isinstance(raw, Mapping):
        if "shapes" not in raw:
            raise ConfigValidationError([ValidationProblem("<document>", sorted(map(str, raw)),
                                                           "expected a list of shapes or {shapes: [...]}", source)])
        raw = raw["shapes"]
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise ConfigValidationError([ValidationProblem("shapes", raw, "expected a list of shapes", source)])
    problems: list[ValidationProblem] = []
    shapes: list[TuneShape] = []
    for i, item in enumerate(raw):
        if default_dtype and isinstance(item, Mapping) and "dtype" not in item:
            item = {**item, "dtype": default_dtype}
        shape = parse_shape(item, f"shapes[{i}]", problems)
        if shape is not None:
            shapes.append(shape)
    if problems:
        raise ConfigValidationError([dataclasses.replace(p, source=source) for p in problems], source=source)
    return shapes


def load_shapes(path: str | Path, default_dtype: str | None = None) -> list[TuneShape]:
    """Shapes from a YAML (``safe_load``) or JSON file."""
    from layerzero.config_files import load_yaml_text, read_config_text

    p = Path(path)
    text = read_config_text(p, "shapes file")  # regular files only, size-limited, never blocks
    if p.suffix != ".json":
        data = load_yaml_text(text, str(p))  # guarded: alias/size limits, safe construction
        return parse_shapes(data if data is not None else [], str(p), default_dtype)
    try:
        data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any syntax error becomes a problem with the file name
        raise ConfigValidationError([ValidationProblem("<document>", str(p), f"cannot parse: {e}")],
                                    source=str(p)) from None
    return parse_shapes(data if data is not None else [], str(p), default_dtype)


def shape_label(shape: TuneShape) -> str:
    """Compact, human-readable description used as a key in ``bench``/``tune`` output."""
    op = find(shape.operation)
    return op.shape_label(shape) if op is not None else rows_label(shape)
