"""The selection context: everything about one call that can decide which kernel runs it.

It is immutable and hashable so it can key caches and be logged. Building it from tensors reads only
metadata (shapes, dtype, device, flags), never data, so it is safe under ``torch.compile`` tracing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

import torch

from layerzero.operations import default_is_causal, find  # noqa: F401 - default_is_causal is re-exported

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}
for _name in ("float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        _DTYPE_NAMES[getattr(torch, _name)] = _name

DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def dtype_name(dtype: torch.dtype | str) -> str:
    """Canonical dtype spelling used by contexts, constraints and policies (``"bfloat16"``)."""
    if isinstance(dtype, torch.dtype):
        return _DTYPE_NAMES.get(dtype) or str(dtype).removeprefix("torch.")
    name = str(dtype).removeprefix("torch.")
    return DTYPE_ALIASES.get(name, name)


@lru_cache(maxsize=64)
def _capability(device: str) -> tuple[int, int] | None:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    try:
        return tuple(torch.cuda.get_device_capability(torch.device(device)))  # type: ignore[return-value]
    except Exception:  # a bad index: let constraints report the device instead
        return None


def device_capability(device: str) -> tuple[int, int] | None:
    """CUDA compute capability of a device string (cached), None off CUDA."""
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else device
    return _capability(device)


def platform_of(device: str | None) -> str | None:
    if device is None:
        return None
    kind = device.split(":", 1)[0]
    if kind == "cuda" and getattr(torch.version, "hip", None):
        return "rocm"
    return kind


@dataclass(frozen=True, slots=True)
class SelectionContext:
    """Facts about one call. Every field is optional: unknown facts are None and constraints that need
    them treat them as unknown rather than failing (the kernel's own checks still run)."""

    operation: str | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    seq_len_q: int | None = None
    seq_len_k: int | None = None
    head_dim: int | None = None
    head_dim_v: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    hidden_size: int | None = None
    dtype: str | None = None
    device: str | None = None
    platform: str | None = None
    compute_capability: tuple[int, int] | None = None
    is_causal: bool = False
    enable_gqa: bool = False
    dropout_p: float = 0.0
    attn_mask: str | None = None  # None, "bool" or "additive"
    sliding_window: int | None = None
    softcap: float | None = None
    has_sinks: bool = False
    layout: str | None = None
    is_contiguous: bool = True
    requires_grad: bool = False
    rotary_dim: int | None = None
    interleaved: bool = False
    norm_offset: float = 0.0
    casting: str | None = None
    fused_residual: bool = False
    is_compiling: bool = False
    extra: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        setter = object.__setattr__
        if self.dtype is not None:
            setter(self, "dtype", dtype_name(self.dtype))
        if self.device is not None and not isinstance(self.device, str):
            setter(self, "device", str(self.device))
        if self.platform is None and self.device is not None:
            setter(self, "platform", platform_of(self.device))
        if self.seq_len_q is None and self.seq_len is not None:
            setter(self, "seq_len_q", self.seq_len)
        if self.seq_len is None and self.seq_len_q is not None:
            setter(self, "seq_len", self.seq_len_q)
        if self.seq_len_k is None and self.seq_len_q is not None and self.operation != "attention.decode":
            setter(self, "seq_len_k", self.seq_len_q)
        if self.num_kv_heads is None and self.num_heads is not None:
            setter(self, "num_kv_heads", self.num_heads)
        if (
            not self.enable_gqa
            and self.num_heads is not None
            and self.num_kv_heads is not None
            and self.num_heads != self.num_kv_heads
        ):
            setter(self, "enable_gqa", True)
        if self.head_dim_v is None and self.head_dim is not None:
            setter(self, "head_dim_v", self.head_dim)
        if isinstance(self.extra, Mapping):
            setter(self, "extra", tuple(sorted(self.extra.items())))

    # ------------------------------------------------------------------ construction from tensors
    @classmethod
    def from_inputs(cls, operation: str, inputs: Mapping[str, Any], **kwargs: Any) -> "SelectionContext":
        """Read the context of a call from its tensors and keyword arguments (metadata only)."""
        values: dict[str, Any] = {"operation": operation}
        first = None
        for t in inputs.values():
            if isinstance(t, torch.Tensor):
                first = t
                break
        if first is not None:
            values["dtype"] = dtype_name(first.dtype)
            values["device"] = str(first.device)
            values["requires_grad"] = torch.is_grad_enabled() and any(
                isinstance(t, torch.Tensor) and t.requires_grad for t in inputs.values()
            )
        op = find(operation)
        if op is not None:
            op.selection_facts(inputs, kwargs, values)
        values["is_compiling"] = _is_compiling()
        if values.get("platform") is None and values.get("device", "").startswith("cuda"):
            values["compute_capability"] = device_capability(values["device"])
        return cls(**values)

    def replace(self, **changes: Any) -> "SelectionContext":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __str__(self) -> str:
        shown = {k: v for k, v in self.as_dict().items() if v not in (None, False, 0.0, ()) or k == "is_causal"}
        return "SelectionContext(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


CONTEXT_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(SelectionContext))


def _is_compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except Exception:
        return False

