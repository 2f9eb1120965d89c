"""Kernel policies: which kernels may run an operation, and which one wins.

A policy is data (YAML, schema in docs/policy.md), validated once into an immutable
:class:`Policy` and applied by a :class:`PolicyEngine`. Full guide: ``docs/policy.md``.

Schema::

    version: "1.0"                       # string
    defaults:
      fallback_policy: torch_sdpa        # kernel id/alias, appended to chains of operations it serves
      default_priority: 50               # priority of rules that give none
      lock_mode: prefer                  # prefer | strict (what a lock on a kernel that cannot run does)
    dispatch_rules:                      # list
      - operation: "attention.*"         # operation name or glob
        conditions: {batch_size_gte: 8, dtype: [float16, bfloat16], platform: cuda}
        kernel: flash_attention_v2       # id or alias
        priority: 100
    kernel_locks: {attention.prefill: flash_attention_v2}   # operation glob -> kernel
    kernel_denies: ["*_debug"]           # kernel globs (ids and aliases)
    kernel_allows: ["flash_attn_*"]      # kernel globs (ids and aliases)
    fallback_chains: {attention.causal: [flash_attention_v2, torch_sdpa]}

Conditions: ``<field>: value`` (equality; a list means membership) or ``<field>_<op>: value`` with op in
``gt gte lt lte eq ne in not_in``; fields are :class:`~layerzero.context.SelectionContext` fields.
When the context does not know a field (None) the condition does not hold, unless it asks for null.

Semantics, in the order the engine applies them to each candidate:

1. **denies** - a kernel whose id or any alias matches a ``kernel_denies`` glob is rejected
   ("denied by kernel_denies[0] '*_debug'"). Denies win: a rule, chain entry or fallback policy naming
   a denied kernel is dropped and listed in ``Policy.warnings``; a lock on a denied kernel is an error.
2. **locks** - when a ``kernel_locks`` key matches the operation (an exact key wins over globs), the
   locked kernel is the only one allowed, if it can run (it is in the ``runnable`` set the selection
   engine passes). If it cannot: ``lock_mode: prefer`` (default) ignores the lock and notes
   "lock to X ignored: X cannot run" on the allowed verdicts; ``strict`` rejects every kernel
   ("operation ... locked to X, which cannot run").
3. **allows** - when ``kernel_allows`` is non-empty, only kernels matching one of its globs are eligible,
   plus every kernel the config names explicitly (locks, rule kernels, fallback chains,
   ``defaults.fallback_policy``); others are rejected "not in kernel_allows [...]".
4. **rules** - a rule applies when its operation glob matches and all its conditions hold. Kernels chosen
   by an applying rule rank above every kernel without one, by rule priority (a kernel with several
   applying rules takes its best); ties, and all other kernels, are ordered by the kernel's built-in
   ``priority``; equal still, the earlier rule wins.
5. **fallback_chains** - :meth:`PolicyEngine.fallback_chain` gives canonical ids: the exact operation key's
   chain, then matching glob keys' chains in file order, then ``defaults.fallback_policy`` if it serves
   the operation.

Validation collects every problem into one :class:`~layerzero.errors.ConfigValidationError`; nothing else
escapes :func:`load_policy` / :func:`parse_policy_text`, whatever the input.
"""

from layerzero.policy.conditions import CONDITION_FIELDS, OPERATORS, Condition
from layerzero.policy.engine import PolicyEngine, PolicyVerdict
from layerzero.policy.loader import (
    default_policy_path,
    load_default_policy,
    load_policy,
    parse_policy_text,
    validate_policy,
)
from layerzero.policy.model import DispatchRule, Policy, PolicyDefaults

__all__ = [
    "CONDITION_FIELDS",
    "OPERATORS",
    "Condition",
    "DispatchRule",
    "Policy",
    "PolicyDefaults",
    "PolicyEngine",
    "PolicyVerdict",
    "default_policy_path",
    "load_default_policy",
    "load_policy",
    "parse_policy_text",
    "validate_policy",
]
