"""Per-instance globals overlays: a copy of a class forward whose module-global name resolves to this
model's replacement.

RoPE lives in a module-global function (``apply_rotary_pos_emb``) that the attention forward looks up at
call time. Rewriting that global would change every model of the architecture in the process, so each
patched attention instance gets a copy of its class forward whose globals resolve the name to this model's
replacement (same code object, one overlay namespace per model and defining module). A forward wrapped by
``functools.wraps`` decorators (Transformers' ``@deprecate_kwarg``) is followed down ``__wrapped__`` and
each decorator is rebuilt around the copy, so its behaviour is kept. Anything that cannot be rebuilt
raises :class:`~layerzero_hf.kinds.SkipModule` with the reason, before any overlay is built.
"""

from __future__ import annotations

import itertools
import sys
import types
from typing import Any, Callable

from layerzero_hf.kinds import SkipModule

__all__ = ["code_label", "decorators_of", "drop_overlays", "rebuild_around", "with_global", "with_global_through",
           "wrapper_chain"]


def with_global(fn: Callable, name: str, value: Any, overlays: dict[int, types.ModuleType]) -> Callable:
    """A copy of ``fn`` (same code, defaults, closure) whose global ``name`` is ``value``.

    The globals are those of a synthetic module (a snapshot of the defining module's namespace plus the
    override) registered in ``sys.modules`` under a unique name: torch.compile re-imports an inlined
    function's globals by ``__name__`` to build its guards, so the namespace must be importable under its
    own name or the guards would read the original module's function. One synthetic module per model and
    defining module; :func:`unpatch` removes it from ``sys.modules``."""
    overlay = overlays.get(id(fn.__globals__))
    if overlay is None:
        base = str(fn.__globals__.get("__name__", "module")).rpartition(".")[2]
        mod_name = f"_layerzero_overlay_{next(_overlay_ids)}_{base}"
        overlay = types.ModuleType(mod_name)
        overlay.__dict__.update(fn.__globals__)
        overlay.__dict__["__name__"] = mod_name
        overlay.__dict__[name] = value
        sys.modules[mod_name] = overlay
        overlays[id(fn.__globals__)] = overlay
    new = types.FunctionType(fn.__code__, overlay.__dict__, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = dict(fn.__kwdefaults__) if fn.__kwdefaults__ else None
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__dict__.update(fn.__dict__)
    new.__layerzero_original__ = fn  # type: ignore[attr-defined]
    return new


_overlay_ids = itertools.count(1)
_MAX_WRAPPERS = 16


def wrapper_chain(fn: Any, name: str, owner: str) -> tuple[list[types.FunctionType], types.FunctionType]:
    """``(wrappers, target)``: the ``functools.wraps`` decorators above ``fn`` (outermost first) and the
    function whose code looks up the global ``name``.

    Transformers decorates attention forwards (``@deprecate_kwarg`` ...); the wrapper's code is not the
    forward's, so the global has to be found by following ``__wrapped__``. Raises SkipModule with the reason
    when no function on the chain looks the name up or a wrapper is not a plain Python function (a
    C-level wrapper or a callable class cannot be rebuilt around a copy, and dropping it would drop the
    decorator's behaviour)."""
    def calls_name(f: Any) -> bool:
        code = getattr(f, "__code__", None)
        return code is not None and name in code.co_names and isinstance(f, types.FunctionType)

    wrappers, target = decorators_of(fn, owner, stop=calls_name)
    if not calls_name(target):
        via = f" (reached through {len(wrappers)} decorator(s))" if wrappers else ""
        raise SkipModule(f"{owner}.forward{via}: {code_label(target)} does not call the global {name!r} directly "
                         "and wraps nothing (a different RoPE path); left alone")
    return wrappers, target


def code_label(fn: Any) -> str:
    """A decorator's own name: ``functools.wraps`` copies the wrapped function's ``__qualname__`` onto the
    wrapper, so the code object's qualified name is what tells them apart."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return type(fn).__qualname__
    return getattr(code, "co_qualname", code.co_name)


def cells_holding(wrapper: types.FunctionType, inner: Callable) -> list[int]:
    """Indices of ``wrapper``'s closure cells that hold exactly ``inner``; raises SkipModule when there are
    none (the wrapper reaches the wrapped function another way, so a rebuilt wrapper would still call the original)."""
    hits = [i for i, cell in enumerate(wrapper.__closure__ or ()) if _cell_holds(cell, inner)]
    if not hits:
        raise SkipModule(f"decorator {code_label(wrapper)} holds no closure cell with {code_label(inner)} (it "
                         "reaches the wrapped function another way); cannot rebuild it around a per-instance copy; "
                         "left alone")
    return hits


def _cell_holds(cell: types.CellType, value: Any) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


def rewrap(wrapper: types.FunctionType, cells: list[int], copy: Callable) -> types.FunctionType:
    """A copy of ``wrapper`` (same code, globals, defaults, kwdefaults, ``__dict__``) whose closure ``cells``
    (those that held the wrapped function) hold ``copy``; the other cells are shared, so the decorator's
    state stays one."""
    closure = list(wrapper.__closure__ or ())
    for i in cells:
        closure[i] = types.CellType(copy)
    new = types.FunctionType(wrapper.__code__, wrapper.__globals__, wrapper.__name__, wrapper.__defaults__,
                             tuple(closure))
    new.__kwdefaults__ = dict(wrapper.__kwdefaults__) if wrapper.__kwdefaults__ else None
    new.__qualname__ = wrapper.__qualname__
    new.__module__ = wrapper.__module__
    new.__doc__ = wrapper.__doc__
    new.__dict__.update(wrapper.__dict__)
    new.__wrapped__ = copy  # type: ignore[attr-defined]
    new.__layerzero_original__ = wrapper  # type: ignore[attr-defined]
    return new


def with_global_through(fn: Callable, name: str, value: Any, overlays: dict[int, types.ModuleType],
                         owner: str) -> tuple[Callable, list[str]]:
    """:func:`with_global` for a possibly decorated ``fn``: the innermost function that looks ``name`` up is
    copied with the overlay globals, then each decorator above it is rebuilt around the copy. Returns the new
    outermost function and the decorators' qualnames (for the report). Raises SkipModule, before any overlay is
    built, when the chain cannot be rebuilt (see :func:`wrapper_chain` and :func:`cells_holding`)."""
    wrappers, target = wrapper_chain(fn, name, owner)
    return rebuild_around(wrappers, target, lambda: with_global(target, name, value, overlays)), [
        code_label(w) for w in wrappers]


def rebuild_around(wrappers: list[types.FunctionType], target: Callable, make: Callable[[], Callable]) -> Callable:
    """``make()`` (a stand-in for ``target``) with the decorators ``wrappers`` (outermost first, each
    wrapping the next, the last wrapping ``target``) rebuilt around it. Checks every decorator first and
    raises SkipModule, before calling ``make``, when one cannot be rebuilt (:func:`cells_holding`)."""
    cells = [cells_holding(w, inner) for w, inner in zip(wrappers, [*wrappers[1:], target])]
    copy = make()
    for wrapper, held in zip(reversed(wrappers), reversed(cells)):
        copy = rewrap(wrapper, held, copy)
    return copy


def decorators_of(fn: Any, owner: str, stop: Callable[[Any], bool] | None = None,
                  ) -> tuple[list[types.FunctionType], Any]:
    """``(wrappers, innermost)``: the ``functools.wraps`` decorators above ``fn`` (outermost first) and the
    function they end in (or the first one ``stop`` accepts). Raises SkipModule when a wrapper is not a
    plain Python function (a C-level wrapper or a callable class cannot be rebuilt around a replacement, and
    dropping it would drop the decorator's behaviour) or the chain is cyclic or deeper than 16."""
    wrappers: list[types.FunctionType] = []
    current = fn
    while not (stop is not None and stop(current)) and (inner := getattr(current, "__wrapped__", None)) is not None:
        if not isinstance(current, types.FunctionType):
            raise SkipModule(f"{owner}.forward is wrapped by {code_label(current)} ({type(current).__name__}), "
                             "not a Python function: it cannot be rebuilt around a replacement; left alone")
        if len(wrappers) >= _MAX_WRAPPERS or any(w is inner for w in wrappers):
            raise SkipModule(f"{owner}.forward: the __wrapped__ chain is cyclic or deeper than {_MAX_WRAPPERS}; "
                             "left alone")
        wrappers.append(current)
        current = inner
    return wrappers, current


def drop_overlays(overlays: dict[int, types.ModuleType] | list[str]) -> None:
    """Remove overlay modules (built by :func:`with_global`) from ``sys.modules``, by dict or by names."""
    names = [m.__name__ for m in overlays.values()] if isinstance(overlays, dict) else overlays
    for name in names:
        sys.modules.pop(name, None)
