"""Functional API that patched models and the Transformers attention function call.

Each function is one operation of ``layerzero/operations.py`` with its canonical arguments. It picks the
orchestrator (the process-wide dispatcher, or a per-model one registered by name) and runs
``orchestrator.dispatch(operation, inputs, **options).output``.

Two execution paths, chosen per call:

* Eager: a plain Python call into the dispatcher. Selection happens per call (a cache hit on the hot
  path), fallbacks and circuit breakers apply, and autograd flows through whichever kernel ran.
* Under ``torch.compile`` (``torch.compiler.is_compiling()``): the call becomes one of the
  ``torch.library`` custom ops ``layerzero::attention``, ``layerzero::rms_norm``,
  ``layerzero::rms_norm_residual``, ``layerzero::layer_norm``, ``layerzero::rope``,
  ``layerzero::swiglu`` and ``layerzero::geglu``. The compiler sees an opaque node with a fake (meta)
  implementation, so ``fullgraph=True`` traces without graph breaks and the dispatcher's Python (locks,
  caches, telemetry) is never traced. The op's eager body dispatches, so kernel selection still happens at
  run time, inside the op, with the same policy, fallbacks and breakers as eager mode. Under CUDA-graph
  replay (``mode="reduce-overhead"``, or Transformers' static-cache generation) the kernel captured at
  record time is what replays; policy changes take effect at the next capture.

  The custom ops take the orchestrator by NAME (a string is a graph constant), which is why per-model
  orchestrators are registered with :func:`register_orchestrator`. Passing an orchestrator object under
  compile works only if it was registered. The ops mutate nothing and always return fresh, contiguous
  tensors in the contract's dtype (never an alias of an input), which is what their fake implementations
  promise the compiler. Backward under compile recomputes the fp32-reference forward inside the opaque
  ``layerzero::recompute_backward`` op (``_register_autograd``), so compiled training works too, at
  reference speed for the backward.

Outputs follow the contracts: attention returns ``(B, Sq, H, Dv)`` in the query dtype, norms return the
input dtype, rope returns ``(q_embed, k_embed)`` shaped and typed like ``q``/``k``, the gated
activations return the gate's dtype.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from layerzero.errors import LayerZeroError

if TYPE_CHECKING:  # the dispatcher imports heavy machinery; the ops only need it at call time
    from layerzero.dispatch import CallSite, DispatchOrchestrator

__all__ = [
    "OrchestratorNotFoundError",
    "attention",
    "attention_operation",
    "call_site",
    "geglu",
    "get_orchestrator",
    "has_orchestrator",
    "layer_norm",
    "list_orchestrators",
    "register_orchestrator",
    "rms_norm",
    "rope",
    "swiglu",
    "unregister_orchestrator",
]

OrchestratorLike = Union[str, "DispatchOrchestrator", "CallSite", None]


# ------------------------------------------------------------------------------------------ orchestrators
class OrchestratorNotFoundError(LayerZeroError, KeyError):
    """A per-model orchestrator name that was never registered (or was unregistered)."""

    def __init__(self, name: str, known: tuple[str, ...]):
        self.name = name
        self.known = known
        super().__init__(
            f"orchestrator {name!r} is not registered (known: {', '.join(map(repr, known)) or 'none'}); "
            "register it with layerzero.ops.register_orchestrator(name, orchestrator) before calling, "
            "or pass orchestrator=None for the global dispatcher"
        )

    def __str__(self) -> str:
        return self.args[0]


_ORCHESTRATORS: dict[str, Any] = {}
_REGISTRY_LOCK = threading.Lock()


def register_orchestrator(name: str, orchestrator: Any) -> None:
    """Make ``orchestrator`` reachable by ``name`` from the ops (and from compiled graphs).

    Re-registering a name replaces the previous orchestrator: compiled graphs look the name up at run
    time, so they pick up the new one without recompiling."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"orchestrator name must be a non-empty string, got {name!r}")
    if not callable(getattr(orchestrator, "dispatch", None)):
        raise TypeError(
            f"orchestrator {name!r} must have a dispatch(operation, inputs, **kwargs) method; "
            f"got {type(orchestrator).__name__}"
        )
    with _REGISTRY_LOCK:
        _ORCHESTRATORS[name] = orchestrator


def unregister_orchestrator(name: str) -> None:
    """Forget a named orchestrator (e.g. when a model is unpatched). Unknown names are ignored."""
    with _REGISTRY_LOCK:
        _ORCHESTRATORS.pop(name, None)


def list_orchestrators() -> tuple[str, ...]:
    return tuple(_ORCHESTRATORS)


def has_orchestrator(name: str) -> bool:
    """Whether ``name`` is registered (cheap: one dict lookup)."""
    return name in _ORCHESTRATORS


_global_dispatcher: Any = None  # layerzero.dispatch.get_global_dispatcher, bound on first use


def get_orchestrator(name: str | None = None) -> Any:
    """The orchestrator registered as ``name``; ``None`` means the process-wide global dispatcher."""
    if name is None:
        global _global_dispatcher
        if _global_dispatcher is None:  # imported lazily: the dispatcher pulls in policy and registries
            from layerzero.dispatch import get_global_dispatcher

            _global_dispatcher = get_global_dispatcher
        return _global_dispatcher()
    try:
        return _ORCHESTRATORS[name]
    except KeyError:
        raise OrchestratorNotFoundError(name, tuple(_ORCHESTRATORS)) from None


def _resolve(orchestrator: OrchestratorLike) -> Any:
    if orchestrator is None or isinstance(orchestrator, str):
        return get_orchestrator(orchestrator)
    return orchestrator


def call_site(orchestrator: str | None = None) -> "CallSite":
    """A :class:`~layerzero.dispatch.CallSite` for the orchestrator registered as ``orchestrator``
    (``None``: the global one). Pass it as ``orchestrator=`` to the functions here: in eager mode the call
    reuses the site's last plan while the call's cache key is unchanged; under ``torch.compile`` the
    custom op carries the orchestrator's name, as without a site. One site per patched module (or per
    shared function) keeps bindings from thrashing between shapes."""
    from layerzero.dispatch.callsite import CallSite

    if orchestrator is not None and not isinstance(orchestrator, str):
        raise TypeError(f"call_site takes an orchestrator name or None, got {type(orchestrator).__name__}")
    return CallSite(functools.partial(get_orchestrator, orchestrator), orchestrator,
                    _ORCHESTRATORS if orchestrator is not None else None)


def _name_for_graph(orchestrator: OrchestratorLike) -> Optional[str]:
    """The string a custom op carries to find the orchestrator again at run time."""
    if orchestrator is None or isinstance(orchestrator, str):
        return orchestrator
    from layerzero.dispatch.callsite import CallSite

    if isinstance(orchestrator, CallSite):
        return orchestrator.orchestrator_name
    for name, registered in _ORCHESTRATORS.items():
        if registered is orchestrator:
            return name
    raise LayerZeroError(
        f"orchestrator object {orchestrator!r} is not registered, so a compiled graph cannot refer to it; "
        "call layerzero.ops.register_orchestrator(name, orchestrator) and pass orchestrator=name"
    )


_compiling = torch.compiler.is_compiling  # bound once: the eager hot path calls it on every op


# ------------------------------------------------------------------------------------------ eager bodies
def _run(orchestrator: Any, operation: str, inputs: dict[str, Any], options: dict[str, Any]) -> Any:
    call = getattr(orchestrator, "call", None)  # output-only fast path of DispatchOrchestrator
    if call is not None:
        return call(operation, inputs, options)
    return orchestrator.dispatch(operation, inputs, **options).output


def _fresh(out: torch.Tensor, dtype: torch.dtype, inputs: tuple[Optional[torch.Tensor], ...]) -> torch.Tensor:
    """Contiguous, in the contract dtype, and never the storage of an input (custom-op rules)."""
    out = out.to(dtype).contiguous()
    for t in inputs:
        if t is not None and out.data_ptr() == t.data_ptr() and out.numel() and t.numel():
            return out.clone()
    return out


def attention_operation(seq_q: int, is_causal: bool) -> str:
    """Default attention operation name: decode for one query token, prefill when causal, else cross."""
    if seq_q == 1:
        return "attention.decode"
    return "attention.prefill" if is_causal else "attention.cross"


def _attention_eager(
    orchestrator: Any,
    operation: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor],
    is_causal: bool,
    scale: Optional[float],
    dropout_p: float,
    sliding_window: Optional[int],
    softcap: Optional[float],
    sinks: Optional[torch.Tensor],
) -> torch.Tensor:
    options: dict[str, Any] = {"is_causal": is_causal, "enable_gqa": key.shape[2] != query.shape[2]}
    # Only facts that are set are passed: the selection context and kernel constraints treat a missing
    # option as "not needed", which keeps kernels without e.g. softcap support eligible.
    if attn_mask is not None:
        options["attn_mask"] = attn_mask
    if scale is not None:
        options["scale"] = scale
    if dropout_p:
        options["dropout_p"] = dropout_p
    if sliding_window is not None:
        options["sliding_window"] = sliding_window
    if softcap is not None:
        options["softcap"] = softcap
    if sinks is not None:
        options["sinks"] = sinks
    return _run(orchestrator, operation, {"query": query, "key": key, "value": value}, options)


# ------------------------------------------------------------------------------------------ custom ops
# Each op's eager body resolves the orchestrator by name and dispatches; the fake returns empty tensors
# with the contract's shape/dtype, contiguous, which the eager body guarantees too (``_fresh``).


@torch.library.custom_op("layerzero::attention", mutates_args=())
def _attention_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor],
    is_causal: bool,
    scale: Optional[float],
    dropout_p: float,
    sliding_window: Optional[int],
    softcap: Optional[float],
    sinks: Optional[torch.Tensor],
    operation: str,
    orchestrator: Optional[str],
) -> torch.Tensor:
    out = _attention_eager(
        get_orchestrator(orchestrator), operation, query, key, value, attn_mask, is_causal, scale,
        dropout_p, sliding_window, softcap, sinks,
    )
    return _fresh(out, query.dtype, (query, key, value))


@_attention_op.register_fake
def _(query, key, value, attn_mask, is_causal, scale, dropout_p, sliding_window, softcap, sinks, operation,
      orchestrator):
    b, sq, h, _d = query.shape
    return query.new_empty((b, sq, h, value.shape[-1]))


def _rms_options(eps: float, offset: float, casting: str) -> dict[str, Any]:
    return {"eps": eps, "offset": offset, "casting": casting}


@torch.library.custom_op("layerzero::rms_norm", mutates_args=())
def _rms_norm_op(
    x: torch.Tensor, weight: Optional[torch.Tensor], eps: float, offset: float, casting: str,
    orchestrator: Optional[str],
) -> torch.Tensor:
    out = _run(get_orchestrator(orchestrator), "rms_norm", {"x": x, "weight": weight},
               _rms_options(eps, offset, casting))
    return _fresh(out, x.dtype, (x, weight))


@_rms_norm_op.register_fake
def _(x, weight, eps, offset, casting, orchestrator):
    return x.new_empty(x.shape)


@torch.library.custom_op("layerzero::rms_norm_residual", mutates_args=())
def _rms_norm_residual_op(
    x: torch.Tensor, weight: Optional[torch.Tensor], residual: torch.Tensor, eps: float, offset: float,
    casting: str, orchestrator: Optional[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    options = _rms_options(eps, offset, casting)
    options["residual"] = residual
    normed, summed = _run(get_orchestrator(orchestrator), "rms_norm", {"x": x, "weight": weight}, options)
    inputs = (x, weight, residual)
    return _fresh(normed, x.dtype, inputs), _fresh(summed, _sum_dtype(x, residual), inputs)


@_rms_norm_residual_op.register_fake
def _(x, weight, residual, eps, offset, casting, orchestrator):
    shape = torch.broadcast_shapes(x.shape, residual.shape)
    return x.new_empty(shape), x.new_empty(shape, dtype=_sum_dtype(x, residual))


def _sum_dtype(x: torch.Tensor, residual: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, residual.dtype)


@torch.library.custom_op("layerzero::layer_norm", mutates_args=())
def _layer_norm_op(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
    orchestrator: Optional[str],
) -> torch.Tensor:
    out = _run(get_orchestrator(orchestrator), "layer_norm", {"x": x, "weight": weight, "bias": bias}, {"eps": eps})
    return _fresh(out, x.dtype, (x, weight, bias))


@_layer_norm_op.register_fake
def _(x, weight, bias, eps, orchestrator):
    return x.new_empty(x.shape)


@torch.library.custom_op("layerzero::rope", mutates_args=())
def _rope_op(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str, interleaved: bool,
    orchestrator: Optional[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    q_out, k_out = _run(get_orchestrator(orchestrator), "rope", {"q": q, "k": k, "cos": cos, "sin": sin},
                        {"layout": layout, "interleaved": interleaved})
    inputs = (q, k, cos, sin)
    return _fresh(q_out, q.dtype, inputs), _fresh(k_out, k.dtype, inputs)


@_rope_op.register_fake
def _(q, k, cos, sin, layout, interleaved, orchestrator):
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.custom_op("layerzero::swiglu", mutates_args=())
def _swiglu_op(gate: torch.Tensor, up: torch.Tensor, orchestrator: Optional[str]) -> torch.Tensor:
    out = _run(get_orchestrator(orchestrator), "swiglu", {"gate": gate, "up": up}, {})
    return _fresh(out, gate.dtype, (gate, up))


@_swiglu_op.register_fake
def _(gate, up, orchestrator):
    return gate.new_empty(torch.broadcast_shapes(gate.shape, up.shape))


@torch.library.custom_op("layerzero::geglu", mutates_args=())
def _geglu_op(gate: torch.Tensor, up: torch.Tensor, approximate: str, orchestrator: Optional[str]) -> torch.Tensor:
    out = _run(get_orchestrator(orchestrator), "geglu", {"gate": gate, "up": up}, {"approximate": approximate})
    return _fresh(out, gate.dtype, (gate, up))


@_geglu_op.register_fake
def _(gate, up, approximate, orchestrator):
    return gate.new_empty(torch.broadcast_shapes(gate.shape, up.shape))


# ------------------------------------------------------------------------------------------ autograd
# The custom ops are opaque to autograd, so each gets a backward that recomputes the operation with the
# fp32 reference (``layerzero.kernels.reference``) and differentiates it, inside one more opaque op so that
# AOTAutograd never traces the dispatcher or the reference. This keeps compiled training correct; the
# backward runs at reference speed, and attention dropout (a random mask the recompute cannot replay) is
# refused with an explicit error.

# op name -> (names of the forward's arguments in order, names of its tensor arguments)
_FORWARD_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "attention": (
        ("query", "key", "value", "attn_mask", "is_causal", "scale", "dropout_p", "sliding_window", "softcap",
         "sinks", "operation", "orchestrator"),
        ("query", "key", "value", "attn_mask", "sinks"),
    ),
    "rms_norm": (("x", "weight", "eps", "offset", "casting", "orchestrator"), ("x", "weight")),
    "rms_norm_residual": (
        ("x", "weight", "residual", "eps", "offset", "casting", "orchestrator"), ("x", "weight", "residual"),
    ),
    "layer_norm": (("x", "weight", "bias", "eps", "orchestrator"), ("x", "weight", "bias")),
    "rope": (("q", "k", "cos", "sin", "layout", "interleaved", "orchestrator"), ("q", "k", "cos", "sin")),
    "swiglu": (("gate", "up", "orchestrator"), ("gate", "up")),
    "geglu": (("gate", "up", "approximate", "orchestrator"), ("gate", "up")),
}


def _reference_forward(op: str, tensors: dict[str, Optional[torch.Tensor]], options: dict[str, Any]) -> Any:
    from layerzero.kernels import reference as ref

    if op == "attention":
        if options["dropout_p"]:
            raise LayerZeroError(
                f"backward of layerzero::attention with dropout_p={options['dropout_p']} under torch.compile "
                "cannot replay the dropout mask; set the model's attention dropout to 0 for compiled "
                "training, or train without torch.compile"
            )
        return ref.attention(
            tensors["query"], tensors["key"], tensors["value"], attn_mask=tensors["attn_mask"],
            is_causal=options["is_causal"], scale=options["scale"], sliding_window=options["sliding_window"],
            softcap=options["softcap"], sinks=tensors["sinks"],
        )
    if op in ("rms_norm", "rms_norm_residual"):
        return ref.rms_norm(
            tensors["x"], tensors["weight"], eps=options["eps"], offset=options["offset"],
            casting=options["casting"], residual=tensors.get("residual"),
        )
    if op == "layer_norm":
        return ref.layer_norm(tensors["x"], tensors["weight"], tensors["bias"], eps=options["eps"])
    if op == "rope":
        return ref.rope(tensors["q"], tensors["k"], tensors["cos"], tensors["sin"], layout=options["layout"],
                        interleaved=options["interleaved"])
    if op == "swiglu":
        return ref.swiglu(tensors["gate"], tensors["up"])
    if op == "geglu":
        return ref.geglu(tensors["gate"], tensors["up"], approximate=options["approximate"])
    raise KeyError(f"no reference backward for layerzero::{op}")


@torch.library.custom_op("layerzero::recompute_backward", mutates_args=())
def _recompute_backward_op(
    op: str, options_json: str, tensors: list[Optional[torch.Tensor]], grads: list[Optional[torch.Tensor]],
    wanted: list[bool],
) -> list[torch.Tensor]:
    import json

    names = _FORWARD_SIGNATURES[op][1]
    options = json.loads(options_json)
    targets = [t for t, want in zip(tensors, wanted) if t is not None and want]
    if not targets:
        return []

    def forward(*diff: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(diff)
        leaves = {n: (next(it) if t is not None and want else t) for n, t, want in zip(names, tensors, wanted)}
        out = _reference_forward(op, leaves, options)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    # torch.func.vjp rather than torch.autograd: a custom op's body runs below the Autograd dispatch key,
    # where tensors record no graph, but functorch transforms work there.
    outs, vjp = torch.func.vjp(forward, *targets)
    cotangents = tuple(torch.zeros_like(o) if g is None else g.to(o.dtype) for o, g in zip(outs, grads))
    found = vjp(cotangents)
    inputs = (*tensors, *grads)
    return [_fresh(g, t.dtype, inputs) for t, g in zip(targets, found)]


@_recompute_backward_op.register_fake
def _(op, options_json, tensors, grads, wanted):
    return [t.new_empty(t.shape) for t, want in zip(tensors, wanted) if t is not None and want]


def _register_autograd(op: str, custom_op: Any) -> None:
    import json

    arg_names, tensor_names = _FORWARD_SIGNATURES[op]
    tensor_pos = [arg_names.index(n) for n in tensor_names]

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.tensor_pos = tensor_pos
        ctx.options = {n: v for n, v in zip(arg_names, inputs) if n not in tensor_names and n != "orchestrator"}
        ctx.save_for_backward(*(inputs[i] for i in tensor_pos))

    def backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:
        tensors = list(ctx.saved_tensors)
        wanted = [
            bool(ctx.needs_input_grad[i]) and t is not None and t.is_floating_point()
            for i, t in zip(ctx.tensor_pos, tensors)
        ]
        result: list[Any] = [None] * len(arg_names)
        if not any(wanted):
            return tuple(result)
        got = iter(torch.ops.layerzero.recompute_backward(
            op, json.dumps(ctx.options), tensors, list(grads), wanted
        ))
        for i, want in zip(ctx.tensor_pos, wanted):
            if want:
                result[i] = next(got)
        return tuple(result)

    custom_op.register_autograd(backward, setup_context=setup_context)


for _name, _op in (
    ("attention", _attention_op), ("rms_norm", _rms_norm_op), ("rms_norm_residual", _rms_norm_residual_op),
    ("layer_norm", _layer_norm_op), ("rope", _rope_op), ("swiglu", _swiglu_op), ("geglu", _geglu_op),
):
    _register_autograd(_name, _op)


# ------------------------------------------------------------------------------------------ public API
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
        is_causal = operation in ("attention.causal", "attention.prefill")
    if operation is None:
        operation = attention_operation(query.shape[1], is_causal)
    if _compiling():
        return torch.ops.layerzero.attention(
            query, key, value, attn_mask, is_causal, scale, float(dropout_p), sliding_window, softcap, sinks,
            operation, _name_for_graph(orchestrator),
        )
    return _attention_eager(
        _resolve(orchestrator), operation, query, key, value, attn_mask, is_causal, scale, dropout_p,
        sliding_window, softcap, sinks,
    )


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
    if casting not in ("llama", "gemma", "none"):
        raise ValueError(f"rms_norm casting={casting!r} is not one of 'llama', 'gemma', 'none'")
    if _compiling():
        name = _name_for_graph(orchestrator)
        if residual is not None:
            return torch.ops.layerzero.rms_norm_residual(x, weight, residual, float(eps), float(offset), casting, name)
        return torch.ops.layerzero.rms_norm(x, weight, float(eps), float(offset), casting, name)
    options = _rms_options(eps, offset, casting)
    if residual is not None:
        options["residual"] = residual
    return _run(_resolve(orchestrator), "rms_norm", {"x": x, "weight": weight}, options)


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
        return torch.ops.layerzero.layer_norm(x, weight, bias, float(eps), _name_for_graph(orchestrator))
    return _run(_resolve(orchestrator), "layer_norm", {"x": x, "weight": weight, "bias": bias}, {"eps": eps})


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
        return torch.ops.layerzero.rope(q, k, cos, sin, layout, bool(interleaved), _name_for_graph(orchestrator))
    return _run(_resolve(orchestrator), "rope", {"q": q, "k": k, "cos": cos, "sin": sin},
                {"layout": layout, "interleaved": interleaved})


def swiglu(gate: torch.Tensor, up: torch.Tensor, *, orchestrator: OrchestratorLike = None) -> torch.Tensor:
    """``silu(gate) * up``."""
    if _compiling():
        return torch.ops.layerzero.swiglu(gate, up, _name_for_graph(orchestrator))
    return _run(_resolve(orchestrator), "swiglu", {"gate": gate, "up": up}, {})


def geglu(
    gate: torch.Tensor, up: torch.Tensor, *, approximate: str = "tanh", orchestrator: OrchestratorLike = None
) -> torch.Tensor:
    """``gelu(gate, approximate) * up`` (Gemma: tanh)."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"geglu approximate={approximate!r} is not one of 'tanh', 'none'")
    if _compiling():
        return torch.ops.layerzero.geglu(gate, up, approximate, _name_for_graph(orchestrator))
    return _run(_resolve(orchestrator), "geglu", {"gate": gate, "up": up}, {"approximate": approximate})
