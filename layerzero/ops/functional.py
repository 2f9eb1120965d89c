"""The public functions: one per operation, eager through the orchestrator, compiled through a custom op.

Each function checks its own arguments' spelling (layouts, casting), then either calls the orchestrator
(eager) or, under ``torch.compile``, the operation's ``layerzero::*`` custom op with the orchestrator's
name as a graph constant, or, for norms, RoPE and the gated activations set to ``"inline"``
(:mod:`layerzero.ops.compile_strategy`), the plain-torch kernel traced into the graph. In eager mode a
:class:`~layerzero.dispatch.CallSite` (what patched modules pass) is called right here, one frame short of
:func:`~layerzero.ops.orchestrators.run`: decode loops pay every frame per operation per layer.
"""

from __future__ import annotations

import torch

from layerzero.dispatch.callsite import CallSite
from layerzero.operations.attention import attention_options, default_is_causal
from layerzero.operations.norm import CASTINGS
from layerzero.ops.compile_strategy import inlined
from layerzero.ops.orchestrators import OrchestratorLike, name_for_graph, run

__all__ = ["attention", "attention_operation", "geglu", "layer_norm", "rms_norm", "rope", "swiglu"]

_compiling = torch.compiler.is_compiling  # bound once: the eager hot path calls it on every op


def attention_operation(seq_q: int, is_causal: bool) -> str:
    """Default attention operation name: decode for one query token, prefill when causal, else cross."""
    if seq_q == 1:
        return "attention.decode"
    return "attention.prefill" if is_causal else "attention.cross"


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    operation: str | None = None,
    orchestrator: OrchestratorLike = None,
    layout: str = "bshd",
) -> torch.Tensor:
    """Attention; key/value may have fewer heads (GQA).

    ``layout``: ``"bshd"`` (batch, seq, heads, head_dim), the canonical layout, or ``"bhsd"`` (batch, heads,
    seq, head_dim) as ``F.scaled_dot_product_attention`` and Transformers use; the output has the layout of
    the inputs. There is no default guess from the shapes: a (B, H, S, D) tensor passed as ``"bshd"`` is
    read as S heads of H tokens, so say which layout you pass.

    ``is_causal=None`` means: causal if ``operation`` is ``attention.causal``/``attention.prefill``, else
    not. ``operation=None`` picks ``attention.decode`` for one query token, ``attention.prefill`` when
    causal, ``attention.cross`` otherwise, so policies can treat prefill and decode differently."""
    if layout not in ("bshd", "bhsd"):
        raise ValueError(f"attention layout={layout!r} is not one of 'bshd' (batch, seq, heads, head_dim), "
                         "'bhsd' (batch, heads, seq, head_dim: SDPA and Transformers)")
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(
            f"attention expects rank-4 query/key/value in layout {layout!r}; got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if layout == "bhsd":  # views: kernels take (B, S, H, D) with any strides
        out = attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask,
                        is_causal=is_causal, scale=scale, dropout_p=dropout_p, sliding_window=sliding_window,
                        softcap=softcap, sinks=sinks, operation=operation, orchestrator=orchestrator)
        return out.transpose(1, 2)
    if is_causal is None:
        is_causal = default_is_causal(operation or "")
    if operation is None:
        operation = attention_operation(query.shape[1], is_causal)
    if _compiling():
        return torch.ops.layerzero.attention(
            query, key, value, attn_mask, is_causal, scale, float(dropout_p), sliding_window, softcap, sinks,
            operation, name_for_graph(orchestrator),
        )
    options = attention_options(query, key, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks)
    if type(orchestrator) is CallSite:  # a patched module's site: straight to its bound call
        return orchestrator.call(operation, {"query": query, "key": key, "value": value}, options)
    return run(orchestrator, operation, {"query": query, "key": key, "value": value}, options)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    offset: float = 0.0,
    casting: str = "llama",
    residual: torch.Tensor | None = None,
    orchestrator: OrchestratorLike = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm; with ``residual`` returns ``(norm(x + residual), x + residual)``. ``eps`` may be passed
    positionally, as in ``F.rms_norm(x, shape, weight, eps)``'s order of weight then eps."""
    if casting not in CASTINGS:
        raise ValueError(f"rms_norm casting={casting!r} is not one of 'llama', 'gemma', 'none'")
    if _compiling():
        kernel = inlined("rms_norm")
        if kernel is not None:
            return kernel(x, weight, eps, offset, casting, residual)
        name = name_for_graph(orchestrator)
        if residual is not None:
            return torch.ops.layerzero.rms_norm_residual(x, weight, residual, float(eps), float(offset), casting, name)
        return torch.ops.layerzero.rms_norm(x, weight, float(eps), float(offset), casting, name)
    options = {"eps": eps, "offset": offset, "casting": casting}  # rms_options, without a call per norm
    if residual is not None:
        options["residual"] = residual
    if type(orchestrator) is CallSite:
        return orchestrator.call("rms_norm", {"x": x, "weight": weight}, options)
    return run(orchestrator, "rms_norm", {"x": x, "weight": weight}, options)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    eps: float = 1e-5,
    orchestrator: OrchestratorLike = None,
) -> torch.Tensor:
    """LayerNorm over the last dimension."""
    if _compiling():
        kernel = inlined("layer_norm")
        if kernel is not None:
            return kernel(x, weight, bias, eps)
        return torch.ops.layerzero.layer_norm(x, weight, bias, float(eps), name_for_graph(orchestrator))
    if type(orchestrator) is CallSite:
        return orchestrator.call("layer_norm", {"x": x, "weight": weight, "bias": bias}, {"eps": eps})
    return run(orchestrator, "layer_norm", {"x": x, "weight": weight, "bias": bias}, {"eps": eps})


def rope(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    layout: str = "bhsd",
    interleaved: bool = False,
    orchestrator: OrchestratorLike = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of q and k (HF ``apply_rotary_pos_emb`` semantics); partial rotary when
    ``cos.shape[-1] < head_dim``. Never modifies its inputs."""
    if layout not in ("bhsd", "bshd"):
        raise ValueError(f"rope layout={layout!r} is not one of 'bhsd' (Transformers), 'bshd'")
    if _compiling():
        kernel = inlined("rope")
        if kernel is not None:
            return kernel(q, k, cos, sin, layout, interleaved, None)
        return torch.ops.layerzero.rope(q, k, cos, sin, layout, bool(interleaved), name_for_graph(orchestrator))
    if type(orchestrator) is CallSite:
        return orchestrator.call("rope", {"q": q, "k": k, "cos": cos, "sin": sin},
                                 {"layout": layout, "interleaved": interleaved})
    return run(orchestrator, "rope", {"q": q, "k": k, "cos": cos, "sin": sin},
               {"layout": layout, "interleaved": interleaved})


def swiglu(gate: torch.Tensor, up: torch.Tensor, *, orchestrator: OrchestratorLike = None) -> torch.Tensor:
    """``silu(gate) * up``."""
    if _compiling():
        kernel = inlined("swiglu")
        if kernel is not None:
            return kernel(gate, up)
        return torch.ops.layerzero.swiglu(gate, up, name_for_graph(orchestrator))
    if type(orchestrator) is CallSite:
        return orchestrator.call("swiglu", {"gate": gate, "up": up}, {})
    return run(orchestrator, "swiglu", {"gate": gate, "up": up}, {})


def geglu(
    gate: torch.Tensor, up: torch.Tensor, *, approximate: str = "tanh", orchestrator: OrchestratorLike = None
) -> torch.Tensor:
    """``gelu(gate, approximate) * up`` (Gemma: tanh)."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"geglu approximate={approximate!r} is not one of 'tanh', 'none'")
    if _compiling():
        kernel = inlined("geglu")
        if kernel is not None:
            return kernel(gate, up, approximate)
        return torch.ops.layerzero.geglu(gate, up, approximate, name_for_graph(orchestrator))
    if type(orchestrator) is CallSite:
        return orchestrator.call("geglu", {"gate": gate, "up": up}, {"approximate": approximate})
    return run(orchestrator, "geglu", {"gate": gate, "up": up}, {"approximate": approximate})
