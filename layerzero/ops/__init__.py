"""Functional API that patched models and the Transformers attention function call.

Each function is one operation of :mod:`layerzero.operations` with its canonical arguments. It picks the
orchestrator (the process-wide dispatcher, or a per-model one registered by name) and runs
``orchestrator.dispatch(operation, inputs, **options).output``.

Two execution paths, chosen per call:

* Eager: a plain Python call into the dispatcher. Selection happens per call (a cache hit on the hot
  path), fallbacks and circuit breakers apply, and autograd flows through whichever kernel ran.
* Under ``torch.compile`` (``torch.compiler.is_compiling()``): attention, and with the compile strategy
  ``"opaque"`` every operation, becomes one of the
  ``torch.library`` custom ops ``layerzero::attention``, ``layerzero::rms_norm``,
  ``layerzero::rms_norm_residual``, ``layerzero::layer_norm``, ``layerzero::rope``,
  ``layerzero::swiglu`` and ``layerzero::geglu``. The compiler sees an opaque node with a fake (meta)
  implementation, so ``fullgraph=True`` traces without graph breaks and the dispatcher's Python (locks,
  caches, telemetry) is never traced. The op's implementation dispatches, so kernel selection still
  happens at run time, inside the op, with the same policy, fallbacks and breakers as eager mode. Under
  CUDA-graph replay (``mode="reduce-overhead"``, or Transformers' static-cache generation) the kernel
  captured at record time is what replays; policy changes take effect at the next capture.

  The custom ops take the orchestrator by NAME (a string is a graph constant), which is why per-model
  orchestrators are registered with :func:`register_orchestrator`. Passing an orchestrator object under
  compile works only if it was registered. Backward under compile recomputes the fp32-reference forward
  inside the opaque ``layerzero::recompute_backward`` op, so compiled training works too, at reference
  speed for the backward.

  By default (compile strategy ``"inline"``, :func:`set_compile_strategy`) norms, RoPE and the gated
  activations are instead traced as their plain-torch kernels, so that Inductor fuses them with their
  neighbours (measured faster on an H200); ``"opaque"`` keeps them custom ops, dispatched per call.
  Attention is always the custom op.

Outputs follow the contracts: attention returns ``(B, Sq, H, Dv)`` in the query dtype, norms return the
input dtype, rope returns ``(q_embed, k_embed)`` shaped and typed like ``q``/``k``, the gated
activations return the gate's dtype.

Layout: :mod:`~layerzero.ops.orchestrators` (names, call sites, running a call),
:mod:`~layerzero.ops.compiled` (custom-op implementations and autograd; the schemas and fakes live with
each operation) and :mod:`~layerzero.ops.functional` (the functions below).
"""

from __future__ import annotations

from layerzero.ops import compiled as _compiled  # noqa: F401 - binds the custom ops' implementations
from layerzero.ops.compile_strategy import compile_strategy, compile_strategy_set_to, set_compile_strategy
from layerzero.ops.functional import attention, attention_operation, geglu, layer_norm, rms_norm, rope, swiglu
from layerzero.ops.orchestrators import (
    OrchestratorLike,
    OrchestratorNotFoundError,
    call_site,
    get_orchestrator,
    has_orchestrator,
    list_orchestrators,
    register_orchestrator,
    unregister_orchestrator,
)

__all__ = [
    "OrchestratorLike",
    "OrchestratorNotFoundError",
    "attention",
    "attention_operation",
    "call_site",
    "compile_strategy",
    "compile_strategy_set_to",
    "geglu",
    "get_orchestrator",
    "has_orchestrator",
    "layer_norm",
    "list_orchestrators",
    "register_orchestrator",
    "rms_norm",
    "rope",
    "set_compile_strategy",
    "swiglu",
    "unregister_orchestrator",
]
