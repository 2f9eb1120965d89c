"""Scoped kernel overrides, in the spirit of ``torch.nn.attention.sdpa_kernel``.

``with layerzero.dispatch.use_kernels(rms_norm="triton_rms_norm"): ...`` makes every dispatch of
``rms_norm`` in the block (in this thread or asyncio task: the overrides live in a ``ContextVar``) run that
kernel, whatever the policy or the cache says, through the same runner as any call: device guard, breaker,
fallbacks, verification and telemetry unchanged. Operation names may be globs (``attention.*``); kernel
aliases resolve. A kernel that cannot run the call raises ``NoKernelAvailableError`` naming why, as
``sdpa_kernel`` raises when none of its backends can run: the block asked for that kernel, so silently
running another would defeat it.

Outside a block the dispatcher pays one ``ContextVar.get`` per call.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator, Mapping

from layerzero.errors import InvalidInputError
from layerzero.operations import OPERATIONS, matches

__all__ = ["active_overrides", "kernel_override", "use_kernels"]

_OVERRIDES: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("layerzero_kernel_overrides", default=())

active_overrides = _OVERRIDES.get  # () outside any block: the dispatcher's cheap check


def kernel_override(overrides: tuple[tuple[str, str], ...], operation: str) -> str | None:
    """The kernel id a block forces for ``operation`` (innermost block first), or None."""
    for pattern, kernel in reversed(overrides):
        if matches(pattern, operation):
            return kernel
    return None


@contextlib.contextmanager
def use_kernels(overrides: Mapping[str, str] | None = None, **by_operation: str) -> Iterator[None]:
    """Force kernels for operations inside the block: ``use_kernels(rms_norm="triton_rms_norm")`` or
    ``use_kernels({"attention.*": "torch_sdpa_flash_attention"})``. Blocks nest; the innermost wins."""
    pairs = [*dict(overrides or {}).items(), *by_operation.items()]
    problems = []
    for pattern, kernel in pairs:
        if not any(matches(pattern, op) for op in OPERATIONS):
            problems.append((pattern, kernel, f"matches no operation; operations are {', '.join(OPERATIONS)}"))
        if not isinstance(kernel, str) or not kernel:
            problems.append((pattern, kernel, "expected a kernel id such as 'torch_rms_norm'"))
    if problems:
        raise InvalidInputError("use_kernels", problems)
    token = _OVERRIDES.set(_OVERRIDES.get() + tuple(pairs))
    try:
        yield
    finally:
        _OVERRIDES.reset(token)
