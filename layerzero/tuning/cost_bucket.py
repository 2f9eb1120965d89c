"""What a cost table measures: the bucket of a call and one kernel's measurement in it.

A :class:`CostBucket` is a stable, policy-independent description of a call: operation, dtype, the model
dimensions (hidden size, head_dim, heads, kv heads), tokens and KV length rounded up to powers of two, and
the options that change a kernel's work (causal, sliding window, softcap, GQA, fused residual, ...). Policy
thresholds never enter it, so a table measured once serves every policy. A :class:`Measurement` is one
kernel's time in a bucket; what a call costs (:func:`call_cost`) is its device time, or the host time to
issue it where that is larger and can decide (:func:`issue_time_counts`: not in a long prefill, whose GEMMs
keep the GPU busy while the host issues ahead). Tables of them: :mod:`layerzero.tuning.cost_table`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

from layerzero.context.call_context import SelectionContext, dtype_name

_ATTENTION_DIMS = ("head_dim", "heads", "kv_heads")
_ROPE_DIMS = ("head_dim", "heads", "kv_heads", "rotary_dim")
_HIDDEN_DIMS = ("hidden",)


def pow2_ceil(n: int) -> int:
    """``n`` rounded up to a power of two (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def device_class(device: Any = None, capability: tuple[int, int] | None = None) -> str:
    """The device class a cost table is measured for: ``sm90`` for a CUDA device of capability 9.0,
    ``rocm`` on ROCm, ``cpu`` otherwise. ``capability`` skips the CUDA query (contexts carry it)."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":
        return dev.type
    if getattr(torch.version, "hip", None):
        return "rocm"
    if capability is None:
        if not torch.cuda.is_available():
            return "cuda"
        capability = tuple(torch.cuda.get_device_capability(dev))  # type: ignore[assignment]
    return f"sm{capability[0]}{capability[1]}"


def context_device_class(ctx: SelectionContext) -> str | None:
    """The device class of a call's context, without touching the device (None when it has no device)."""
    if ctx.device is None:
        return None
    if ctx.platform == "cuda" and ctx.compute_capability is not None:
        return f"sm{ctx.compute_capability[0]}{ctx.compute_capability[1]}"
    return ctx.platform or ctx.device.split(":", 1)[0]


@dataclass(frozen=True)
class CostBucket:
    """One measured kind of call. ``dims`` and ``options`` are sorted (name, value) pairs."""

    operation: str
    dtype: str
    dims: tuple[tuple[str, int], ...]
    tokens: int
    kv_len: int | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def sort_key(self) -> tuple:
        """A total order for files and summaries (options may mix None and numbers, which do not compare)."""
        return (self.operation, self.dtype, self.dims, self.tokens, self.kv_len or 0, repr(self.options))

    @property
    def family(self) -> tuple:
        """What must match exactly for a nearest-bucket lookup: everything but tokens and KV length."""
        return (self.operation, self.dtype, self.dims, self.options)

    def label(self) -> str:
        """Short human-readable form for summaries and ``explain``."""
        dims = " ".join(f"{k}={v}" for k, v in self.dims)
        kv = f" kv={self.kv_len}" if self.kv_len is not None else ""
        opts = "".join(f" {k}={v}" for k, v in self.options if v not in (None, False))
        return f"{self.operation} {self.dtype} {dims} tokens={self.tokens}{kv}{opts}"

    def as_json(self) -> dict[str, Any]:
        return {"operation": self.operation, "dtype": self.dtype, "dims": dict(self.dims), "tokens": self.tokens,
                "kv_len": self.kv_len, "options": dict(self.options)}

    def key(self) -> str:
        """Canonical JSON: how the autotune cache names the bucket of a local measurement."""
        return json.dumps(self.as_json(), sort_keys=True)

    @classmethod
    def from_key(cls, text: str) -> "CostBucket | None":
        """The bucket of :meth:`key`'s text, or None when it does not parse (a newer or hand-edited file)."""
        try:
            raw = json.loads(text)
            return cls.make(raw["operation"], raw["dtype"], raw["dims"], raw["tokens"], raw.get("kv_len"),
                            raw.get("options") or {})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    @classmethod
    def make(cls, operation: str, dtype: str, dims: Mapping[str, int], tokens: int, kv_len: int | None = None,
             options: Mapping[str, Any] | None = None) -> "CostBucket":
        """A bucket with tokens and KV length rounded up to powers of two."""
        return cls(operation, dtype_name(dtype), tuple(sorted(dims.items())), pow2_ceil(tokens),
                   pow2_ceil(kv_len) if kv_len is not None else None, tuple(sorted((options or {}).items())))


def bucket_for(operation: str, ctx: SelectionContext) -> CostBucket | None:
    """The cost bucket of a call, or None when its context lacks a fact the bucket needs."""
    if ctx.dtype is None:
        return None
    batch = ctx.batch_size or 1
    if operation.startswith("attention"):
        if None in (ctx.head_dim, ctx.num_heads, ctx.seq_len_q):
            return None
        dims = {"head_dim": ctx.head_dim, "heads": ctx.num_heads, "kv_heads": ctx.num_kv_heads or ctx.num_heads}
        options = {"causal": bool(ctx.is_causal), "window": ctx.sliding_window, "softcap": ctx.softcap,
                   "gqa": bool(ctx.enable_gqa), "sinks": bool(ctx.has_sinks), "mask": ctx.attn_mask}
        return CostBucket.make(operation, ctx.dtype, dims, batch * ctx.seq_len_q, ctx.seq_len_k or ctx.seq_len_q,
                               options)
    if operation == "rope":
        if None in (ctx.head_dim, ctx.num_heads, ctx.seq_len):
            return None
        dims = {"head_dim": ctx.head_dim, "heads": ctx.num_heads, "kv_heads": ctx.num_kv_heads or ctx.num_heads,
                "rotary_dim": ctx.rotary_dim or ctx.head_dim}
        return CostBucket.make(operation, ctx.dtype, dims, batch * ctx.seq_len,
                               options={"interleaved": bool(ctx.interleaved), "layout": ctx.layout})
    if ctx.hidden_size is None or ctx.batch_size is None:
        return None
    options: dict[str, Any] = {}
    if operation == "rms_norm":
        options = {"casting": ctx.casting, "residual": bool(ctx.fused_residual)}
    return CostBucket.make(operation, ctx.dtype, {"hidden": ctx.hidden_size}, ctx.batch_size, None, options)


def call_cost(device_us: float, host_us: float | None) -> float:
    """What one call costs in a sequence of calls: its device time, or the host time to issue it where that
    is larger (a host-bound call: a decode step's tiny kernels cost what it takes to launch them)."""
    return device_us if host_us is None else max(device_us, host_us)


# A call whose token side (tokens x width: the rows of a norm or activation, the query of attention and RoPE)
# holds at least this many elements belongs to a model step that keeps the GPU busy: its GEMMs alone take
# longer than the host needs to issue the step's calls, so the host runs ahead and a call costs its device
# time, however long its own issue takes. Measured on an H200 (Llama-3.2-1B, hidden 2048): the GEMMs take
# ~171 ns per token and layer, the host ~150-250 us to issue a layer's calls, so steps pass from host- to
# device-bound at ~1,000-1,500 tokens (2-3M elements of a hidden-size norm); wider models cross sooner. The
# threshold sits above that crossover: below it, the host time still counts (decode, short prompts), as before.
DEVICE_BOUND_ELEMENTS = 1 << 23


def token_elements(bucket: "CostBucket") -> int:
    """Elements on a bucket's token side: tokens x the width each token carries (hidden size for norms and
    activations, heads x head_dim for attention and RoPE)."""
    dims = dict(bucket.dims)
    width = dims["hidden"] if "hidden" in dims else dims.get("heads", 1) * dims.get("head_dim", 1)
    return bucket.tokens * width


def issue_time_counts(bucket: "CostBucket") -> bool:
    """Whether the host time to issue a call of ``bucket`` can decide its cost in a model step (see
    :data:`DEVICE_BOUND_ELEMENTS`)."""
    return token_elements(bucket) < DEVICE_BOUND_ELEMENTS


def bucket_cost(bucket: "CostBucket", device_us: float, host_us: float | None) -> float:
    """:func:`call_cost` of a call in ``bucket``: its issue time counts only where it can decide."""
    return call_cost(device_us, host_us if issue_time_counts(bucket) else None)


def as_in_a_step(bucket: "CostBucket", times: Mapping[str, "Measurement"]) -> dict[str, "Measurement"]:
    """``times`` as a model step sees a call of ``bucket``: without their issue times where those cannot
    decide (so :attr:`Measurement.cost_us` is the device time there)."""
    if issue_time_counts(bucket):
        return dict(times)
    return {k: m if m.host_us is None else replace(m, host_us=None) for k, m in times.items()}


@dataclass(frozen=True)
class Measurement:
    """A kernel's measured time in one bucket: median microseconds of device time and spread (IQR / median),
    and on CUDA, where it was measured, the host time to issue one call. Rankings use :attr:`cost_us`."""

    median_us: float
    spread: float = 0.0
    source: str = "shipped"  # "shipped", "user", "local" or "model"
    host_us: float | None = None
    noisy: bool = False  # the device time never held still and decides the cost: trusted only where decisive

    @property
    def cost_us(self) -> float:
        """:func:`call_cost` of this measurement."""
        return call_cost(self.median_us, self.host_us)

    @property
    def cost_range_us(self) -> tuple[float, float]:
        """Where the cost may lie: the cost itself, or for a noisy measurement its median give or take half
        the interquartile range (never below the issue time)."""
        if not self.noisy:
            return self.cost_us, self.cost_us
        half = self.median_us * self.spread / 2
        host = self.host_us or 0.0
        return max(self.median_us - half, host), max(self.median_us + half, host)
