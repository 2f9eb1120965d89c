"""Whether code runs inside a ``torch.compile`` trace that is not a ``torch.export``.

Why: both kinds of trace report ``torch.compiler.is_compiling()``, but only ``torch.compile`` graphs run
in the process that traced them: a shortcut read from the call's sizes (a causal mask left out, a tensor
routed through an opaque op) is right for them and wrong for an exported graph, which other runtimes
replay with other inputs. ``torch.compiler.is_exporting()`` cannot tell the two apart on every torch we
support: up to torch 2.12, Dynamo folds it to ``True`` inside every trace (torch.compile's included), and
a shortcut guarded by it silently never applies. The flag behind it, which ``torch.export`` sets for the
whole of its trace, is right in both cases; Dynamo reads it as a constant and guards on it.
"""

from __future__ import annotations

import torch

__all__ = ["is_compile_tracing"]


def is_compile_tracing() -> bool:
    """True inside a ``torch.compile`` trace, False eagerly and inside a ``torch.export`` trace."""
    if not torch.compiler.is_compiling():
        return False
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    if isinstance(flag, bool):
        return not flag
    return not torch.compiler.is_exporting()  # a torch without the flag: its own answer
