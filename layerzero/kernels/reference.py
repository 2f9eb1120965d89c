"""fp32 reference implementations of every operation contract (``layerzero/operations.py``).

They are the conformance oracle every other kernel is tested against, and the last-resort kernels (tag
``"reference"``): plain PyTorch, any device, any dtype, every feature of the contract. They compute in
float32 and return the caller's dtype, so they are slow and memory-hungry on purpose: clarity first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "attention",
    "attention_allowed_mask",
    "expand_kv_heads",
    "geglu",
    "layer_norm",
    "rms_norm",
    "rope",
    "rotate_half",
    "rotate_interleaved",
    "swiglu",
]


# ----------------------------------------------------------------------------------------------- attention
def expand_kv_heads(t: torch.Tensor, num_heads: int, head_dim_axis: int = 2) -> torch.Tensor:
    """Repeat grouped kv heads so every query head has its own (GQA -> MHA); axis is the heads axis."""
    hkv = t.shape[head_dim_axis]
    if hkv == num_heads:
        return t
    if num_heads % hkv:
        raise ValueError(
            f"key/value heads {hkv} must divide query heads {num_heads} (grouped-query attention); "
            "fix the model's num_key_value_heads"
        )
    return t.repeat_interleave(num_heads // hkv, dim=head_dim_axis)


def attention_allowed_mask(
    seq_q: int,
    seq_k: int,
    is_causal: bool,
    sliding_window: int | None,
    device: torch.device | str,
) -> torch.Tensor | None:
    """Bool (Sq, Sk) mask, True = attend, for bottom-right causal and/or a sliding window; None if neither.

    Query ``i`` sits at absolute position ``i + Sk - Sq`` (the last query sees the last key), which is the
    KV-cache convention every decoding loop relies on."""
    if not is_causal and sliding_window is None:
        return None
    i_abs = torch.arange(seq_q, device=device).unsqueeze(1) + (seq_k - seq_q)
    j = torch.arange(seq_k, device=device).unsqueeze(0)
    allowed = torch.ones(seq_q, seq_k, dtype=torch.bool, device=device)
    if is_causal:
        allowed &= j <= i_abs
    if sliding_window is not None:
        allowed &= (i_abs - j) < sliding_window
    return allowed


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Math attention in fp32 over (B, S, H, D) inputs; returns (B, Sq, H, Dv) in the query dtype.

    Rows that may attend to nothing (e.g. a padded query) return zeros rather than NaN, like the
    flash-style kernels. The contract leaves such rows unspecified (SDPA's cuDNN backend returns other
    values, measured on an H100), so callers must not read them."""
    b, sq, h, d = query.shape
    sk = key.shape[1]
    q = query.float().transpose(1, 2)
    k = expand_kv_heads(key.float(), h).transpose(1, 2)
    v = expand_kv_heads(value.float(), h).transpose(1, 2)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Sq, Sk)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    allowed = attention_allowed_mask(sq, sk, is_causal, sliding_window, query.device)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else (allowed & attn_mask)
        else:
            scores = scores + attn_mask.float()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        sink = sinks.float().reshape(1, h, 1, 1).expand(b, h, sq, 1)
        scores = torch.cat([scores, sink], dim=-1)
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    probs = torch.where(denom > 0, weights / denom.clamp_min(torch.finfo(torch.float32).tiny), weights)
    if sinks is not None:
        probs = probs[..., :sk]
    if dropout_p:
        probs = F.dropout(probs, p=dropout_p, training=True)
    out = torch.matmul(probs, v)  # (B, H, Sq, Dv)
    return out.transpose(1, 2).to(query.dtype)


# ----------------------------------------------------------------------------------------------- norms
def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    offset: float = 0.0,
    casting: str = "llama",
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm with the three casting conventions models use.

    "llama" rounds the normalised activations to the input dtype *before* the weight multiply (Llama,
    Mistral, Qwen); "gemma" multiplies by ``offset + w`` in fp32 and rounds once at the end; "none"
    computes in the input dtype. The residual variant adds first and returns the sum too, like vLLM's
    fused add-norm."""
    if casting not in ("llama", "gemma", "none"):
        raise ValueError(f"rms_norm casting={casting!r} is not one of 'llama', 'gemma', 'none'")
    if residual is not None:
        x = x + residual
    summed = x
    dtype = x.dtype
    compute = x.float() if casting != "none" else x
    normed = compute * torch.rsqrt(compute.pow(2).mean(-1, keepdim=True) + eps)
    if casting == "llama":
        normed = normed.to(dtype)
        if weight is not None:
            w = (offset + weight.float()) if offset else weight.float()
            normed = (w * normed.float()).to(dtype)
    elif casting == "gemma":
        if weight is not None:
            normed = normed * (offset + weight.float())
        normed = normed.to(dtype)
    else:
        if weight is not None:
            w = (offset + weight) if offset else weight
            normed = normed * w.to(dtype)
        normed = normed.to(dtype)
    if residual is not None:
        return normed, summed
    return normed


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dimension, computed in fp32."""
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(x.dtype)


# ----------------------------------------------------------------------------------------------- rope
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


def rope(
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


# ----------------------------------------------------------------------------------------------- gated MLP
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in fp32."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """``gelu(gate, approximate) * up`` in fp32 (Gemma uses the tanh approximation)."""
    return (F.gelu(gate.float(), approximate=approximate) * up.float()).to(gate.dtype)
