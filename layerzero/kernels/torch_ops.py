"""PyTorch-native kernels for norms, RoPE and gated activations.

``F.rms_norm`` is the reason this module exists: it is a single fused kernel on CUDA and measured
1.5–2.6 TB/s against ~0.25 TB/s for the HF eager RMSNorm (H100), so it is the default RMSNorm.
Each function keeps the exact casting convention of the contract, and every one runs on any device.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from layerzero.kernels.reference import rope_broadcast, rotate_half, rotate_interleaved
from layerzero.operations.activation import GEGLU, SWIGLU
from layerzero.operations.base import implements
from layerzero.operations.norm import LAYER_NORM, RMS_NORM
from layerzero.operations.rope import ROPE

__all__ = ["torch_geglu", "torch_layer_norm", "torch_rms_norm", "torch_rope", "torch_swiglu"]


class _DerivedWeights:
    """The weight each RMSNorm call hands ``F.rms_norm`` (``offset + w`` in fp32 for Gemma, or cast to the
    input dtype), kept per parameter while the parameter is unchanged.

    Computing it costs two or three ATen calls per norm call — tens of microseconds of host time on a
    host-bound decode step that makes a hundred norm calls — for a value that changes only when the weights
    do. An entry is keyed by the parameter's identity and checked against its version counter (bumped by
    every in-place write, ``load_state_dict`` included) and data pointer (``param.data = ...``); the
    parameter is held weakly, so a dropped model frees its entries.

    Not cached, computed as before: traced calls (``torch.compile``), inference-mode tensors (no version
    counter), tensor subclasses (a DTensor shard has no plain data pointer to key on), weights that need a
    gradient, and calls captured into a CUDA graph (a graph that read a cached tensor would keep reading its
    memory after an update had replaced it; computed inside the graph, it follows the parameter at every
    replay)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple] = {}

    def get(self, weight: torch.Tensor, offset: float, dtype: torch.dtype) -> torch.Tensor:
        if type(weight) not in _PLAIN or torch.compiler.is_compiling() or weight.is_inference() or (
                weight.requires_grad and torch.is_grad_enabled()) or (
                weight.is_cuda and torch.cuda.is_current_stream_capturing()):
            return _derive(weight, offset, dtype)
        key = (id(weight), offset, dtype)
        hit = self._entries.get(key)
        if hit is not None:
            ref, version, ptr, value = hit
            if ref() is weight and version == weight._version and ptr == weight.data_ptr():
                return value
        value = _derive(weight.detach(), offset, dtype)  # no autograd graph holding the parameter
        if len(self._entries) > 4096:  # a process that builds models in a loop: start over, never grow
            self._entries.clear()
        self._entries[key] = (weakref.ref(weight), weight._version, weight.data_ptr(), value)
        return value


def _derive(weight: torch.Tensor, offset: float, dtype: torch.dtype) -> torch.Tensor:
    w = offset + weight.float() if offset else weight
    return w if w.dtype == dtype else w.to(dtype)


_PLAIN = (torch.Tensor, torch.nn.Parameter)
# ``F.rms_norm`` and ``F.silu`` are Python wrappers over these: a ``__torch_function__`` check (which the
# ATen bindings below do too, in C++) and, for silu, the ``inplace`` branch. Calling the bindings directly
# saves about a microsecond of host time per call, which host-bound decode loops pay per layer.
_rms = torch.rms_norm
_silu = torch._C._nn.silu
_DERIVED = _DerivedWeights()


@implements(RMS_NORM)
def torch_rms_norm(x, weight, eps, offset, casting, residual):
    """RMSNorm on ``F.rms_norm``.

    "llama": one fused ``F.rms_norm`` with the weight in the input dtype. It normalises in fp32 and rounds
    once after the weight multiply, where HF Llama rounds before it too: at most one unit in the last place
    apart, and the reason this kernel exists (the two-kernel exact form measured 845 GB/s on an H100 vs
    1.4-2 TB/s for fused kernels). Exact double rounding: ``liger_rms_norm`` / ``reference_rms_norm``.
    "gemma": fp32 ``F.rms_norm`` with ``offset + w`` as fp32 weight, rounded once (exact, slower: an fp32
    copy of x). "none": the fused kernel with the weight in the input dtype. A derived weight (offset
    added, or cast) is computed once per parameter version (:class:`_DerivedWeights`)."""
    if residual is not None:
        x = x + residual
    shape = (x.shape[-1],)
    dtype = x.dtype
    # ``.to`` is skipped when the dtype already matches: even a no-op cast is an ATen call (~1 us of host
    # time), and decode loops are host-bound.
    if casting == "llama":
        w = weight
        if weight is not None and (offset or weight.dtype != dtype):
            w = _DERIVED.get(weight, offset, dtype)
        out = _rms(x, shape, w, eps)
    elif casting == "gemma":
        w = _DERIVED.get(weight, offset, torch.float32) if weight is not None else None
        xf = x if dtype == torch.float32 else x.float()
        out = _rms(xf, shape, w, eps).to(dtype)
    elif casting == "none":
        w = _DERIVED.get(weight, offset, weight.dtype) if weight is not None and offset else weight
        if w is not None and w.dtype != dtype:  # the offset is added in the weight's own dtype
            w = w.to(dtype)
        out = _rms(x, shape, w, eps)
    else:
        raise ValueError(f"rms_norm casting={casting!r} is not one of 'llama', 'gemma', 'none'")
    if residual is not None:
        return out, x
    return out


@implements(LAYER_NORM)
def torch_layer_norm(x, weight, bias, eps):
    """``F.layer_norm`` (fused, fp32 accumulation internally) with parameters cast to the input dtype."""
    w = weight.to(x.dtype) if weight is not None and weight.dtype != x.dtype else weight
    b = bias.to(x.dtype) if bias is not None and bias.dtype != x.dtype else bias
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


@implements(ROPE)
def torch_rope(q, k, cos, sin, layout, interleaved, unsqueeze_dim):
    """HF ``apply_rotary_pos_emb`` in the input dtype (what Transformers runs eagerly), plus partial
    rotary and interleaved pairs. Full-width rotation skips the slice/concat copies."""
    c = rope_broadcast(cos, layout, unsqueeze_dim)
    s = rope_broadcast(sin, layout, unsqueeze_dim)
    if c.dtype != q.dtype:
        c = c.to(q.dtype)
    if s.dtype != q.dtype:
        s = s.to(q.dtype)
    rot = cos.shape[-1]
    rotate = rotate_interleaved if interleaved else rotate_half

    def apply(t: torch.Tensor) -> torch.Tensor:
        if rot == t.shape[-1]:
            return t * c + rotate(t) * s
        if rot > t.shape[-1]:
            raise ValueError(f"rope rotary dim {rot} > head_dim {t.shape[-1]}; cos/sin are too wide")
        t_rot, t_pass = t[..., :rot], t[..., rot:]
        return torch.cat((t_rot * c + rotate(t_rot) * s, t_pass), dim=-1)

    return apply(q), apply(k)


@implements(SWIGLU)
def torch_swiglu(gate, up):
    """``F.silu(gate) * up`` in the input dtype (HF LlamaMLP's eager math)."""
    return _silu(gate) * up


@implements(GEGLU)
def torch_geglu(gate, up, approximate):
    """``F.gelu(gate, approximate) * up`` in the input dtype (HF Gemma MLP's eager math)."""
    return F.gelu(gate, approximate=approximate) * up
