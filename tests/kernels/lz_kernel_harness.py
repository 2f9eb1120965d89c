"""Conformance harness: every kernel of an operation against the fp32 reference, over a grid of cases.

A case is (inputs, kwargs). For each kernel the harness builds the SelectionContext of the case, asks the
kernel's own ``check`` whether it can run it (constraints + backend), runs the ones it accepts and compares
with ``layerzero.kernels.reference`` under per-dtype tolerances. Kernels are never asked to run what their
constraints reject, so a kernel that accepts a case it cannot compute shows up as a failure here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from layerzero.kernels import reference as ref
from layerzero.operations import is_attention
from layerzero.registry import KernelSpec, get_global_kernel_registry
from layerzero.context.call_context import SelectionContext
from layerzero.validation import compare_outputs

REFERENCE: dict[str, Callable[..., Any]] = {
    "attention": ref.attention,
    "rms_norm": ref.rms_norm,
    "layer_norm": ref.layer_norm,
    "rope": ref.rope,
    "swiglu": ref.swiglu,
    "geglu": ref.geglu,
}


@dataclass
class Case:
    name: str
    inputs: dict[str, Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.ran) + len(self.skipped)


def family(operation: str) -> str:
    return "attention" if is_attention(operation) else operation


# ----------------------------------------------------------------------------------------------- case grids
def _randn(*shape, dtype, device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


ATTN_SHAPES_CPU = [
    # (batch, seq_q, seq_k, heads, kv_heads, head_dim)
    (2, 8, 8, 4, 4, 64),
    (1, 5, 5, 4, 2, 80),  # GQA 2, odd length
    (2, 7, 7, 8, 2, 128),  # GQA 4
    (1, 6, 6, 2, 1, 256),  # MQA, head_dim 256
    (2, 1, 13, 4, 2, 64),  # decode: one query, longer KV
    (1, 4, 11, 4, 4, 64),  # chunked prefill: bottom-right causal
]

ATTN_SHAPES_GPU = [
    (2, 128, 128, 8, 8, 64),
    (1, 77, 77, 8, 2, 80),
    (2, 256, 256, 16, 4, 128),
    (1, 64, 64, 4, 1, 256),
    (4, 1, 300, 8, 2, 128),
    (2, 1, 1024, 32, 8, 64),
    (1, 48, 200, 8, 8, 128),
]

ATTN_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("causal", {"is_causal": True}),
    ("bool_mask", {"mask": "bool"}),
    ("additive_mask", {"mask": "additive"}),
    ("causal_bool_mask", {"is_causal": True, "mask": "bool"}),
    ("sliding_window", {"is_causal": True, "sliding_window": 4}),
    ("softcap", {"is_causal": True, "softcap": 20.0}),
    ("sinks", {"is_causal": True, "sinks": True}),
    ("scale", {"scale": 0.3}),
    # Transformers hands over (B, H, S, D) tensors; the canonical (B, S, H, D) is then a strided view.
    ("hf_layout", {"is_causal": True, "hf_layout": True}),
]


def attention_cases(operation: str, dtype: torch.dtype, device: str, shapes=None, variants=None) -> Iterator[Case]:
    for b, sq, sk, h, hkv, d in shapes or ATTN_SHAPES_CPU:
        for vname, v in ATTN_VARIANTS:
            if variants is not None and vname not in variants:
                continue
            if v.get("hf_layout"):
                q = _randn(b, h, sq, d, dtype=dtype, device=device).transpose(1, 2)
                k = _randn(b, hkv, sk, d, dtype=dtype, device=device).transpose(1, 2)
                val = _randn(b, hkv, sk, d, dtype=dtype, device=device).transpose(1, 2)
            else:
                q = _randn(b, sq, h, d, dtype=dtype, device=device)
                k = _randn(b, sk, hkv, d, dtype=dtype, device=device)
                val = _randn(b, sk, hkv, d, dtype=dtype, device=device)
            kw: dict[str, Any] = {"is_causal": bool(v.get("is_causal", False))}
            if v.get("mask") == "bool":
                keep = torch.rand(b, 1, sq, sk) > 0.3
                # Every query keeps at least one key, under bottom-right causal too (key 0 is visible to
                # every row when Sq <= Sk): what a fully masked row returns is unspecified by the contract
                # (the reference gives zeros, cuDNN does not).
                keep[..., 0] = True
                keep[..., -1] = True
                kw["attn_mask"] = keep.to(device)
            elif v.get("mask") == "additive":
                kw["attn_mask"] = _randn(b, h, sq, sk, dtype=dtype, device=device)
            for name in ("sliding_window", "softcap", "scale"):
                if name in v:
                    kw[name] = v[name]
            if v.get("sinks"):
                kw["sinks"] = _randn(h, dtype=torch.float32, device=device)
            yield Case(f"{operation}[{b}x{sq}x{sk} h{h}/{hkv} d{d} {vname}]", {"query": q, "key": k, "value": val}, kw)


def rms_norm_cases(dtype: torch.dtype, device: str) -> Iterator[Case]:
    for shape in ((3, 64), (2, 5, 96), (4, 77)):
        hidden = shape[-1]
        for casting in ("llama", "gemma", "none"):
            for offset in (0.0, 1.0):
                for residual in (False, True):
                    x = _randn(*shape, dtype=dtype, device=device)
                    w = _randn(hidden, dtype=dtype, device=device, scale=0.5)
                    kw: dict[str, Any] = {"eps": 1e-6, "offset": offset, "casting": casting}
                    if residual:
                        kw["residual"] = _randn(*shape, dtype=dtype, device=device)
                    yield Case(f"rms_norm[{shape} {casting} off{offset} res{residual}]", {"x": x, "weight": w}, kw)
        yield Case(f"rms_norm[{shape} no weight]", {"x": _randn(*shape, dtype=dtype, device=device), "weight": None},
                   {"eps": 1e-5})


def layer_norm_cases(dtype: torch.dtype, device: str) -> Iterator[Case]:
    for shape in ((3, 64), (2, 5, 96), (4, 77)):
        hidden = shape[-1]
        x = _randn(*shape, dtype=dtype, device=device, scale=2.0)
        w = _randn(hidden, dtype=dtype, device=device)
        b = _randn(hidden, dtype=dtype, device=device)
        yield Case(f"layer_norm[{shape}]", {"x": x, "weight": w, "bias": b}, {"eps": 1e-5})
    x = _randn(2, 40, dtype=dtype, device=device)
    yield Case("layer_norm[no affine]", {"x": x, "weight": None, "bias": None}, {"eps": 1e-5})


def rope_tables(batch: int, seq: int, rot: int, interleaved: bool, per_batch: bool, device: str, dtype):
    """cos/sin as Transformers builds them (halves duplicated, or pairs repeated for interleaved)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    pos = torch.arange(seq, dtype=torch.float32) + 3.0
    if per_batch:
        pos = pos.unsqueeze(0) + torch.arange(batch, dtype=torch.float32).unsqueeze(1) * 5  # (B, S)
    freqs = pos.unsqueeze(-1) * inv_freq
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(device=device, dtype=dtype), emb.sin().to(device=device, dtype=dtype)


def rope_cases(dtype: torch.dtype, device: str) -> Iterator[Case]:
    b, s, h, hk, d = 2, 5, 4, 2, 64
    for layout in ("bhsd", "bshd"):
        for rot in (64, 32):
            for interleaved in (False, True):
                for per_batch in (True, False):
                    cos, sin = rope_tables(b, s, rot, interleaved, per_batch, device, dtype)
                    if layout == "bhsd":
                        # Transformers' layout: a transposed view of the (B, S, H, D) projection.
                        q = _randn(b, s, h, d, dtype=dtype, device=device).transpose(1, 2)
                        k = _randn(b, s, hk, d, dtype=dtype, device=device).transpose(1, 2)
                    else:
                        q = _randn(b, s, h, d, dtype=dtype, device=device)
                        k = _randn(b, s, hk, d, dtype=dtype, device=device)
                    yield Case(
                        f"rope[{layout} rot{rot} inter{interleaved} batchcos{per_batch}]",
                        {"q": q, "k": k, "cos": cos, "sin": sin},
                        {"layout": layout, "interleaved": interleaved},
                    )


def gated_cases(operation: str, dtype: torch.dtype, device: str) -> Iterator[Case]:
    for shape in ((4, 64), (2, 3, 96), (5, 77)):
        gate = _randn(*shape, dtype=dtype, device=device, scale=2.0)
        up = _randn(*shape, dtype=dtype, device=device)
        if operation == "geglu":
            for approx in ("tanh", "none"):
                yield Case(f"geglu[{shape} {approx}]", {"gate": gate, "up": up}, {"approximate": approx})
        else:
            yield Case(f"swiglu[{shape}]", {"gate": gate, "up": up})
    fused = _randn(3, 2 * 48, dtype=dtype, device=device)
    g, u = fused.chunk(2, dim=-1)  # Phi-3 style halves of one projection
    if operation == "geglu":
        yield Case("geglu[chunked halves]", {"gate": g, "up": u}, {"approximate": "tanh"})
    else:
        yield Case("swiglu[chunked halves]", {"gate": g, "up": u})


def cases_for(operation: str, dtype: torch.dtype, device: str, attention_shapes=None, variants=None) -> list[Case]:
    fam = family(operation)
    if fam == "attention":
        return list(attention_cases(operation, dtype, device, attention_shapes, variants))
    if fam == "rms_norm":
        return list(rms_norm_cases(dtype, device))
    if fam == "layer_norm":
        return list(layer_norm_cases(dtype, device))
    if fam == "rope":
        return list(rope_cases(dtype, device))
    return list(gated_cases(operation, dtype, device))


# ----------------------------------------------------------------------------------------------- running
def _snapshot(values: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in values.items() if isinstance(v, torch.Tensor)}


def compare_to_reference(out: Any, expected: Any, dtype: torch.dtype, fam: str) -> str | None:
    """Why a kernel's output does not match the reference (None when it does): the dispatcher's own
    output check (:func:`layerzero.validation.compare_outputs`, per-dtype tolerances), plus the rule that
    an output keeps the reference's dtype. ``dtype`` is the case's; ``fam`` picks the tolerance row."""
    outs = out if isinstance(out, tuple) else (out,)
    exps = expected if isinstance(expected, tuple) else (expected,)
    for i, (o, e) in enumerate(zip(outs, exps)):
        if isinstance(o, torch.Tensor) and o.shape == e.shape and o.dtype != e.dtype:
            return f"output {i} dtype {o.dtype} != {e.dtype}"
    return compare_outputs(fam, outs, exps)


def run_case(
    spec: KernelSpec, operation: str, case: Case, dtype: torch.dtype, assume_cuda: bool = False
) -> tuple[str, str | None]:
    """("skipped", reasons) | ("ran", None) | ("failed", why).

    ``assume_cuda`` checks the kernel's constraints as if the CPU tensors were on an sm90 GPU and skips
    the backend probe: that is how adapters are exercised on CPU against stand-in backend modules."""
    ctx = SelectionContext.from_inputs(operation, case.inputs, **case.kwargs)
    if assume_cuda:
        ctx = ctx.replace(device="cuda:0", platform="cuda", compute_capability=(9, 0))
        reasons = spec.constraints.check(ctx)
    else:
        reasons = spec.check(ctx)
    if reasons:
        return "skipped", "; ".join(reasons)
    args = spec.map_arguments(case.inputs, case.kwargs)
    before = _snapshot(case.inputs)
    try:
        with torch.no_grad():
            out = spec.impl(**args)
    except Exception as e:  # a kernel that accepted the case must run it
        return "failed", f"{case.name}: raised {type(e).__name__}: {e}"
    fam = family(operation)
    expected = REFERENCE[fam](**{k: v for k, v in args.items() if k != "enable_gqa"})
    why = compare_to_reference(out, expected, dtype, fam)
    if why is None:
        for name, t in before.items():
            if not torch.equal(t, case.inputs[name]):
                why = f"mutated its input {name!r}"
                break
    return ("ran", None) if why is None else ("failed", f"{case.name}: {why}")


def run_conformance(
    spec: KernelSpec, operation: str, dtype: torch.dtype, device: str, attention_shapes=None,
    assume_cuda: bool = False, variants=None,
) -> Outcome:
    result = Outcome()
    for case in cases_for(operation, dtype, device, attention_shapes, variants):
        status, detail = run_case(spec, operation, case, dtype, assume_cuda)
        if status == "skipped":
            result.skipped.setdefault(detail or "", []).append(case.name)
        elif status == "ran":
            result.ran.append(case.name)
        else:
            result.failures.append(detail or case.name)
    return result


def representative_operation(spec: KernelSpec) -> str:
    """The operation a kernel is tested under; attention cases always pass ``is_causal`` explicitly, so
    ``attention.prefill`` stands for every attention operation."""
    from layerzero.operations import OPERATIONS

    for op in OPERATIONS:
        if spec.serves(op) and not is_attention(op):
            return op
    return "attention.prefill"


def registry_kernels() -> list[KernelSpec]:
    return sorted(get_global_kernel_registry().all(), key=lambda k: k.kernel_id)
