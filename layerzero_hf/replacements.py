"""Replacement forwards: the functions bound on patched modules in place of Transformers' own.

Each factory closes over this model's orchestrator name and a CallSite (``layerzero.ops.call_site``): in
eager mode the site reuses the plan of its last call while the call's cache key is unchanged (decode steps),
skipping the orchestrator and the cache lookup; under torch.compile the ``layerzero.ops`` calls are opaque
custom ops carrying the orchestrator's name, so there are no graph breaks. The factories know nothing about
specs or modules; :mod:`layerzero_hf.builtin_kinds` decides which one a module gets.

``layerzero.ops`` is a global of this module, not a closure variable: Dynamo guards a closure cell per
patched module, and one object reached through many modules' cells costs an identity guard for each pair
(Python-evaluated, on every call of a compiled graph; measured 140 such guards on a 16-layer Llama).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from layerzero import ops
from layerzero.operations.shared import shared

__all__ = ["layer_norm_forward", "mlp_forward", "rms_forward", "rope_function", "table_widener"]


def rms_forward(orch: str, eps_attr: str, weight_attr: str, offset: float, casting: str) -> Callable:
    site = ops.call_site(orch)

    def forward(self, hidden_states):
        weight = getattr(self, weight_attr)
        if casting == "llama" and weight is not None and weight.dtype != hidden_states.dtype:
            # Llama-style norms multiply the weight after casting to the input dtype, so a weight kept in
            # another dtype (fp32 weights, bf16 activations) promotes the output, as in Transformers.
            normed = ops.rms_norm(hidden_states, None, eps=getattr(self, eps_attr), casting=casting,
                                  orchestrator=site)
            return (weight + offset) * normed if offset else weight * normed
        return ops.rms_norm(hidden_states, weight, eps=getattr(self, eps_attr), offset=offset,
                            casting=casting, orchestrator=site)

    return forward


def layer_norm_forward(orch: str, eps_attr: str, weight_attr: str, bias_attr: str) -> Callable:
    site = ops.call_site(orch)

    def forward(self, hidden_states):
        return ops.layer_norm(hidden_states, getattr(self, weight_attr), getattr(self, bias_attr),
                              eps=getattr(self, eps_attr), orchestrator=site)

    return forward


def mlp_forward(orch: str, params: Mapping[str, Any], op: str, approximate: str) -> Callable:
    site = ops.call_site(orch)
    down = params["down"]
    if params["layout"] == "gate_up_fused":
        gate_up = params["gate_up"]
        if op == "swiglu":
            def forward(self, hidden_states):
                gate, up = getattr(self, gate_up)(hidden_states).chunk(2, dim=-1)
                return getattr(self, down)(ops.swiglu(gate, up, orchestrator=site))
        else:
            def forward(self, hidden_states):
                gate, up = getattr(self, gate_up)(hidden_states).chunk(2, dim=-1)
                return getattr(self, down)(ops.geglu(gate, up, approximate=approximate, orchestrator=site))
        return forward
    gate_name, up_name = params["gate"], params["up"]
    if op == "swiglu":
        def forward(self, hidden_states):
            return getattr(self, down)(
                ops.swiglu(getattr(self, gate_name)(hidden_states), getattr(self, up_name)(hidden_states),
                           orchestrator=site))
    else:
        def forward(self, hidden_states):
            return getattr(self, down)(
                ops.geglu(getattr(self, gate_name)(hidden_states), getattr(self, up_name)(hidden_states),
                          approximate=approximate, orchestrator=site))
    return forward


def rope_function(orch: str, interleaved: bool, original: Callable, half_tables: bool = False) -> Callable:
    site = ops.call_site(orch)
    widen = table_widener() if half_tables else None

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        if widen is not None:  # gpt-oss: half-width tables -> HF's full-width cat(freqs, freqs)
            cos, sin = widen(cos, sin)
        if cos.dim() > 1 and cos.shape[-2] > 1:  # a prefill: one table buffer per compiled forward
            cos, sin = shared(cos), shared(sin)
        # HF passes (B, H, S, D) with unsqueeze_dim=1; unsqueeze_dim=2 means (B, S, H, D).
        if unsqueeze_dim == 1:
            return ops.rope(q, k, cos, sin, layout="bhsd", interleaved=interleaved, orchestrator=site)
        if unsqueeze_dim == 2:
            return ops.rope(q, k, cos, sin, layout="bshd", interleaved=interleaved, orchestrator=site)
        return original(q, k, cos, sin, unsqueeze_dim)

    apply_rotary_pos_emb.__layerzero_original__ = original  # type: ignore[attr-defined]
    return apply_rotary_pos_emb


def table_widener() -> Callable:
    """cos/sin of half width -> full width. Every layer of one forward gets the same two tensors, so the
    last pair is remembered by identity in eager mode (one concat per forward, not per layer); under
    torch.compile the concat is traced and fused instead."""
    last: list[Any] = [None, None, None, None]

    def widen(cos, sin):
        if torch.compiler.is_compiling():
            return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        if cos is last[0] and sin is last[1]:
            return last[2], last[3]
        wide = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        last[:] = [cos, sin, *wide]
        return wide

    return widen
