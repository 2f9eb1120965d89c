"""vLLM's own ops as LayerZero kernels: ``vllm_rms_norm``, ``vllm_rope``, ``vllm_silu_and_mul``.

Registered in LayerZero's global catalogue in every process where the plugin is active, so the policy
can name, lock, deny and rank vLLM's own implementation like any other kernel. The plugin locks each
operation to them by default (:mod:`layerzero_vllm.exact`): that is what makes the plugin exact. A layer
whose plan is vLLM's kernel at every size keeps vLLM's own forward method and never reaches these
functions; they run when a policy mixes kernels by shape, so a call that the policy sends to vLLM's
kernel still rounds exactly like vLLM.

Each function takes LayerZero's contract arguments and calls the code vLLM's layer would call:

* ``vllm_rms_norm``: ``vllm.ir.ops.rms_norm`` / ``fused_add_rms_norm`` (fp32 math, the residual summed
  in fp32, the weight multiplied in the weight's dtype); Gemma's ``1 + w`` in fp32 like ``GemmaRMSNorm``;
* ``vllm_rope``: ``vllm._custom_ops.rotary_embedding`` on a cos/sin cache rebuilt from the contract's
  ``cos``/``sin`` (one row per token), on copies (the vLLM op works in place; the contract never mutates);
* ``vllm_silu_and_mul``: ``F.silu(gate) * up`` on CPU (vLLM's CPU path), ``torch.ops._C.silu_and_mul``
  on the concatenated input elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch

from layerzero.operations.activation import SWIGLU
from layerzero.operations.base import implements
from layerzero.operations.norm import RMS_NORM
from layerzero.operations.rope import ROPE

BACKEND = "vllm"
_MODULE = "layerzero_vllm.kernels"


# --------------------------------------------------------------------------------------------- kernels
@implements(RMS_NORM)
def rms_norm(x, weight, eps, offset, casting, residual):
    from vllm import ir

    if casting == "gemma":
        w = weight.float() + offset if weight is not None else torch.full(
            (x.shape[-1],), float(offset), dtype=torch.float32, device=x.device)
    else:
        w = weight
    if residual is None:
        return ir.ops.rms_norm(x, w, eps)
    return ir.ops.fused_add_rms_norm(x, residual, w, eps)


def _cache_rows(t: torch.Tensor, layout: str, unsqueeze_dim: int | None, batch: int, seq: int) -> torch.Tensor:
    """cos or sin as ``(batch * seq, rot)``, whatever broadcastable shape the caller passed."""
    if unsqueeze_dim is not None:
        t = t.unsqueeze(unsqueeze_dim)
    if t.dim() == 2:  # (seq, rot)
        t = t.unsqueeze(0)
    if t.dim() == 4:  # (batch, 1, seq, rot) for bhsd or (batch, seq, 1, rot) for bshd
        t = t.squeeze(1) if layout == "bhsd" else t.squeeze(2)
    return t.expand(batch, seq, t.shape[-1]).reshape(batch * seq, t.shape[-1])


@implements(ROPE)
def rope(q, k, cos, sin, layout, interleaved, unsqueeze_dim):
    from vllm import _custom_ops as ops

    seq_dim = 2 if layout == "bhsd" else 1
    batch, seq, head = q.shape[0], q.shape[seq_dim], q.shape[-1]
    cos_rows = _cache_rows(cos, layout, unsqueeze_dim, batch, seq)
    sin_rows = _cache_rows(sin, layout, unsqueeze_dim, batch, seq)
    half = cos_rows.shape[-1] // 2
    if interleaved:  # GPT-J pairs: each frequency appears twice, adjacent
        cos_half, sin_half = cos_rows[:, ::2], sin_rows[:, ::2]
    else:  # NeoX halves: the frequencies repeat once
        cos_half, sin_half = cos_rows[:, :half], sin_rows[:, :half]
    cache = torch.cat((cos_half, sin_half), dim=-1).to(q.dtype).contiguous()
    positions = torch.arange(batch * seq, device=q.device)

    def tokens_major(t: torch.Tensor) -> torch.Tensor:  # (batch*seq, heads*head) copy, token-major
        t = t.transpose(1, 2) if layout == "bhsd" else t
        return t.reshape(batch * seq, -1).clone()

    def back(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        heads = like.shape[1] if layout == "bhsd" else like.shape[2]
        t = t.view(batch, seq, heads, head)
        return t.transpose(1, 2).contiguous() if layout == "bhsd" else t

    q_rows = tokens_major(q)
    k_rows = tokens_major(k) if k is not None else None
    ops.rotary_embedding(positions, q_rows, k_rows, head, cache, not interleaved)
    return back(q_rows, q), (back(k_rows, k) if k is not None else None)  # type: ignore[return-value]


@implements(SWIGLU)
def silu_and_mul(gate, up):
    import torch.nn.functional as F

    if gate.device.type == "cpu":
        return F.silu(gate) * up
    x = torch.cat((gate, up), dim=-1)
    out = torch.empty_like(gate)
    torch.ops._C.silu_and_mul(out, x)
    return out


# --------------------------------------------------------------------------------------------- catalogue
def _llama_or_gemma(ctx: Any) -> str | None:
    """vLLM's RMSNorm ("llama", no offset) or GemmaRMSNorm ("gemma")"""
    if ctx.casting == "gemma":
        return None
    if ctx.casting not in (None, "llama"):
        return f"casting {ctx.casting!r} is neither vLLM's RMSNorm ('llama') nor GemmaRMSNorm ('gemma')"
    if ctx.norm_offset:
        return f"offset {ctx.norm_offset} with casting 'llama' is not a vLLM norm"
    return None


def _even_rotary(ctx: Any) -> str | None:
    """rotary dim must be even"""
    if ctx.rotary_dim is not None and ctx.rotary_dim % 2:
        return f"rotary_dim {ctx.rotary_dim} is odd"
    return None


def register_kernels() -> list[str]:
    """Register vLLM's backend and the three kernels in LayerZero's global registries (idempotent); returns
    the kernel ids."""
    from layerzero.registry import get_global_backend_registry, get_global_kernel_registry
    from layerzero.registry.backends import BackendSpec
    from layerzero.registry.constraints import KernelConstraints
    from layerzero.registry.kernel_spec import KernelSpec

    backends = get_global_backend_registry()
    if BACKEND not in backends:
        backends.register(BackendSpec(BACKEND, modules=("vllm",), description="vLLM's own ops (the vLLM plugin)"))
    floats = frozenset({"float32", "float16", "bfloat16"})
    specs = [
        KernelSpec("vllm_rms_norm", "rms_norm", BACKEND, f"{_MODULE}:rms_norm",
                   KernelConstraints(dtypes=floats, custom=(_llama_or_gemma,)), 60, tags=frozenset({"vllm"}),
                   description="vLLM's RMSNorm / GemmaRMSNorm (vllm.ir), fused residual summed in fp32"),
        KernelSpec("vllm_rope", "rope", BACKEND, f"{_MODULE}:rope",
                   KernelConstraints(dtypes=floats, custom=(_even_rotary,)), 60, tags=frozenset({"vllm"}),
                   description="vLLM's rotary_embedding op (in place, on copies)"),
        KernelSpec("vllm_silu_and_mul", "swiglu", BACKEND, f"{_MODULE}:silu_and_mul",
                   KernelConstraints(dtypes=floats), 60, tags=frozenset({"vllm"}),
                   description="vLLM's SiluAndMul (F.silu(gate) * up on CPU, _C.silu_and_mul elsewhere)"),
    ]
    kernels = get_global_kernel_registry()
    for spec in specs:
        if kernels.find(spec.kernel_id) is None:
            kernels.register(spec)
    return [s.kernel_id for s in specs]
