"""The shipped patch kinds: RMSNorm, LayerNorm, RoPE and gated MLPs, each registered next to its schema.

Each builder decides whether a module can take the replacement (attributes present, activation known,
self-check passed) and returns the forward to bind; anything it cannot do faithfully raises
:class:`~layerzero_hf.kinds.SkipModule` with the reason, so the module keeps Transformers' forward and the
report says why. ``verify`` asks for a numerical self-check of a spec'd replacement (``self_check="all"``);
``detected`` replacements (structural detection) are always checked, and norms found by detection also
have their offset/casting chosen by probing.
"""

from __future__ import annotations

import types
from typing import Any, Mapping

from torch import nn

from layerzero_hf import detect
from layerzero_hf.kinds import KindContext, Param, Replacement, SkipModule, register_patch_kind
from layerzero_hf.overlay import code_label, decorators_of, rebuild_around, with_global_through, wrapper_chain
from layerzero_hf.replacements import layer_norm_forward, mlp_forward, rms_forward, rope_function
from layerzero_hf.residual_norm import ROLES, residual_norm_forward, structure_mismatch

__all__ = ["ACTIVATIONS", "CASTINGS", "LAYOUTS", "MLP_LAYOUTS", "ROPE_TABLES"]

CASTINGS: tuple[str, ...] = ("llama", "gemma", "none")
MLP_LAYOUTS: tuple[str, ...] = ("gate_up_separate", "gate_up_fused")
ACTIVATIONS: tuple[str, ...] = ("silu", "gelu_tanh", "gelu")
LAYOUTS: tuple[str, ...] = ("bhsd", "bshd")
# RoPE cos/sin tables: "full" = HF's cat(freqs, freqs) (head_dim wide); "half" = freqs only (gpt-oss), the
# same rotate_half rotation written as first/second halves.
ROPE_TABLES: tuple[str, ...] = ("full", "half")


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _eps(module: nn.Module, params: Mapping[str, Any]) -> tuple[str, float]:
    eps = detect.eps_of(module, params["eps_attr"])
    if eps is None:
        raise SkipModule(f"no float epsilon attribute among {list(params['eps_attr'])}")
    return eps


@register_patch_kind("rms_norm", params={
    "eps_attr": Param((str, list), ("variance_epsilon", "eps"), convert=_names),
    "weight_attr": Param(str, "weight"),
    "offset": Param((int, float), 0.0, convert=float),
    "casting": Param(str, "llama", choices=CASTINGS),
})
def build_rms_norm(ctx: KindContext, path: str, module: nn.Module, params: Mapping[str, Any], *,
                   verify: bool, detected: bool) -> Replacement:
    """``y = x / rms(x) * (weight + offset)`` with Llama (cast, then multiply) or Gemma (multiply in fp32)
    rounding; detection probes which of them the module computes."""
    eps = _eps(module, params)
    weight_attr = params.get("weight_attr", "weight")
    if not hasattr(module, weight_attr):
        raise SkipModule(f"no {weight_attr!r} attribute")
    weight = getattr(module, weight_attr)
    hidden = weight.shape[-1] if weight is not None else None
    if hidden is None:
        raise SkipModule("weight-less RMSNorm: hidden size unknown, not patched")

    def make(off: float, cast: str) -> Any:
        return rms_forward(ctx.orch, eps[0], weight_attr, off, cast)

    def check(offset: float, casting: str) -> str:
        return detect.check_norm(module, types.MethodType(make(offset, casting), module), hidden)

    if detected:
        def compute() -> tuple[dict, str]:
            offset, casting = detect.choose_norm_params(module, make, hidden)
            return {"offset": offset, "casting": casting}, check(offset, casting)
        chosen, why = ctx.verdict(("rms_norm", type(module), eps[0]), compute)
        offset, casting = chosen["offset"], chosen["casting"]
    else:
        offset, casting = float(params["offset"]), params["casting"]
        why = ""
        if verify:
            _, why = ctx.verdict(("rms_norm", type(module), eps[0], offset, casting),
                                 lambda: ({}, check(offset, casting)))
    detail = f"eps={eps[1]:g} offset={offset:g} casting={casting}" + (f"; {why}" if why else "")
    return Replacement(make(offset, casting), "rms_norm", detail)


@register_patch_kind("layer_norm", params={
    "eps_attr": Param((str, list), ("eps", "variance_epsilon"), convert=_names),
    "weight_attr": Param(str, "weight"),
    "bias_attr": Param(str, "bias"),
})
def build_layer_norm(ctx: KindContext, path: str, module: nn.Module, params: Mapping[str, Any], *,
                     verify: bool, detected: bool) -> Replacement:
    """LayerNorm over the last dimension with a 1-D weight (and optional bias)."""
    eps = _eps(module, params)
    w, b = params.get("weight_attr", "weight"), params.get("bias_attr", "bias")
    weight = getattr(module, w, None)
    if weight is None or weight.dim() != 1:
        raise SkipModule("LayerNorm without a 1-D weight is not patched")
    fn = layer_norm_forward(ctx.orch, eps[0], w, b)
    why = ""
    if verify or detected:
        _, why = ctx.verdict(("layer_norm", type(module), eps[0]), lambda: (
            {}, detect.check_norm(module, types.MethodType(fn, module), weight.shape[-1])))
    return Replacement(fn, "layer_norm", f"eps={eps[1]:g}" + (f"; {why}" if why else ""))


@register_patch_kind("rope", params={
    "function": Param(str, "apply_rotary_pos_emb"),
    "layout": Param(str, "bhsd", choices=LAYOUTS),
    "interleaved": Param(bool, False),
    "partial": Param(bool, False),
    "tables": Param(str, "full", choices=ROPE_TABLES),
})
def build_rope(ctx: KindContext, path: str, module: nn.Module, params: Mapping[str, Any], *,
               verify: bool, detected: bool) -> Replacement:
    """The attention module's class forward, copied with the module-global RoPE function (``function``)
    resolving to this model's replacement (see :mod:`layerzero_hf.overlay`)."""
    cls_forward = type(module).forward
    name = params["function"]
    _, target = wrapper_chain(cls_forward, name, type(module).__name__)
    original = target.__globals__.get(name)
    if original is None:
        raise SkipModule(f"global {name!r} not found in {target.__module__}")
    half_tables = params.get("tables", "full") == "half"
    rope_fn = ctx.cache.get(("rope", id(original)))
    if rope_fn is None:
        rope_fn = rope_function(ctx.orch, bool(params.get("interleaved", False)), original, half_tables)
        ctx.cache[("rope", id(original))] = rope_fn
    why = ""
    dims = detect.rope_dims(module)
    if verify or detected:
        if dims is None:
            raise SkipModule("cannot size a RoPE probe (no head_dim / num_attention_heads on the module's config)")
        dtype, device = detect._param_dtype_device(module)
        if device.type == "meta":
            raise SkipModule("weights are not materialised (meta device); load the weights, then patch")
        heads, kv, head_dim, rot = dims
        _, why = ctx.verdict(("rope", id(original), rot, half_tables), lambda: ({}, detect.check_rope(
            original, rope_fn, heads=heads, kv_heads=kv, head_dim=head_dim, rot_dim=rot, dtype=dtype,
            device=device, half_tables=half_tables)))
    fn, decorators = with_global_through(cls_forward, name, rope_fn, ctx.overlays, type(module).__name__)
    detail = f"{name} rebound for this instance" + ("; half-width cos/sin tables" if half_tables else "")
    if decorators:
        detail += f"; through decorator(s) {', '.join(decorators)}"
    if dims is not None and dims[3] < dims[2]:
        detail += f"; partial rotary {dims[3]}/{dims[2]}"
    return Replacement(fn, "rope", detail + (f"; {why}" if why else ""))


@register_patch_kind("mlp", params={
    "layout": Param(str, choices=MLP_LAYOUTS),
    "gate": Param(str, "gate_proj"),
    "up": Param(str, "up_proj"),
    "gate_up": Param(str, "gate_up_proj"),
    "down": Param(str, "down_proj"),
    "act": Param(str, "act_fn"),
    "activations": Param(list, ACTIVATIONS, choices=ACTIVATIONS, convert=tuple),
})
def build_mlp(ctx: KindContext, path: str, module: nn.Module, params: Mapping[str, Any], *,
              verify: bool, detected: bool) -> Replacement:
    """``down(act(gate(x)) * up(x))`` with separate or fused gate/up projections, dispatched as swiglu
    (silu) or geglu (gelu, gelu-tanh)."""
    names = [params["down"]] + ([params["gate_up"]] if params["layout"] == "gate_up_fused"
                                else [params["gate"], params["up"]])
    for n in names:
        if not isinstance(getattr(module, n, None), nn.Module):
            raise SkipModule(f"no submodule {n!r} (layout {params['layout']})")
    act = getattr(module, params["act"], None)
    ident = detect.identify_activation(act)
    if ident is None:
        raise SkipModule(f"activation {type(act).__name__} ({params['act']}) is not silu, gelu-tanh or gelu")
    op, approx = ident
    act_name = detect.ACTIVATION_NAMES[ident]
    allowed = params.get("activations")
    if allowed and act_name not in allowed:
        raise SkipModule(f"activation {act_name} not among the spec's activations {list(allowed)}")
    fn = mlp_forward(ctx.orch, params, op, approx)
    why = ""
    if verify or detected:
        first = getattr(module, names[-1] if params["layout"] == "gate_up_separate" else names[1])
        hidden = getattr(first, "in_features", None)
        if not isinstance(hidden, int):
            raise SkipModule("cannot size a probe: the projection has no in_features")
        _, why = ctx.verdict(("mlp", type(module), params["layout"], ident), lambda: (
            {}, detect.check_mlp(module, types.MethodType(fn, module), hidden)))
    detail = f"{params['layout']} {act_name} -> {op}" + (f"; {why}" if why else "")
    return Replacement(fn, op, detail)


@register_patch_kind("residual_norm", by_default=True, params={
    "pre_norm": Param(str, "input_layernorm"),
    "attention": Param(str, "self_attn"),
    "norm": Param(str, "post_attention_layernorm"),
    "mlp": Param(str, "mlp"),
})
def build_residual_norm(ctx: KindContext, path: str, module: nn.Module, params: Mapping[str, Any], *,
                        verify: bool, detected: bool) -> Replacement:
    """A pre-norm decoder layer whose attention residual add runs inside the post-attention RMSNorm
    (``rms_norm(..., residual=)``, see :mod:`layerzero_hf.residual_norm`). On by default where a spec has a
    ``residual_norm`` entry (the pre-norm architectures): one dispatch and one pass instead of an add and a
    norm. Needs the norm to be patched as ``rms_norm`` by the same call (its epsilon, offset and casting
    come from that entry); a norm under an accelerate hook is left alone with the reason."""
    attrs = {role: params[role] for role in ROLES}
    for role, attr in attrs.items():
        if not isinstance(getattr(module, attr, None), nn.Module):
            raise SkipModule(f"no submodule {attr!r} ({role})")
    owner = type(module).__name__
    wrappers, target = decorators_of(type(module).forward, owner)
    why = structure_mismatch(target, attrs)
    if why is not None:
        raise SkipModule(f"{owner}.forward: {why}; left alone")
    norm_path, norm = f"{path}.{attrs['norm']}", getattr(module, attrs["norm"])
    if "forward" in norm.__dict__:
        # an accelerate hook (device map, offload) is an instance forward: the fused call would bypass it
        raise SkipModule(f"{norm_path} runs under an instance forward (an accelerate hook: device map or "
                         "offload), which the fused call would bypass; the norm and the add run as they were")
    planned = ctx.planned_spec(norm_path, norm)
    if planned is None or planned[0] != "rms_norm":
        raise SkipModule(f"{norm_path} is not patched as rms_norm by this call (kind off, excluded or no spec "
                         "entry): nothing to fuse the residual add into")
    norm_params = planned[1]
    eps_attr = _eps(norm, norm_params)[0]
    weight_attr = norm_params.get("weight_attr", "weight")
    if getattr(norm, weight_attr, None) is None:
        raise SkipModule(f"{norm_path} has no {weight_attr!r}")
    offset, casting = float(norm_params["offset"]), norm_params["casting"]
    fn = rebuild_around(wrappers, target, lambda: residual_norm_forward(
        ctx.orch, target, attrs, eps_attr, weight_attr, offset, casting))
    detail = f"{attrs['norm']} takes the attention residual add (casting={casting}, offset={offset:g})"
    if wrappers:
        detail += f"; through decorator(s) {', '.join(code_label(w) for w in wrappers)}"
    return Replacement(fn, "rms_norm", detail)
