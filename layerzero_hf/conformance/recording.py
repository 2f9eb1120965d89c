"""Recording the dispatches a patched model really makes, with the tensors exactly as passed.

A synthetic conformance grid cannot guess every layout a model produces (a transposed view of a
projection, a chunk of a fused gate/up output, half-width RoPE tables, an expanded padding mask, a
static cache's full-length keys). A kernel that passes the grid can still be wrong on those, so the
recorder stands in front of the model's registered orchestrator, copies each call's tensors keeping
their shapes, strides, storage offsets and dtypes, and forwards the call unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

__all__ = [
    "CallRecorder",
    "RecordedCall",
    "call_signature",
    "clone_exact",
    "dispatch_signature",
    "layout_class",
    "record_calls",
    "record_scenarios",
]

SCENARIOS = ("dynamic", "static", "padded")


def clone_exact(t: torch.Tensor) -> torch.Tensor:
    """A copy with the same shape, strides, storage offset and dtype as ``t`` (never ``.contiguous()``).

    The copy lives in a fresh buffer as long as the storage span ``t`` reads; a plain view is filled with
    ``copy_``, an overlapping one (an expanded, stride-0 padding mask) by copying the span itself, which
    ``empty_strided(...).copy_(t)`` cannot do (``copy_`` refuses overlapping destinations)."""
    t = t.detach()
    offset = t.storage_offset()
    extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0
    buf = torch.empty(offset + extent, dtype=t.dtype, device=t.device)
    out = buf.as_strided(t.shape, t.stride(), offset)
    if extent and torch._debug_has_internal_overlap(t) != 0:
        buf[offset:] = t.as_strided((extent,), (1,), offset)
    elif extent:
        out.copy_(t)
    return out


def _meta(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), tuple(v.stride()), str(v.dtype), str(v.device))
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    return ("object", type(v).__name__)


def call_signature(operation: str, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> tuple:
    """The exact description of a call: operation, every tensor's shape, strides, dtype and device, and
    the option values. Two calls with equal signatures are interchangeable for any kernel."""
    return (operation, tuple((k, _meta(v)) for k, v in sorted(inputs.items())),
            tuple((k, _meta(v)) for k, v in sorted(options.items())))


def layout_class(t: torch.Tensor) -> tuple:
    """What a kernel can trip over in a tensor's layout, independent of its sizes: the order of the
    strides over non-trivial dims, broadcast (stride-0) dims, contiguity, unit inner stride, and whether
    it starts at a storage offset (a chunk of a fused projection)."""
    dims = [i for i in range(t.dim()) if t.shape[i] > 1]
    order = tuple(sorted(dims, key=lambda i: (-t.stride(i), i)))
    broadcast = tuple(i for i in dims if t.stride(i) == 0)
    return (t.dim(), order, broadcast, t.is_contiguous(), t.dim() == 0 or t.stride(-1) == 1, t.storage_offset() > 0)


def dispatch_signature(orchestrator: Any, operation: str, inputs: Mapping[str, Any],
                       options: Mapping[str, Any]) -> tuple:
    """The dispatcher's cache signature of a call (its selection context with sizes bucketed as the
    dispatcher buckets them) plus each tensor's layout class and the scalar option values: calls equal
    here get the same kernel and present it the same kind of layout. Falls back to the exact
    :func:`call_signature` when the orchestrator has no selection engine to bucket with."""
    try:
        from layerzero.context import SelectionContext

        engine = orchestrator.get_dispatcher().engine
        ctx = engine.bucket_context(SelectionContext.from_inputs(operation, inputs, **options))
    except Exception:  # noqa: BLE001 - a stand-in orchestrator: exact signatures then
        return call_signature(operation, inputs, options)
    values = {**inputs, **options}
    layouts = tuple((k, layout_class(v)) for k, v in sorted(values.items()) if isinstance(v, torch.Tensor))
    scalars = tuple((k, v) for k, v in sorted(options.items()) if isinstance(v, (int, float, str, bool)))
    return (operation, ctx, layouts, scalars)


def _copy(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: clone_exact(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()}


@dataclass
class RecordedCall:
    """One dispatched call as the model made it: replayable on any kernel of ``operation``."""

    operation: str
    inputs: dict[str, Any]
    options: dict[str, Any]
    phase: str = "prefill"  # "prefill" or "decode"
    module: str | None = None  # path of the innermost module that made the call
    label: str = ""  # the scenario: "dynamic", "static", "padded", ...
    count: int = 1  # calls with this signature seen while recording (kept or not)
    key: Any = field(default=None, repr=False, compare=False)  # dispatch_signature while recording

    @property
    def signature(self) -> tuple:
        return call_signature(self.operation, self.inputs, self.options)

    def describe(self) -> str:
        """One line for tables: operation, phase, scenario, module, tensor shapes and set options."""
        shapes = " ".join(f"{k}{tuple(v.shape)}" + ("" if v.is_contiguous() else "*")
                          for k, v in self.inputs.items() if isinstance(v, torch.Tensor))
        opts = ", ".join(f"{k}={_short(v)}" for k, v in self.options.items() 
                         if isinstance(v, torch.Tensor) or v not in (None, False))
        where = f" {self.module}" if self.module else ""
        return f"{self.operation} [{self.label}/{self.phase}{where}] {shapes} {{{opts}}}"

    def metadata(self) -> dict[str, Any]:
        return {"operation": self.operation, "phase": self.phase, "module": self.module, "label": self.label,
                "count": self.count}


def _short(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"{str(v.dtype).removeprefix('torch.')}{tuple(v.shape)}"
    return repr(v)


class CallRecorder:
    """Stands in for an orchestrator (``call`` and ``dispatch``): copies each call, then forwards it to
    the real one. Keeps the first ``keep`` calls of each signature per phase."""

    def __init__(self, real: Any, keep: int = 2, label: str = ""):
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least one call per signature")
        self.real = real
        self.keep = keep
        self.label = label
        self.phase = "prefill"
        self.module_stack: list[str] = []
        self.calls: list[RecordedCall] = []
        self._seen: dict[tuple, list[RecordedCall]] = {}

    def _record(self, operation: str, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        key = (self.phase, dispatch_signature(self.real, operation, inputs, options))
        kept = self._seen.setdefault(key, [])
        if kept:
            kept[0].count += 1
        if len(kept) >= self.keep:
            return
        module = self.module_stack[-1] if self.module_stack else None
        call = RecordedCall(operation, _copy(inputs), _copy(options), self.phase, module, self.label, key=key[1])
        if kept:
            call.count = 0  # the first call of the signature carries the count
        kept.append(call)
        self.calls.append(call)

    def call(self, operation: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        self._record(operation, inputs, kwargs)
        call = getattr(self.real, "call", None)
        if call is not None:
            return call(operation, inputs, kwargs)
        return self.real.dispatch(operation, inputs, **kwargs).output

    def dispatch(self, operation: str, inputs: Mapping[str, Any], context: Any = None, mode: Any = None,
                 **kwargs: Any) -> Any:
        self._record(operation, inputs, kwargs)
        return self.real.dispatch(operation, inputs, context, mode, **kwargs)

    def __getattr__(self, name: str) -> Any:  # explain(), kernel_registry, ... of the real orchestrator
        return getattr(self.real, name)


@contextlib.contextmanager
def _recording(model: torch.nn.Module, recorder_args: dict[str, Any], patch_kwargs: dict[str, Any]
               ) -> Iterator[CallRecorder]:
    """Patch the model unless it is patched, put a recorder in front of its orchestrator, track module
    paths with hooks, and undo all of it afterwards."""
    from layerzero_hf.capture import stand_in
    from layerzero_hf.lifecycle import is_patched, patch_report, patched
    from layerzero_hf.residual_norm import OBSERVER_HOOK

    ctx: Any
    if is_patched(model):
        report = patch_report(model)
        if report is not None and report.attn_implementation != "layerzero":
            warnings.warn("record_calls: the model is patched without attention=True, so attention calls are not "
                          "recorded; unpatch it (record_calls then patches with attention=True)", stacklevel=4)
        if patch_kwargs:
            warnings.warn(f"record_calls: the model is already patched, so {sorted(patch_kwargs)} are ignored; "
                          "unpatch it first to record under other patch arguments", stacklevel=4)
        ctx = contextlib.nullcontext(report)
    else:
        ctx = patched(model, **{"attention": True, **patch_kwargs})
    with ctx as report, stand_in(report.orchestrator, functools.partial(CallRecorder, **recorder_args)) as recorder:
        stack = recorder.module_stack

        def enter(path: str) -> Any:
            def hook(_module: Any, _args: Any) -> None:
                stack.append(path)
            setattr(hook, OBSERVER_HOOK, True)
            return hook

        def leave(_module: Any, _args: Any, _out: Any) -> None:  # returns None: the output is unchanged
            if stack:
                stack.pop()

        # Observers: a fused residual norm still calls its norm past them, so its calls are recorded as the
        # model makes them unobserved (under the decoder layer's path).
        setattr(leave, OBSERVER_HOOK, True)

        handles = []
        for path, module in model.named_modules():
            if module is not model:
                handles.append(module.register_forward_pre_hook(enter(path)))
                handles.append(module.register_forward_hook(leave))
        try:
            yield recorder
        finally:
            for h in handles:
                h.remove()


def record_calls(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    decode_steps: int = 3,
    cache: str = "dynamic",
    keep: int = 2,
    label: str | None = None,
    **patch_kwargs: Any,
) -> list[RecordedCall]:
    """Run ``model`` (patched with ``attention=True`` for the duration unless already patched) through a
    prefill and ``decode_steps`` greedy decode steps and return every distinct dispatched call.

    ``cache``: ``"dynamic"`` or ``"static"`` (``cache_implementation="static"``; compilation is disabled so
    the eager calls are what is recorded). ``keep``: calls kept per (phase, signature)."""
    if cache not in ("dynamic", "static"):
        raise ValueError(f"record_calls: cache={cache!r}; use 'dynamic' or 'static'")
    if decode_steps < 0:
        raise ValueError(f"record_calls: decode_steps={decode_steps} must be >= 0")
    args = {"keep": keep, "label": label if label is not None else cache}
    with _recording(model, args, patch_kwargs) as recorder, torch.no_grad():
        forwards = [0]

        def phase_hook(_m: Any, _a: Any) -> None:
            recorder.phase = "prefill" if forwards[0] == 0 else "decode"
            forwards[0] += 1

        handle = model.register_forward_pre_hook(phase_hook)
        try:
            steps = decode_steps + 1  # the prefill yields the first token
            model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=steps, min_new_tokens=steps,
                           do_sample=False, pad_token_id=0, eos_token_id=None, disable_compile=True,
                           cache_implementation="static" if cache == "static" else None)
        finally:
            handle.remove()
    return recorder.calls


def record_scenarios(
    model: torch.nn.Module,
    *,
    prompt_len: int = 12,
    decode_steps: int = 3,
    keep: int = 2,
    scenarios: Sequence[str] = SCENARIOS,
    seed: int = 0,
    **patch_kwargs: Any,
) -> list[RecordedCall]:
    """The calls of the three serving situations worth checking: one prompt with the dynamic cache, with
    a static cache, and a left-padded batch of two (dynamic cache). Calls whose signature an earlier
    scenario already recorded for the same phase are dropped (their count is added)."""
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"record_scenarios: unknown scenarios {sorted(unknown)}; use any of {SCENARIOS}")
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (1, prompt_len), generator=g).to(device)
    merged: list[RecordedCall] = []
    seen: dict[tuple, RecordedCall] = {}
    for scenario in scenarios:
        if scenario == "padded":
            batch = torch.randint(3, vocab, (2, prompt_len), generator=g).to(device)
            mask = torch.ones_like(batch)
            pad = max(1, prompt_len // 3)
            batch[0, :pad] = 0
            mask[0, :pad] = 0
            calls = record_calls(model, batch, attention_mask=mask, decode_steps=decode_steps, keep=keep,
                                 label="padded", **patch_kwargs)
        else:
            calls = record_calls(model, ids, decode_steps=decode_steps, cache=scenario, keep=keep, label=scenario,
                                 **patch_kwargs)
        for call in calls:
            key = (call.phase, call.key if call.key is not None else call.signature)
            first = seen.get(key)
            if first is not None and first.label != call.label:
                first.count += call.count
                continue
            seen.setdefault(key, call)
            merged.append(call)
    return merged
