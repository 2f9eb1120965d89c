"""Structural detection and numerical self-checks for architectures without a patch spec.

Detection proposes; numbers decide. A module that looks like an RMSNorm (a 1-D ``weight``, an
``eps``/``variance_epsilon`` float, an ``rsqrt`` in its code) may still add an offset, cast differently or
do something else entirely, so every proposal is run against the module's own forward on a probe input
before it is bound, and only a match within tolerance is applied. A failed check becomes a line in
``PatchReport.skipped`` (never a silent change of the model's maths).

The same probe identifies MLP activations (silu, gelu tanh, exact gelu) from their outputs, whatever the
activation class is called, and verifies a module-global RoPE function against LayerZero's rope.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

# fp32 probes compare within (rtol, atol); low-precision probes only rank candidates
FP32_TOL = (1e-4, 1e-5)
LOWP_TOL = (3e-2, 3e-2)

NORM_CANDIDATES: tuple[tuple[float, str], ...] = ((0.0, "llama"), (1.0, "gemma"), (0.0, "gemma"), (1.0, "llama"),
                                                   (0.0, "none"))
EPS_ATTRS: tuple[str, ...] = ("variance_epsilon", "eps")


class CheckFailed(Exception):
    """A proposal did not reproduce the module's own output; the message says by how much."""


@dataclass(frozen=True)
class Proposal:
    """A replacement the detector suggests for one module (parameters as in a PatchSpec)."""

    kind: str
    params: dict[str, Any]
    why: str


# ---------------------------------------------------------------------------------------------- helpers
def _materialised(module: nn.Module) -> bool:
    return all(not t.is_meta for t in itertools.chain(module.parameters(), module.buffers()))


def _param_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for p in module.parameters():
        return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def class_code_names(cls: type) -> set[str]:
    """Every global/attribute name the class's own methods mention (forward and its helpers)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        for value in vars(klass).values():
            fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            code = getattr(fn, "__code__", None)
            if code is not None:
                names.update(code.co_names)
    return names


def forward_names(cls: type) -> set[str]:
    """The global/attribute names ``cls.forward`` mentions, following ``__wrapped__`` through ``functools.wraps``
    decorators (Transformers wraps attention forwards in ``@deprecate_kwarg``; the wrapper's own code
    mentions none of the forward's names)."""
    names: set[str] = set()
    fn, depth = getattr(cls, "forward", None), 0
    while fn is not None and depth < 16:
        code = getattr(fn, "__code__", None)
        if code is not None:
            names.update(code.co_names)
        fn, depth = getattr(fn, "__wrapped__", None), depth + 1
    return names


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def _close(a: torch.Tensor, b: torch.Tensor, tol: tuple[float, float]) -> bool:
    if a.shape != b.shape:
        return False
    return torch.allclose(a.float(), b.float(), rtol=tol[0], atol=tol[1])


def eps_of(module: nn.Module, attrs: Iterable[str] = EPS_ATTRS) -> tuple[str, float] | None:
    for name in attrs:
        value = getattr(module, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return name, float(value)
    return None


# ---------------------------------------------------------------------------------------------- activations
def identify_activation(act: Any) -> tuple[str, str] | None:
    """``("swiglu", "none")``, ``("geglu", "tanh")`` or ``("geglu", "none")`` from the activation's outputs
    on a probe (so aliases like NewGELU/FastGELU/nn.SiLU are recognised), or None."""
    if not callable(act):
        return None
    x = torch.linspace(-8.0, 8.0, 513, dtype=torch.float32)
    try:
        with torch.no_grad():
            y = act(x)
    except Exception:
        return None
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        return None
    for op, approx, ref in (("swiglu", "none", F.silu(x)), ("geglu", "tanh", F.gelu(x, approximate="tanh")),
                            ("geglu", "none", F.gelu(x))):
        if torch.allclose(y.float(), ref, rtol=1e-5, atol=1e-6):
            return op, approx
    return None


ACTIVATION_NAMES = {("swiglu", "none"): "silu", ("geglu", "tanh"): "gelu_tanh", ("geglu", "none"): "gelu"}


# ---------------------------------------------------------------------------------------------- proposals
def propose(qualname: str, module: nn.Module) -> Proposal | None:
    """A structural guess for one module, or None when it looks like nothing we replace."""
    if type(module) is nn.LayerNorm:
        if module.elementwise_affine and len(module.normalized_shape) == 1:
            return Proposal("layer_norm", {"eps_attr": ("eps",), "weight_attr": "weight", "bias_attr": "bias"},
                            "torch.nn.LayerNorm over the last dimension")
        return None
    if type(module) is getattr(nn, "RMSNorm", None):
        if module.weight is not None and module.eps is not None and len(module.normalized_shape) == 1:
            return Proposal("rms_norm", {"eps_attr": ("eps",), "weight_attr": "weight"},
                            "torch.nn.RMSNorm over the last dimension")
        return None
    if type(module).forward is nn.Module.forward:
        return None
    eps = eps_of(module)
    weight = getattr(module, "weight", None)
    own_params = dict(module.named_parameters(recurse=False))
    if (
        eps is not None
        and isinstance(weight, nn.Parameter)
        and weight.dim() == 1
        and set(own_params) == {"weight"}
        and not list(module.children())
    ):
        names = class_code_names(type(module))
        if "rsqrt" in names or ("sqrt" in names and "mean" in names):
            return Proposal("rms_norm", {"eps_attr": (eps[0],), "weight_attr": "weight"},
                            f"1-D weight, {eps[0]}, rsqrt in forward")
    children = dict(module.named_children())
    linear = lambda n: isinstance(children.get(n), nn.Linear)  # noqa: E731
    if linear("gate_proj") and linear("up_proj") and linear("down_proj"):
        act = "act_fn" if hasattr(module, "act_fn") else "activation_fn" if hasattr(module, "activation_fn") else None
        if act is not None:
            return Proposal("mlp", {"layout": "gate_up_separate", "gate": "gate_proj", "up": "up_proj",
                                    "down": "down_proj", "act": act},
                            f"gate_proj/up_proj/down_proj + {act}")
    if linear("gate_up_proj") and linear("down_proj"):
        act = "activation_fn" if hasattr(module, "activation_fn") else "act_fn" if hasattr(module, "act_fn") else None
        if act is not None:
            return Proposal("mlp", {"layout": "gate_up_fused", "gate_up": "gate_up_proj", "down": "down_proj",
                                    "act": act}, f"fused gate_up_proj/down_proj + {act}")
    fwd = forward_names(type(module))
    if "apply_rotary_pos_emb" in fwd and "ALL_ATTENTION_FUNCTIONS" in fwd:
        return Proposal("rope", {"function": "apply_rotary_pos_emb", "layout": "bhsd", "interleaved": False},
                        "attention forward calls the module-global apply_rotary_pos_emb")
    return None


def is_attention_module(module: nn.Module) -> bool:
    """An HF attention module: its forward looks up the attention function in ALL_ATTENTION_FUNCTIONS."""
    return "ALL_ATTENTION_FUNCTIONS" in forward_names(type(module))


# ---------------------------------------------------------------------------------------------- self-checks
def check_norm(module: nn.Module, replacement: Callable[[torch.Tensor], torch.Tensor], hidden: int) -> str:
    """Original vs replacement on fp32 probes; raises CheckFailed with the error."""
    if not _materialised(module):
        raise CheckFailed("weights are not materialised (meta device); load the weights, then patch")
    dtype, device = _param_dtype_device(module)
    gen = torch.Generator(device="cpu").manual_seed(1234)
    x = (torch.randn(2, 3, hidden, generator=gen) * 3).to(device=device, dtype=dtype)
    with torch.no_grad():
        want = module.forward(x) if "forward" not in module.__dict__ else type(module).forward(module, x)
        got = replacement(x)
    tol = FP32_TOL if dtype == torch.float32 else LOWP_TOL
    if want.dtype != got.dtype or not _close(want, got, tol):
        raise CheckFailed(f"max abs diff {max_diff(want, got):.3g} (dtype {want.dtype} vs {got.dtype}) on a probe")
    return f"self-check max abs diff {max_diff(want, got):.1e}"


def choose_norm_params(module: nn.Module, make: Callable[[float, str], Callable], hidden: int) -> tuple[float, str]:
    """The (offset, casting) among NORM_CANDIDATES that reproduces the module: must match in fp32, then the
    closest in bf16 (where the casting modes differ) wins."""
    if not _materialised(module):
        raise CheckFailed("weights are not materialised (meta device); load the weights, then patch")
    _, device = _param_dtype_device(module)
    gen = torch.Generator(device="cpu").manual_seed(4321)
    base = torch.randn(2, 3, hidden, generator=gen) * 3
    original = type(module).forward
    fp32 = copy.deepcopy(module).float()
    low = copy.deepcopy(module).to(torch.bfloat16)
    passing: list[tuple[float, float, str]] = []
    errors: list[str] = []
    with torch.no_grad():
        x32 = base.to(device)
        want32 = original(fp32, x32)
        xb = base.to(device=device, dtype=torch.bfloat16)
        wantb = original(low, xb)
        for offset, casting in NORM_CANDIDATES:
            got32 = make(offset, casting)(fp32, x32)
            if not _close(want32, got32, FP32_TOL):
                errors.append(f"offset={offset} casting={casting}: fp32 diff {max_diff(want32, got32):.2g}")
                continue
            gotb = make(offset, casting)(low, xb)
            if gotb.dtype != wantb.dtype:
                errors.append(f"offset={offset} casting={casting}: bf16 output dtype {gotb.dtype} vs {wantb.dtype}")
                continue
            passing.append((max_diff(wantb, gotb), offset, casting))
    if not passing:
        raise CheckFailed("no RMSNorm variant reproduces the module (" + "; ".join(errors[:3]) + ")")
    passing.sort(key=lambda t: t[0])
    _, offset, casting = passing[0]
    return offset, casting


def check_mlp(module: nn.Module, replacement: Callable[[torch.Tensor], torch.Tensor], hidden: int) -> str:
    return check_norm(module, replacement, hidden)


def check_rope(original: Callable, replacement: Callable, *, heads: int, kv_heads: int, head_dim: int,
               rot_dim: int, dtype: torch.dtype, device: torch.device, half_tables: bool = False) -> str:
    """The module-global RoPE function vs LayerZero's on rotary tables built like HF's (cat(freqs, freqs)),
    or, with ``half_tables``, like gpt-oss's (freqs alone)."""
    gen = torch.Generator(device="cpu").manual_seed(99)
    b, s = 2, 5
    q = torch.randn(b, heads, s, head_dim, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(b, kv_heads, s, head_dim, generator=gen).to(device=device, dtype=dtype)
    inv = 1.0 / (10000.0 ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
    pos = torch.arange(s, dtype=torch.float32)[None, :].expand(b, s) + torch.tensor([[0.0], [3.0]])
    freqs = pos[..., None] * inv
    emb = freqs if half_tables else torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(device=device, dtype=dtype), emb.sin().to(device=device, dtype=dtype)
    with torch.no_grad():
        try:
            want = original(q, k, cos, sin)
        except Exception as exc:  # the original cannot take this probe: nothing to compare against
            raise CheckFailed(f"original RoPE function failed on the probe: {type(exc).__name__}: {exc}") from None
        got = replacement(q, k, cos, sin)
    tol = FP32_TOL if dtype == torch.float32 else LOWP_TOL
    for name, w, g in (("q", want[0], got[0]), ("k", want[1], got[1])):
        if not _close(w, g, tol):
            raise CheckFailed(f"{name}: max abs diff {max_diff(w, g):.3g} on a probe (rot_dim {rot_dim})")
    return f"self-check max abs diff {max(max_diff(want[0], got[0]), max_diff(want[1], got[1])):.1e}"


def rope_dims(module: nn.Module) -> tuple[int, int, int, int] | None:
    """(heads, kv_heads, head_dim, rot_dim) of an HF attention module from its config."""
    config = getattr(module, "config", None)
    head_dim = getattr(module, "head_dim", None)
    if config is None or not isinstance(head_dim, int):
        return None
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    if not isinstance(heads, int):
        return None
    factor = 1.0
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict):
        factor = float(rp.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0)
    else:
        factor = float(getattr(config, "partial_rotary_factor", 1.0) or 1.0)
    rot = int(head_dim * factor)
    rot -= rot % 2
    return heads, kv, head_dim, max(2, rot)


__all__ = [
    "ACTIVATION_NAMES",
    "CheckFailed",
    "Proposal",
    "check_mlp",
    "check_norm",
    "check_rope",
    "choose_norm_params",
    "class_code_names",
    "identify_activation",
    "is_attention_module",
    "propose",
    "rope_dims",
]
