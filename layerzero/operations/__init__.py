"""Operation names and their canonical call contracts.

One signature per operation makes kernels interchangeable and testable against one reference (the
table in docs/architecture.md). Every kernel implementation for an operation accepts exactly these
keyword arguments (inputs first, then options) and returns the documented output.

Attention: query/key/value are ``(batch, seq, heads, head_dim)``; key/value may have fewer heads (GQA,
``num_heads % num_kv_heads == 0``). ``is_causal`` with ``seq_q < seq_k`` is bottom-right aligned: the
last query token sees every key. ``attn_mask`` is bool (True = attend) or additive float, broadcastable to
``(batch, heads, seq_q, seq_k)``. Output ``(batch, seq_q, heads, head_dim_v)``.

rms_norm: ``x (..., hidden)``, ``weight (hidden,)`` or None; ``offset`` is added to the weight (Gemma
uses 1.0); ``casting`` is ``"llama"`` (normalise in fp32, cast to the input dtype, then multiply by the
weight), ``"gemma"`` (everything in fp32, cast at the end) or ``"none"`` (compute in the input dtype).
With ``residual`` the kernel first computes ``x + residual`` and returns ``(normed, x + residual)``.

rope: ``q``/``k`` in ``layout`` ``"bhsd"`` (Transformers) or ``"bshd"``; ``cos``/``sin`` ``(batch, seq,
rot_dim)`` or ``(seq, rot_dim)``; ``rot_dim <= head_dim`` (partial rotary rotates the first ``rot_dim``
features and passes the rest through); ``interleaved`` rotates adjacent pairs (GPT-J) instead of halves.
Returns ``(q_embed, k_embed)``; inputs are never modified.

swiglu: ``silu(gate) * up``; geglu: ``gelu(gate, approximate) * up``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

ATTENTION_OPS = ("attention.causal", "attention.prefill", "attention.cross", "attention.decode")


@dataclass(frozen=True)
class OperationContract:
    """The argument names an operation's kernels accept: tensors first, then options."""

    name: str
    inputs: tuple[str, ...]
    options: tuple[str, ...]

    @property
    def parameters(self) -> frozenset[str]:
        return frozenset(self.inputs + self.options)


_ATTN = OperationContract(
    "attention",
    ("query", "key", "value"),
    ("attn_mask", "is_causal", "scale", "dropout_p", "sliding_window", "softcap", "sinks", "enable_gqa"),
)

CONTRACTS: dict[str, OperationContract] = {
    **{op: OperationContract(op, _ATTN.inputs, _ATTN.options) for op in ATTENTION_OPS},
    "rms_norm": OperationContract("rms_norm", ("x", "weight"), ("eps", "offset", "casting", "residual")),
    "layer_norm": OperationContract("layer_norm", ("x", "weight", "bias"), ("eps",)),
    "rope": OperationContract("rope", ("q", "k", "cos", "sin"), ("layout", "interleaved", "unsqueeze_dim")),
    "swiglu": OperationContract("swiglu", ("gate", "up"), ()),
    "geglu": OperationContract("geglu", ("gate", "up"), ("approximate",)),
}

OPERATIONS: tuple[str, ...] = tuple(CONTRACTS)


def is_attention(operation: str) -> bool:
    return operation.startswith("attention")


def matches(pattern: str, operation: str) -> bool:
    """Glob match of an operation pattern (``attention.*``) against an operation name."""
    return pattern == operation or fnmatchcase(operation, pattern)


def expand(pattern: str) -> tuple[str, ...]:
    """Every known operation a pattern covers."""
    return tuple(op for op in OPERATIONS if matches(pattern, op))


def contract(operation: str) -> OperationContract:
    try:
        return CONTRACTS[operation]
    except KeyError:
        raise KeyError(
            f"unknown operation {operation!r}; known operations: {', '.join(OPERATIONS)}"
        ) from None
