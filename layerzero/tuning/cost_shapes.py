"""The calls the shipped architectures make, as cost buckets: what a cost sweep measures.

Dimensions are those of one public checkpoint per architecture of ``patches/*.yaml`` (the sizes
``benchmarks/e2e.py`` and the conformance archs already use where they overlap), plus a second checkpoint
where an architecture's sizes change what its calls are: Gemma-2/3 at 27B have head_dim 128, so their
per-head q/k norms are rows of 128 with Gemma's casting, a bucket no small checkpoint produces (without it
those calls fell back to hand-set priorities and ran F.rms_norm). Attention is swept as
the operations models dispatch (``layerzero.ops.attention_operation``): ``attention.prefill`` for a prompt
of several tokens, ``attention.decode`` for one query token per sequence. A bucket is built from
the same facts a live call's context gives (:func:`layerzero.tuning.cost_bucket.bucket_for`), so a
sweep's measurements land exactly where the measured ranking looks them up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch

from layerzero.context.call_context import SelectionContext, default_is_causal, dtype_name
from layerzero.tuning.cost_table import CostBucket, bucket_for


@dataclass(frozen=True)
class ArchDims:
    """What of a model's config decides its kernel calls."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    activation: str = "swiglu"  # or "geglu"
    window: int | None = None
    softcap: float | None = None
    sinks: bool = False
    qk_norm: bool = False  # per-head q/k RMSNorm over head_dim (Qwen-3, Gemma-3)
    rotary_dim: int | None = None
    casting: str = "llama"
    norm_offset: float = 0.0
    # pre-norm decoder layers whose attention residual add can run inside the next RMSNorm (the
    # ``residual_norm`` patch kind): their norms are also swept with ``residual``
    fused_residual: bool = False


ARCH_DIMS: dict[str, ArchDims] = {
    "llama": ArchDims(2048, 32, 8, 64, 8192, fused_residual=True),  # Llama-3.2-1B
    "qwen3": ArchDims(2048, 16, 8, 128, 6144, qk_norm=True, fused_residual=True),  # Qwen3-1.7B
    "gemma2": ArchDims(2304, 8, 4, 256, 9216, "geglu", window=4096, softcap=50.0, casting="gemma",
                       norm_offset=1.0),  # Gemma-2-2B
    "mistral": ArchDims(4096, 32, 8, 128, 14336, fused_residual=True),  # Mistral-7B-v0.3 (no sliding window)
    "qwen2": ArchDims(1536, 12, 2, 128, 8960, fused_residual=True),  # Qwen2.5-1.5B
    "gemma": ArchDims(2048, 8, 1, 256, 16384, "geglu", casting="gemma", norm_offset=1.0,
                      fused_residual=True),  # Gemma-2B
    "gemma3_text": ArchDims(1152, 4, 1, 256, 6912, "geglu", window=512, qk_norm=True, casting="gemma",
                            norm_offset=1.0),  # Gemma-3-1B
    "gemma3_text-27b": ArchDims(5376, 32, 16, 128, 21504, "geglu", window=1024, qk_norm=True, casting="gemma",
                                norm_offset=1.0),  # Gemma-3-27B
    "gemma2-27b": ArchDims(4608, 32, 16, 128, 36864, "geglu", window=4096, softcap=50.0, casting="gemma",
                           norm_offset=1.0),  # Gemma-2-27B
    "phi3": ArchDims(3072, 32, 32, 96, 8192),  # Phi-3-mini
    "gpt_oss": ArchDims(2880, 64, 8, 64, 2880, window=128, sinks=True),  # gpt-oss-20b
}

OPERATIONS = ("attention.prefill", "attention.decode", "rms_norm", "rope", "swiglu", "geglu")
PREFILL_TOKENS = tuple(1 << i for i in range(16))  # 1 .. 32768
# Batched prompts (batch, sequence): a batch-8 prefill of 1024 tokens keys as 8192 tokens over 1024 keys, which
# no batch-1 bucket (tokens = keys) reaches within the nearest-bucket distance; these cover the batch prefill
# shapes of the end-to-end benchmarks and their neighbours.
PREFILL_BATCHES = ((8, 512), (8, 1024), (8, 4096), (32, 512), (32, 1024))
DECODE_BATCHES = (1, 8, 64)
DECODE_KV = (512, 4096, 32768)


@dataclass(frozen=True)
class SweepCall:
    """One call to build and time; ``bucket`` is where its measurements go."""

    arch: str
    operation: str
    dtype: str
    batch: int
    seq_q: int
    seq_k: int
    dims: ArchDims
    rows: int = 0  # norms / activations: token rows
    width: int = 0  # norms / activations: feature size
    full_attention: bool = False  # a full-attention layer of an architecture that also has sliding ones
    residual: bool = False  # rms_norm with the residual add fused in

    @property
    def window(self) -> int | None:
        """The window the call passes: as the Transformers integration does, only where it bites (keys
        beyond it), and never on a full-attention layer."""
        w = self.dims.window
        return w if w is not None and not self.full_attention and self.seq_k > w else None

    def arguments(self, device: torch.device | str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Random inputs and the options the architecture passes."""
        dt = getattr(torch, dtype_name(self.dtype))
        meta = str(device) == "meta"  # shapes only: the context of a call without allocating it

        def mk(*shape: int) -> torch.Tensor:
            if meta:
                return torch.empty(*shape, device="meta", dtype=dt)
            return torch.randn(*shape, device=device, dtype=dt)

        d, op = self.dims, self.operation
        if op.startswith("attention"):
            q = mk(self.batch, self.seq_q, d.heads, d.head_dim)
            k = mk(self.batch, self.seq_k, d.kv_heads, d.head_dim)
            v = mk(self.batch, self.seq_k, d.kv_heads, d.head_dim)
            kw: dict[str, Any] = {"is_causal": default_is_causal(op), "sliding_window": self.window,
                                  "softcap": d.softcap}
            if d.sinks:
                kw["sinks"] = mk(d.heads)
            return {"query": q, "key": k, "value": v}, kw
        if op == "rms_norm":
            kw = {"eps": 1e-6, "offset": d.norm_offset, "casting": d.casting}
            if self.residual:
                kw["residual"] = mk(self.rows, self.width)
            return {"x": mk(self.rows, self.width), "weight": mk(self.width)}, kw
        if op == "rope":
            rot = d.rotary_dim or d.head_dim
            return {"q": mk(self.batch, d.heads, self.seq_q, d.head_dim),
                    "k": mk(self.batch, d.kv_heads, self.seq_q, d.head_dim),
                    "cos": mk(self.batch, self.seq_q, rot), "sin": mk(self.batch, self.seq_q, rot)}, {"layout": "bhsd"}
        return {"gate": mk(self.rows, self.width), "up": mk(self.rows, self.width)}, {}

    def sequence(self, device: torch.device | str, steps: int = 8) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(options, the inputs of ``steps`` consecutive calls) as a model makes them. Decode attention: key
        and value grow by one position per step, views of one cache like a model's (so a kernel that
        specialises or recompiles per key length pays for it while timed); other operations make one call.
        The first inputs are the call's own (:meth:`arguments`' shapes)."""
        if self.operation != "attention.decode":
            inputs, kwargs = self.arguments(device)
            return kwargs, [inputs]
        grown = dataclasses.replace(self, seq_k=self.seq_k + steps - 1)
        big, kwargs = grown.arguments(device)
        kwargs["sliding_window"] = self.window  # as at the first step's key length
        seq = [{**big, "key": big["key"][:, :self.seq_k + i], "value": big["value"][:, :self.seq_k + i]}
               for i in range(steps)]
        return kwargs, seq

    def context(self, device: torch.device | str) -> SelectionContext:
        inputs, kwargs = self.arguments("meta")
        ctx = SelectionContext.from_inputs(self.operation, inputs, **kwargs)
        dev = str(torch.device(device))
        from layerzero.context.call_context import device_capability, platform_of

        return ctx.replace(device=dev, platform=platform_of(dev), compute_capability=device_capability(dev))

    def bucket(self, device: torch.device | str) -> CostBucket | None:
        return bucket_for(self.operation, self.context(device))


def _spread_order(values: Sequence[int]) -> list[int]:
    """Values reordered so that every prefix covers the range evenly (ends, middle, quarters, ...): a sweep
    cut short by its time budget still has measurements across the whole range."""
    vals = sorted(values)
    if len(vals) <= 2:
        return vals
    out, seen = [], set()
    step = len(vals) - 1
    while step >= 1:
        for i in range(0, len(vals), step):
            if i not in seen:
                seen.add(i)
                out.append(vals[i])
        step //= 2
    return out + [v for i, v in enumerate(vals) if i not in seen]


def arch_calls(arch: str, dims: ArchDims, operations: Iterable[str], dtype: str, tokens: Sequence[int],
               decode_batches: Sequence[int], decode_kv: Sequence[int],
               prefill_batches: Sequence[tuple[int, int]] = ()) -> Iterator[SweepCall]:
    """Every call of one architecture for one token count ordering (see :func:`sweep_calls`)."""
    ops = set(operations)
    layers = (False, True) if dims.window else (False,)  # sliding and full-attention layers
    for t in tokens:
        if "attention.prefill" in ops and t > 1:  # a one-token prompt is dispatched as attention.decode
            for full in layers:
                yield SweepCall(arch, "attention.prefill", dtype, 1, t, t, dims, full_attention=full)
        if "rms_norm" in ops:
            yield SweepCall(arch, "rms_norm", dtype, 1, t, t, dims, rows=t, width=dims.hidden)
            if dims.fused_residual:
                yield SweepCall(arch, "rms_norm", dtype, 1, t, t, dims, rows=t, width=dims.hidden, residual=True)
            if dims.qk_norm:
                for heads in sorted({dims.heads, dims.kv_heads}):
                    yield SweepCall(arch, "rms_norm", dtype, 1, t, t, dims, rows=t * heads, width=dims.head_dim)
        if "rope" in ops:
            yield SweepCall(arch, "rope", dtype, 1, t, t, dims)
        if dims.activation in ops:
            yield SweepCall(arch, dims.activation, dtype, 1, t, t, dims, rows=t, width=dims.intermediate)
    if "attention.prefill" in ops:
        for b, seq in prefill_batches:
            for full in layers:
                yield SweepCall(arch, "attention.prefill", dtype, b, seq, seq, dims, full_attention=full)
    if "attention.decode" in ops:
        for kv in decode_kv:
            for b in decode_batches:
                for full in layers:
                    yield SweepCall(arch, "attention.decode", dtype, b, 1, kv, dims, full_attention=full)


def sweep_calls(archs: Sequence[str], operations: Iterable[str], dtype: str, tokens: Sequence[int] = PREFILL_TOKENS,
                decode_batches: Sequence[int] = DECODE_BATCHES, decode_kv: Sequence[int] = DECODE_KV,
                prefill_batches: Sequence[tuple[int, int]] = PREFILL_BATCHES) -> list[SweepCall]:
    """The calls to time, one per distinct bucket, in an order whose every prefix spans all architectures,
    operations and token counts (token counts and KV lengths are visited ends first, then midpoints)."""
    ops = tuple(operations)
    order = _spread_order(tokens)
    per_arch = [list(arch_calls(a, ARCH_DIMS[a], ops, dtype, order, decode_batches, _spread_order(decode_kv),
                                prefill_batches)) for a in archs]
    out: list[SweepCall] = []
    for i in range(max((len(c) for c in per_arch), default=0)):  # round-robin over architectures
        out.extend(calls[i] for calls in per_arch if i < len(calls))
    return out
