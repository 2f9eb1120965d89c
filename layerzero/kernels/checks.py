"""Custom constraint checks that several kernel families share.

Each check returns the reason a call is out of reach (or ``None``); its docstring is the short form that
``KernelConstraints.describe()`` and the CLI list. Kept apart from the adapters so every adapter module and
the catalogue can use one copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerzero.context.call_context import SelectionContext

__all__ = ["gqa_ratio_ok"]


def gqa_ratio_ok(ctx: "SelectionContext") -> str | None:
    """num_heads divisible by num_kv_heads"""
    if ctx.num_heads and ctx.num_kv_heads and ctx.num_heads % ctx.num_kv_heads:
        return f"num_heads {ctx.num_heads} not divisible by num_kv_heads {ctx.num_kv_heads}"
    return None
