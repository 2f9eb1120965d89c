"""Launching LayerZero's Triton kernels with less host time per call.

A decode step of a small model is host-bound: the GPU waits while the CPU issues the next kernel. There
Triton's own launch path (``kernel[grid](...)``) is a large part of a kernel's cost: per call it binds the
arguments, specialises each of them, builds a cache key (``str`` of the compile options), looks the
compiled kernel up, re-checks the globals the kernel read, canonicalises the grid and builds launch
metadata, before the C launcher runs. Profiled on an H200 host in a Gemma2-2B decode step (triton 3.6),
that Python side cost about twice what the C launcher did.

:func:`launch` keeps the part that decides *which* compiled kernel a call needs, Triton's own argument
binder (the same specialisation: dtypes, 16-byte pointer alignment, integers equal to 1 or divisible by
16, constexpr values), and caches the compiled kernel under that specialisation, the device and the
launch options. A call with a specialisation seen before goes straight to the compiled kernel's launcher
with the arguments Triton would pass it; anything else, and every first call, takes Triton's path, which
compiles and caches as usual.

Triton's path is always taken under ``torch.compile`` tracing (dynamo handles ``kernel[grid]`` natively),
under the CPU interpreter (``TRITON_INTERPRET=1``), for objects that are not compiled Triton kernels (test
stand-ins), while a launch hook is installed (profilers such as Proton read the launch metadata), and for
good once the Triton in use lacks a piece this relies on. What the fast path does not repeat is Triton's
check that the module globals a kernel read are unchanged: LayerZero's kernels read only constants.

``cdiv`` and ``next_power_of_2`` are plain-Python twins of Triton's: since triton 3.5 those are constexpr
functions whose every host-side call unwraps its arguments (a few microseconds per launch in the wrappers).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["cdiv", "clear", "fast_path_enabled", "launch", "next_power_of_2"]


def cdiv(a: int, b: int) -> int:
    """Ceiling division (``triton.cdiv``)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` for n >= 1; 0 for 0 (``triton.next_power_of_2``)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


_compiling = torch.compiler.is_compiling
_state: dict[str, Any] = {"enabled": None}  # None: not decided yet; then True / False for the process
_compiled: dict[Any, dict[tuple, Any]] = {}  # kernel -> (device, specialisation, options) -> compiled kernel


def _decide() -> bool:
    """Whether the fast path can run with this Triton and torch: CUDA present, not the interpreter, and the
    pieces :func:`launch` uses exist. Decided once."""
    enabled = False
    try:
        import triton

        runtime = triton.knobs.runtime
        enabled = (torch.cuda.is_available() and not runtime.interpret and hasattr(torch._C, "_cuda_getCurrentRawStream")
                   and hasattr(runtime, "launch_enter_hook"))
        if enabled:
            _state.update(runtime=runtime, device=torch._C._cuda_getDevice, stream=torch._C._cuda_getCurrentRawStream)
    except (ImportError, AttributeError):
        enabled = False
    _state["enabled"] = enabled
    return enabled


def fast_path_enabled() -> bool:
    """Whether :func:`launch` uses its cached compiled kernels in this process (False on CPU, under the
    interpreter, or after this Triton turned out to lack something it needs)."""
    enabled = _state["enabled"]
    return _decide() if enabled is None else enabled


def _hook_active(hook: Any) -> bool:
    """A launch hook that would run: set (older Triton) or a chain with calls in it (triton >= 3.4)."""
    return hook is not None and getattr(hook, "calls", True) != []


def launch(kernel: Any, grid: Sequence[int], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, with a call whose specialisation was seen before launched
    directly (see the module docstring). Returns nothing; the kernels write their outputs."""
    enabled = _state["enabled"]
    if _compiling() or enabled is False or (enabled is None and not _decide()):
        kernel[grid](*args, **kwargs)
        return
    caches = getattr(kernel, "device_caches", None)
    runtime = _state["runtime"]
    if caches is None or _hook_active(runtime.launch_enter_hook) or _hook_active(runtime.launch_exit_hook):
        kernel[grid](*args, **kwargs)
        return
    device = _state["device"]()
    entry = caches.get(device)  # Triton fills it on the first launch on a device
    if entry is None:
        kernel[grid](*args, **kwargs)
        return
    try:
        bound, specialization, options = entry[4](*args, **kwargs)
        key = (device, tuple(specialization), tuple(options.items()))
        known = _compiled.get(kernel)
        compiled = known.get(key) if known is not None else None
    except Exception:  # noqa: BLE001 - an unhashable constexpr, a binder of another shape: Triton's path
        kernel[grid](*args, **kwargs)
        return
    if compiled is None:
        compiled = kernel[grid](*args, **kwargs)  # compiles (or finds Triton's cached variant) and launches
        if hasattr(compiled, "result"):  # an asynchronous compile's future
            compiled = compiled.result()
        if all(hasattr(compiled, name) for name in ("run", "function", "packed_metadata")):
            _compiled.setdefault(kernel, {})[key] = compiled
        return
    n = len(grid)
    try:
        compiled.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, _state["stream"](device),
                     compiled.function, compiled.packed_metadata, None, None, None, *bound.values())
    except TypeError:  # the launcher takes other arguments in this Triton: stop using the fast path
        _state["enabled"] = False
        _compiled.clear()
        kernel[grid](*args, **kwargs)


def clear() -> None:
    """Forget the cached compiled kernels (tests; the compiled kernels stay in Triton's own cache)."""
    _compiled.clear()
