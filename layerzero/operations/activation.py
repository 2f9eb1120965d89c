"""Gated MLP activations: ``swiglu`` (``silu(gate) * up``) and ``geglu`` (``gelu(gate, approximate) * up``).

``gate`` and ``up`` have one shape ``(..., hidden)``; the output has the gate's shape and dtype.
"""

from __future__ import annotations

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
    randn,
    row_facts,
    same_as,
)
from layerzero.operations.custom_ops import define, unbound

APPROXIMATIONS = ("tanh", "none")


# ----------------------------------------------------------------------------------------------- references
def reference_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in fp32."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def reference_geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """``gelu(gate, approximate) * up`` in fp32 (Gemma uses the tanh approximation)."""
    return (F.gelu(gate.float(), approximate=approximate) * up.float()).to(gate.dtype)


# ----------------------------------------------------------------------------------------------- operations
class GatedActivation(Operation):
    """``act(gate) * up``; the reference function is the fp32 activation."""

    cuda_shapes = ({"tokens": 4096, "hidden": 14336},)  # Llama-8B's MLP width

    def check_inputs(self, a: Mapping[str, Any], found: list[Problem]) -> None:
        gate, up = a["gate"], a["up"]
        if tuple(gate.shape) != tuple(up.shape):
            found.append(("up", tuple(up.shape), f"must have the shape of gate {tuple(gate.shape)}"))
        if gate.dtype != up.dtype:
            found.append(("up", up.dtype, f"must have the dtype of gate ({gate.dtype})"))
        approximate = a.get("approximate", "tanh")
        if approximate not in APPROXIMATIONS:
            found.append(("approximate", approximate, "expected 'tanh' or 'none'"))

    def selection_facts(self, inputs: Mapping[str, Any], kwargs: Mapping[str, Any], values: dict[str, Any]) -> None:
        row_facts(inputs.get("gate"), values)
        if "approximate" in self.contract.options and kwargs.get("approximate", "tanh") != "tanh":
            values["extra"] = (("approximate", kwargs["approximate"]),)  # kernels are tanh-only

    def keyer(self, buckets: KeyBuckets) -> Keyer:
        mb, bb = buckets.batch

        def act_key(op: str, inputs: Mapping[str, Any], kw: Mapping[str, Any]) -> Hashable:
            g = inputs["gate"]
            shape = g.shape
            h = shape[-1]
            rows = shape.numel() // h if h else 0  # the Size's numel: no second call into the tensor
            return (
                op, mb.get(rows) or bb(rows), h, g.dtype, g.device, kw.get("approximate"),
                g.requires_grad and grad_enabled(), g.is_contiguous(),
            )

        return act_key

    def expected_outputs(self, inputs: Mapping[str, Any], count: int) -> list[OutputSpec]:
        return same_as(inputs["gate"])

    def sample_inputs(self, shape: Any, device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Any], dict[str, Any]]:
        mk = randn(device, dtype)
        return {"gate": mk(shape.tokens, shape.hidden), "up": mk(shape.tokens, shape.hidden)}, {}


SWIGLU = GatedActivation(OperationContract("swiglu", ("gate", "up"), ()), reference_swiglu)
GEGLU = GatedActivation(OperationContract("geglu", ("gate", "up"), ("approximate",)), reference_geglu)
OPERATIONS = (SWIGLU, GEGLU)


# ----------------------------------------------------------------------------------------------- custom ops
def _swiglu_signature(gate: torch.Tensor, up: torch.Tensor, orchestrator: Optional[str]) -> torch.Tensor:
    raise unbound("swiglu")


def _geglu_signature(gate: torch.Tensor, up: torch.Tensor, approximate: str, orchestrator: Optional[str]) -> torch.Tensor:
    raise unbound("geglu")


def _fake(gate, up, *options):
    return gate.new_empty(torch.broadcast_shapes(gate.shape, up.shape))


def _gate_dtype(a: Mapping[str, Any]) -> tuple[torch.dtype, ...]:
    return (a["gate"].dtype,)


CUSTOM_OPS = (
    define("swiglu", _swiglu_signature, _fake, lambda a: ("swiglu", {"gate": a["gate"], "up": a["up"]}, {}),
           _gate_dtype, lambda t, o: reference_swiglu(t["gate"], t["up"])),
    define("geglu", _geglu_signature, _fake,
           lambda a: ("geglu", {"gate": a["gate"], "up": a["up"]}, {"approximate": a["approximate"]}),
           _gate_dtype, lambda t, o: reference_geglu(t["gate"], t["up"], approximate=o["approximate"])),
)
