"""The attention block's residual add fused into the following RMSNorm, for pre-norm decoder layers.

A pre-norm decoder layer (Llama, Mistral, Qwen2, Qwen3, Gemma in Transformers 5.x) ends its attention
block with ``hidden_states = residual + attn_out`` and starts the MLP block with
``post_attention_layernorm(hidden_states)``: two passes over the activations, two kernel launches. The
``rms_norm`` operation takes the add as its ``residual`` option and returns ``(norm(x + residual),
x + residual)``; a fused kernel (``triton_rms_norm``, ``liger``/``flashinfer`` where registered) does both
in one pass, the others add then normalise, as the layer did. Which one runs is the dispatcher's choice.

The layer's forward is replaced only when its code has exactly the shape of Transformers' pre-norm layer
(:func:`structure_mismatch`, instruction by instruction, up to the names of the parameters and of the
four submodules), so a release that changes the layer (a dropout, a scaling, sandwich norms) is left alone
with a reason instead of being silently rewritten. The replacement keeps the layer's calls to its
submodules (their hooks, patches and accelerate placement run as before) except the post-attention norm,
which it calls through ``layerzero.ops.rms_norm`` with the norm's weight and epsilon; when that norm has
forward hooks, or a weight in another dtype than the activations, the call goes through the module.
"""

from __future__ import annotations

import dis
import inspect
from typing import Any, Callable, Mapping

import torch
from torch.nn.modules import module as _nn_module

from layerzero import ops  # a global, not a closure cell: see layerzero_hf.replacements

__all__ = ["OBSERVER_HOOK", "ROLES", "residual_norm_forward", "structure_mismatch"]

# The roles of a pre-norm layer's four submodules, in the order the forward uses them.
ROLES = ("pre_norm", "attention", "norm", "mlp")
_IGNORED_OPS = frozenset({"CACHE", "RESUME", "NOP", "EXTENDED_ARG", "COPY_FREE_VARS", "MAKE_CELL"})


def _pre_norm_layer(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=False, position_embeddings=None, **kwargs):
    """The shape a layer's forward must have (Transformers 5.x ``LlamaDecoderLayer.forward``): compared,
    never called."""
    residual = hidden_states
    hidden_states = self.pre_norm(hidden_states)
    hidden_states, _ = self.attention(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    hidden_states = residual + hidden_states
    residual = hidden_states
    hidden_states = self.norm(hidden_states)
    hidden_states = self.mlp(hidden_states)
    hidden_states = residual + hidden_states
    return hidden_states


def _signature(code: Any) -> tuple[int, int, int]:
    """Positional and keyword-only parameter counts, and whether there are ``*args`` / ``**kwargs``."""
    return code.co_argcount, code.co_kwonlyargcount, code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)


def _parameters(code: Any) -> tuple[str, ...]:
    n = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS) + bool(
        code.co_flags & inspect.CO_VARKEYWORDS)
    return code.co_varnames[:n]


def _shape(fn: Callable, attrs: Mapping[str, str]) -> list[tuple[str, Any]]:
    """``fn``'s instructions with parameter names replaced by their position and submodule names by their
    role: two forwards with the same shape compute the same thing whatever they name their arguments."""
    code = fn.__code__
    params = {name: f"param{i}" for i, name in enumerate(_parameters(code))}

    def name(value: Any) -> Any:
        if isinstance(value, str):
            return params.get(value, attrs.get(value, value))
        if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return tuple(params.get(v, v) for v in value)
        return value

    out = []
    for ins in dis.get_instructions(fn):
        if ins.opname in _IGNORED_OPS:
            continue
        # jump targets are offsets, which differ with instruction sizes; the opcode sequence pins them down
        value = None if ins.opcode in dis.hasjrel or ins.opcode in dis.hasjabs else name(ins.argval)
        out.append((ins.opname, value))
    return out


# Roles become tokens no Python name can be, so an unmapped attribute never equals a role.
_TEMPLATE_ROLES = {role: f"<{role}>" for role in ROLES}


def structure_mismatch(forward: Callable, attrs: Mapping[str, str]) -> str | None:
    """None when ``forward`` (a layer class's forward, below its decorators) is a pre-norm layer over the
    submodules ``attrs`` (role -> attribute name); otherwise why not."""
    code = getattr(forward, "__code__", None)
    if code is None:
        return f"{forward!r} has no Python code to check"
    if _signature(code) != _signature(_pre_norm_layer.__code__):
        return "its parameters differ from a pre-norm layer's (hidden_states, five options, **kwargs)"
    if getattr(forward, "__defaults__", None) != _pre_norm_layer.__defaults__:
        return f"its parameter defaults {forward.__defaults__} differ from a pre-norm layer's"
    by_name = {attr: _TEMPLATE_ROLES[role] for role, attr in attrs.items()}
    if _shape(forward, by_name) != _shape(_pre_norm_layer, _TEMPLATE_ROLES):
        return ("its forward is not a plain pre-norm layer (norm, attention, residual add, norm, MLP, residual "
                "add) over " + ", ".join(f"{r}={a!r}" for r, a in attrs.items()))
    return None


#: The attribute that marks a forward (pre-)hook as an observer: it neither reads nor changes the norm's
#: arguments or output (the call recorder's module-path tracking), so the fused call may skip it.
OBSERVER_HOOK = "__layerzero_observer__"


def _hooked(module: torch.nn.Module) -> bool:
    """Whether calling the norm module would run a hook that the fused call would skip: any forward or
    pre-forward hook, on the module or global, except observers (:data:`OBSERVER_HOOK`)."""
    tables = (module._forward_hooks, module._forward_pre_hooks, _nn_module._global_forward_hooks,
              _nn_module._global_forward_pre_hooks)
    if not any(tables):
        return False
    return any(not getattr(hook, OBSERVER_HOOK, False) for table in tables for hook in table.values())


def residual_norm_forward(orch: str, forward: Callable, attrs: Mapping[str, str], eps_attr: str,
                          weight_attr: str, offset: float, casting: str) -> Callable:
    """The replacement for ``forward`` (a layer class's forward below its decorators, which passed
    :func:`structure_mismatch`; the caller rebuilds the decorators around the result).

    Positional options are named as the original names them; every option the original passes to the
    attention module (with the original's defaults) is passed, so the attention call is the original's."""
    site = ops.call_site(orch)
    names = _parameters(forward.__code__)[2:-1]  # after self, hidden_states; before **kwargs
    defaults = dict(zip(names, forward.__defaults__))
    pre, attention, post, mlp = (attrs[r] for r in ROLES)

    # named ``forward``: a bound method pickles as getattr(module, its __name__), which must find the class's
    # own forward when a pickled patched model loads unpatched
    def forward(self, hidden_states, *args, **kwargs):
        if args:  # as the original's signature would bind them, or its TypeError
            if len(args) > len(names):
                raise TypeError(f"{type(self).__name__}.forward() takes at most {len(names) + 2} positional "
                                f"arguments ({len(args) + 2} given)")
            twice = [n for n in names[:len(args)] if n in kwargs]
            if twice:
                raise TypeError(f"{type(self).__name__}.forward() got multiple values for argument {twice[0]!r}")
            kwargs = {**dict(zip(names, args)), **kwargs}
        options = {**defaults, **kwargs}
        residual = hidden_states
        hidden_states = getattr(self, pre)(hidden_states)
        attn_out, _ = getattr(self, attention)(hidden_states=hidden_states, **options)
        norm = getattr(self, post)
        weight = getattr(norm, weight_attr)
        if _hooked(norm) or (casting == "llama" and weight.dtype != attn_out.dtype):
            hidden_states = residual + attn_out
            residual = hidden_states
            hidden_states = norm(hidden_states)
        else:
            hidden_states, residual = ops.rms_norm(attn_out, weight, eps=getattr(norm, eps_attr), offset=offset,
                                                   casting=casting, residual=residual, orchestrator=site)
        hidden_states = getattr(self, mlp)(hidden_states)
        return residual + hidden_states

    return forward
