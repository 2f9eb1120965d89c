"""Normalisations: ``rms_norm`` and ``layer_norm`` over the last dimension.

rms_norm: ``x (..., hidden)``, ``weight (hidden,)`` or None; ``offset`` is added to the weight (Gemma
uses 1.0); ``casting`` is ``"llama"`` (normalise in fp32, cast to the input dtype, then multiply by the
weight), ``"gemma"`` (everything in fp32, cast at the end) or ``"none"`` (compute in the input dtype).
With ``residual`` the kernel first computes ``x + residual`` and returns ``(normed, x + residual)``.

layer_norm: ``x (..., hidden)``, optional ``weight``/``bias`` ``(hidden,)``; returns x's shape and dtype.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Optional

import torch
import torch.nn.functional as F

from layerzero.operations.base import (
    KeyBuckets,
    Keyer,
    Operation,
    OperationContract,
    OutputSpec,
    Problem,
    grad_enabled,
    positive,
    randn,
    row_facts,
    same_as,
)
from layerzero.operations.custom_ops import define, unbound

CASTINGS = ("llama", "gemma", "none")


# ----------------------------------------------------------------------------------------------- references
def reference_rms_norm(
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
    if casting not in CASTINGS:
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


def reference_layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dimension, computed in fp32."""
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(x.dtype)


# ----------------------------------------------------------------------------------------------- operations
class _Norm(Operation):
    """What both norms share: x of shape (..., hidden), an optional weight, eps, row-wise facts and key."""

    optional_inputs = frozenset({"weight", "bias"})

    def check_inputs(self, a: Mapping[str, Any], found: list[Problem]) -> None:
        x = a["x"]
        if x.dim() < 1:
            found.append(("x", tuple(x.shape), "expected at least one dimension (..., hidden)"))
            return
        weight = a.get("weight")
        if weight is not None and tuple(weight.shape) != (x.shape[-1],):
            found.append(("weight", tuple(weight.shape), f"expected shape ({x.shape[-1]},), the last dimension of "
                          f"x {tuple(x.shape)}"))
        eps = a.get("eps", 1e-6)
        if not positive(eps):
            found.append(("eps", eps, "expected a positive finite float, e.g. 1e-6"))

    def selection_facts(self, inputs: Mapping[str, Any], kwargs: Mapping[str, Any], values: dict[str, Any]) -> None:
        row_facts(inputs.get("x"), values)
        values["norm_offset"] = float(kwargs.get("offset", 0.0) or 0.0)
        values["casting"] = kwargs.get("casting")
        values["fused_residual"] = kwargs.get("residual", inputs.get("residual")) is not None

    def keyer(self, buckets: KeyBuckets) -> Keyer:
        mb, bb = buckets.batch

        def norm_key(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
            x = inputs["x"]
            shape = x.shape
            h = shape[-1]
            rows = shape.numel() // h if h else 0  # the Size's numel: no second call into the tensor
            return (
                op, mb.get(rows) or bb(rows), h, x.dtype, x.device, kw.get("offset"), kw.get("casting"),
                kw.get("residual") is not None or inputs.get("residual") is not None,
                x.requires_grad and grad_enabled(), x.is_contiguous(),
            )

        return norm_key

    def expected_outputs(self, inputs: Mapping[str, Any], count: int) -> list[OutputSpec]:
        return same_as(inputs["x"], count)


class RMSNorm(_Norm):
    optional_inputs = frozenset({"weight"})
    tensor_options = ("residual",)

    def check_inputs(self, a: Mapping[str, Any], found: list[Problem]) -> None:
        x = a["x"]
        super().check_inputs(a, found)
        casting = a.get("casting", "llama")
        if casting not in CASTINGS:
            found.append(("casting", casting, "expected 'llama', 'gemma' or 'none'"))
        offset = a.get("offset", 0.0)
        if not isinstance(offset, (int, float)) or isinstance(offset, bool) or not math.isfinite(offset):
            found.append(("offset", offset, "expected a finite float (Gemma: 1.0)"))
        residual = a.get("residual")
        if residual is not None:
            try:
                torch.broadcast_shapes(tuple(residual.shape), tuple(x.shape))
            except RuntimeError:
                found.append(("residual", tuple(residual.shape), f"not broadcastable to x's shape {tuple(x.shape)}"))

    def described_facts(self, d: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().described_facts(d), "casting": d.get("casting"), "norm_offset": d.get("offset", 0.0),
                "fused_residual": bool(d.get("residual"))}

    def sample_inputs(self, shape: Any, device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Any], dict[str, Any]]:
        mk = randn(device, dtype)
        return {"x": mk(shape.tokens, shape.hidden), "weight": mk(shape.hidden)}, {}


class LayerNorm(_Norm):
    def check_inputs(self, a: Mapping[str, Any], found: list[Problem]) -> None:
        super().check_inputs(a, found)
        bias = a.get("bias")
        hidden = a["x"].shape[-1] if a["x"].dim() else None
        if bias is not None and tuple(bias.shape) != (hidden,):
            found.append(("bias", tuple(bias.shape), f"expected shape ({hidden},), the last dimension of x"))

    def sample_inputs(self, shape: Any, device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Any], dict[str, Any]]:
        mk = randn(device, dtype)
        return {"x": mk(shape.tokens, shape.hidden), "weight": mk(shape.hidden), "bias": mk(shape.hidden)}, {}


RMS_NORM = RMSNorm(OperationContract("rms_norm", ("x", "weight"), ("eps", "offset", "casting", "residual")),
                   reference_rms_norm)
LAYER_NORM = LayerNorm(OperationContract("layer_norm", ("x", "weight", "bias"), ("eps",)), reference_layer_norm)
OPERATIONS = (RMS_NORM, LAYER_NORM)


# ----------------------------------------------------------------------------------------------- custom ops
def _rms_signature(
    x: torch.Tensor, weight: Optional[torch.Tensor], eps: float, offset: float, casting: str,
    orchestrator: Optional[str],
) -> torch.Tensor:
    raise unbound("rms_norm")


def _rms_residual_signature(
    x: torch.Tensor, weight: Optional[torch.Tensor], residual: torch.Tensor, eps: float, offset: float,
    casting: str, orchestrator: Optional[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    raise unbound("rms_norm_residual")


def _layer_norm_signature(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
    orchestrator: Optional[str],
) -> torch.Tensor:
    raise unbound("layer_norm")


def sum_dtype(x: torch.Tensor, residual: torch.Tensor) -> torch.dtype:
    """dtype of ``x + residual``, the second output of the fused residual norm."""
    return torch.promote_types(x.dtype, residual.dtype)


def _rms_fake(x, weight, eps, offset, casting, orchestrator):
    return x.new_empty(x.shape)


def _rms_residual_fake(x, weight, residual, eps, offset, casting, orchestrator):
    shape = torch.broadcast_shapes(x.shape, residual.shape)
    return x.new_empty(shape), x.new_empty(shape, dtype=sum_dtype(x, residual))


def _layer_norm_fake(x, weight, bias, eps, orchestrator):
    return x.new_empty(x.shape)


def rms_options(eps: float, offset: float, casting: str, residual: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """The dispatcher options of an rms_norm call (``residual`` only when given)."""
    options: dict[str, Any] = {"eps": eps, "offset": offset, "casting": casting}
    if residual is not None:
        options["residual"] = residual
    return options


def _rms_call(a: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return ("rms_norm", {"x": a["x"], "weight": a["weight"]},
            rms_options(a["eps"], a["offset"], a["casting"], a.get("residual")))


def _rms_reference(tensors: dict[str, Any], options: dict[str, Any]) -> Any:
    return reference_rms_norm(tensors["x"], tensors["weight"], eps=options["eps"], offset=options["offset"],
                              casting=options["casting"], residual=tensors.get("residual"))


CUSTOM_OPS = (
    define("rms_norm", _rms_signature, _rms_fake, _rms_call, lambda a: (a["x"].dtype,), _rms_reference),
    define("rms_norm_residual", _rms_residual_signature, _rms_residual_fake, _rms_call,
           lambda a: (a["x"].dtype, sum_dtype(a["x"], a["residual"])), _rms_reference),
    define("layer_norm", _layer_norm_signature, _layer_norm_fake,
           lambda a: ("layer_norm", {"x": a["x"], "weight": a["weight"], "bias": a["bias"]}, {"eps": a["eps"]}),
           lambda a: (a["x"].dtype,), lambda t, o: reference_layer_norm(t["x"], t["weight"], t["bias"], eps=o["eps"])),
)
