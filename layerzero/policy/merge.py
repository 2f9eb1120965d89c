"""Overlaying policy fragments: how a per-model rule, an A/B arm or a caller's ``policy=`` adds to a policy.

One rule for every integration (Transformers rules and arms, the vLLM plugin), so one policy file means the
same wherever it is used: mapping sections update key by key, list sections append, scalars replace.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["LIST_SECTIONS", "MAP_SECTIONS", "merge_policy"]

LIST_SECTIONS = ("dispatch_rules", "kernel_denies", "kernel_allows")
MAP_SECTIONS = ("kernel_locks", "fallback_chains", "defaults")


def merge_policy(base: Mapping[str, Any], fragment: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``fragment`` laid over it (neither is modified)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, list) else v)
                           for k, v in base.items()}
    for key, value in fragment.items():
        if key in MAP_SECTIONS and isinstance(value, Mapping):
            out[key] = {**out.get(key, {}), **value}
        elif key in LIST_SECTIONS and isinstance(value, list):
            out[key] = [*out.get(key, []), *value]
        else:
            out[key] = value
    return out
