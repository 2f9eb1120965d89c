"""Rotary position embedding: ``rope``.

``q``/``k`` in ``layout`` ``"bhsd"`` (Transformers) or ``"bshd"``; ``cos``/``sin`` ``(batch, seq,
rot_dim)`` or ``(seq, rot_dim)``; ``rot_dim <= head_dim`` (partial rotary rotates the first ``rot_dim``
features and passes the rest through); ``interleaved`` rotates adjacent pairs (GPT-J) instead of halves.
Returns ``(q_embed, k_embed)``; inputs are never modified.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Optional

import torch

from layerzero.operations.base import (
    KeyBuckets,
    Keyer,
    Operation,
    OperationContract,
    OutputSpec,
    Problem,
    bool_option,
    fmt_dims,
    grad_enabled,
    randn,
)
from layerzero.operations.custom_ops import define, unbound

LAYOUTS = ("bhsd", "bshd")


# ----------------------------------------------------------------------------------------------- reference
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim (Llama / NeoX convention)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """Adjacent pairs (x0, x1) -> (-x1, x0) (GPT-J / Cohere convention)."""
    x1 = x[..., ::2]
    x2 = x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def rope_broadcast(cos: torch.Tensor, layout: str, unsqueeze_dim: int | None) -> torch.Tensor:
    """Make ``cos``/``sin`` ((B, S, R) or (S, R)) broadcast against q in ``layout``."""
    if unsqueeze_dim is not None:
        return cos.unsqueeze(unsqueeze_dim)
    if layout == "bhsd":
        return cos.unsqueeze(-3)  # (B, 1, S, R) or (1, S, R)
    if layout == "bshd":
        return cos.unsqueeze(-2)  # (B, S, 1, R) or (S, 1, R)
    raise ValueError(f"rope layout={layout!r} is not one of 'bhsd', 'bshd'")


def reference_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    layout: str = "bhsd",
    interleaved: bool = False,
    unsqueeze_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding, HF ``apply_rotary_pos_emb`` semantics, in fp32.

    ``cos``/``sin`` carry ``rot_dim`` values per position laid out like the rotated features (halves:
    ``[c0..c_{r/2-1}, c0..c_{r/2-1}]``; interleaved: ``[c0, c0, c1, c1, ...]``), as Transformers builds
    them. Features past ``rot_dim`` pass through unchanged (partial rotary, Phi-3 / GPT-NeoX)."""
    c = rope_broadcast(cos, layout, unsqueeze_dim).float()
    s = rope_broadcast(sin, layout, unsqueeze_dim).float()
    rot = cos.shape[-1]
    if rot % 2:
        raise ValueError(f"rope rotary dim (cos.shape[-1]) {rot} must be even")
    rotate = rotate_interleaved if interleaved else rotate_half

    def apply(t: torch.Tensor) -> torch.Tensor:
        if rot > t.shape[-1]:
            raise ValueError(f"rope rotary dim {rot} > head_dim {t.shape[-1]}; cos/sin are too wide")
        tf = t.float()
        t_rot, t_pass = tf[..., :rot], tf[..., rot:]
        out = t_rot * c + rotate(t_rot) * s
        if t_pass.shape[-1]:
            out = torch.cat((out, t_pass), dim=-1)
        return out.to(t.dtype)

    return apply(q), apply(k)


def rope_term_magnitudes(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str,
                         interleaved: bool, unsqueeze_dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``|t * cos| + |rotate(t) * sin|`` per element of q and k in fp32 (``|t|`` past the rotary dims): the
    size of the two products a half-precision RoPE rounds before adding them."""
    c = rope_broadcast(cos, layout, unsqueeze_dim).float().abs()
    s = rope_broadcast(sin, layout, unsqueeze_dim).float().abs()
    rot = cos.shape[-1]
    rotate = rotate_interleaved if interleaved else rotate_half

    def terms(t: torch.Tensor) -> torch.Tensor:
        tf = t.float()
        t_rot, t_pass = tf[..., :rot], tf[..., rot:]
        out = t_rot.abs() * c + rotate(t_rot).abs() * s
        return torch.cat((out, t_pass.abs()), dim=-1) if t_pass.shape[-1] else out

    return terms(q), terms(k)


# ----------------------------------------------------------------------------------------------- the operation
class Rope(Operation):
    cpu_shapes = ({"batch": 1, "seq_q": 128, "heads": 8, "kv_heads": 4, "head_dim": 64},)
    cuda_shapes = ({"batch": 4, "seq_q": 1024, "heads": 32, "kv_heads": 8, "head_dim": 128},)

    def check_inputs(self, a: Mapping[str, Any], found: list[Problem]) -> None:
        q, k, cos, sin = a["q"], a["k"], a["cos"], a["sin"]
        layout = a.get("layout", "bhsd")
        if layout not in LAYOUTS:
            found.append(("layout", layout, "expected 'bhsd' (Transformers) or 'bshd'"))
            return
        before = len(found)
        for name, t in (("q", q), ("k", k)):
            if t.dim() != 4:
                found.append((name, tuple(t.shape), f"expected rank 4 in layout {layout!r}"))
        if len(found) > before:
            return
        seq_dim = 2 if layout == "bhsd" else 1
        if q.shape[0] != k.shape[0] or q.shape[seq_dim] != k.shape[seq_dim] or q.shape[3] != k.shape[3]:
            found.append(("k", tuple(k.shape), f"batch, seq and head_dim must match q {tuple(q.shape)} ({layout})"))
        if tuple(cos.shape) != tuple(sin.shape):
            found.append(("sin", tuple(sin.shape), f"must have the shape of cos {tuple(cos.shape)}"))
        rot = cos.shape[-1] if cos.dim() else 0
        if rot < 2 or rot % 2 or rot > q.shape[3]:
            found.append(("cos", tuple(cos.shape), f"last dimension (rotary dim) must be even and <= head_dim "
                          f"{q.shape[3]}"))
        elif cos.dim() >= 2 and cos.shape[-2] not in (1, q.shape[seq_dim]):
            found.append(("cos", tuple(cos.shape), f"second-to-last dimension must be the sequence length "
                          f"{q.shape[seq_dim]} (tables for these positions)"))
        bool_option(a, "interleaved", found)

    def selection_facts(self, inputs: Mapping[str, Any], kwargs: Mapping[str, Any], values: dict[str, Any]) -> None:
        q, cos = inputs.get("q"), inputs.get("cos")
        layout = kwargs.get("layout", "bhsd")
        values["layout"] = layout
        values["interleaved"] = bool(kwargs.get("interleaved", False))
        if q is not None:
            if layout == "bhsd":
                b, h, s, d = q.shape
            else:
                b, s, h, d = q.shape
            values.update(batch_size=b, num_heads=h, seq_len=s, head_dim=d)
            k = inputs.get("k")
            if k is not None:
                values["num_kv_heads"] = k.shape[1] if layout == "bhsd" else k.shape[2]
            values["is_contiguous"] = q.is_contiguous()
        if cos is not None:
            values["rotary_dim"] = cos.shape[-1]

    def described_facts(self, d: Mapping[str, Any]) -> dict[str, Any]:
        rotary = d.get("rotary_dim")
        return dict(batch_size=d.get("batch"), seq_len=d.get("seq_q"), num_heads=d.get("heads"),
                    num_kv_heads=d.get("kv_heads"), head_dim=d.get("head_dim"),
                    rotary_dim=rotary if rotary is not None else d.get("head_dim"),
                    interleaved=bool(d.get("interleaved")), layout=d.get("layout") or "bhsd")

    def keyer(self, buckets: KeyBuckets) -> Keyer:
        mq, bq = buckets.seq_q

        def rope_key(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
            q = inputs["q"]
            k = inputs["k"]
            layout = kw.get("layout", "bhsd")
            qs = q.shape
            if layout == "bhsd":
                shape = (qs[0], qs[1], mq.get(qs[2]) or bq(qs[2]), qs[3], k.shape[1])
            else:
                shape = (qs[0], mq.get(qs[1]) or bq(qs[1]), qs[2], qs[3], k.shape[2])
            return (
                op, shape, inputs["cos"].shape[-1], layout, kw.get("interleaved"), q.dtype, q.device,
                q.requires_grad and grad_enabled(), q.is_contiguous(),
            )

        return rope_key

    def expected_outputs(self, inputs: Mapping[str, Any], count: int) -> list[OutputSpec]:
        q, k = inputs["q"], inputs["k"]
        return [(tuple(q.shape), q.dtype), (tuple(k.shape), k.dtype)]

    def error_scales(self, arguments: Mapping[str, Any]) -> list[torch.Tensor] | None:
        """Measured on an H200 in a Gemma-style model: ``torch_rope`` (HF's own bf16 math) was 0.125 off the
        fp32 reference where q*cos and rotate(q)*sin (~16 each) cancelled to ~2, one bf16 step of the terms
        but 6% of the output; scaled by the terms, HF's math passes and a real error does not."""
        try:
            bound = self.signature.bind(**{k: v for k, v in arguments.items() if k in self.contract.parameters})
        except TypeError:
            return None
        bound.apply_defaults()
        return list(rope_term_magnitudes(**bound.arguments))

    def sample_inputs(self, shape: Any, device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Any], dict[str, Any]]:
        mk = randn(device, dtype)
        hkv = shape.kv_heads or shape.heads
        q = mk(shape.batch, shape.heads, shape.seq_q, shape.head_dim)
        k = mk(shape.batch, hkv, shape.seq_q, shape.head_dim)
        cos = mk(shape.batch, shape.seq_q, shape.head_dim)
        sin = mk(shape.batch, shape.seq_q, shape.head_dim)
        return {"q": q, "k": k, "cos": cos, "sin": sin}, {}

    def shape_label(self, shape: Any) -> str:
        return (f"rope b{shape.batch} s{shape.seq_q} h{shape.heads}/{shape.kv_heads or shape.heads} "
                f"d{shape.head_dim} {shape.dtype}")

    def describe_inputs(self, inputs: Mapping[str, Any]) -> list[str]:
        return [f"q {fmt_dims(inputs['q'])}", f"k {fmt_dims(inputs['k'])}", f"rot {inputs['cos'].shape[-1]}"]


ROPE = Rope(OperationContract("rope", ("q", "k", "cos", "sin"), ("layout", "interleaved", "unsqueeze_dim")), reference_rope)
OPERATIONS = (ROPE,)


# ----------------------------------------------------------------------------------------------- custom op
def _signature(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str, interleaved: bool,
    orchestrator: Optional[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    raise unbound("rope")


def _fake(q, k, cos, sin, layout, interleaved, orchestrator):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _to_call(a: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return ("rope", {"q": a["q"], "k": a["k"], "cos": a["cos"], "sin": a["sin"]},
            {"layout": a["layout"], "interleaved": a["interleaved"]})


def _reference(t: dict[str, Any], o: dict[str, Any]) -> Any:
    return reference_rope(t["q"], t["k"], t["cos"], t["sin"], layout=o["layout"], interleaved=o["interleaved"])


CUSTOM_OPS = (define("rope", _signature, _fake, _to_call, lambda a: (a["q"].dtype, a["k"].dtype), _reference),)
