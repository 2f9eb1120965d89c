"""The patch-kind registry: each kind of replacement (``rms_norm``, ``rope``, ...) registered next to its
parameter schema.

A kind is one function that builds a replacement forward for a module, plus the schema of the ``params`` a
``patches/<arch>.yaml`` entry may give it. Keeping both in one registration means the YAML validator
(:mod:`layerzero_hf.specs`), ``patch(only=...)`` and the planner all read the same list, and a new kind is
one decorated function rather than an edit to the validator, the planner and the argument checks::

    @register_patch_kind("rms_norm", params={"eps_attr": Param((str, list), ("variance_epsilon",)), ...})
    def build_rms_norm(ctx, path, module, params, *, verify, detected) -> Replacement: ...

The builder raises :class:`SkipModule` with a reason to leave a module alone (it is then reported as skipped).
The shipped kinds live in :mod:`layerzero_hf.builtin_kinds`, which the package imports first, so they are
registered before any lookup (this module never imports it: the kinds depend on the registry, not back).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

__all__ = [
    "REQUIRED",
    "KindContext",
    "Param",
    "PatchKind",
    "Replacement",
    "SkipModule",
    "get_patch_kind",
    "patch_kinds",
    "register_patch_kind",
    "unregister_patch_kind",
]

REQUIRED: Any = ...  # a Param default meaning "the spec must give this parameter"


class SkipModule(Exception):
    """Raised by a builder (or the helpers it calls) to leave a module alone; the message is the reason the
    report shows."""


@dataclass(frozen=True)
class Replacement:
    """What a builder returns: the forward to bind, the LayerZero operation it dispatches, a report detail."""

    fn: Callable
    op: str
    detail: str


class KindContext(Protocol):
    """What a builder may use from the planner running it (one per ``patch()`` call)."""

    ops: Any  # layerzero.ops
    orch: str  # this model's orchestrator name
    overlays: dict  # synthetic globals modules built so far (see layerzero_hf.overlay)
    cache: dict  # per-call memo for builders (e.g. one RoPE replacement per original function)

    def verdict(self, key: tuple, compute: Callable[[], tuple[dict, str]]) -> tuple[dict, str]:
        """Run a self-check once per key (per class); raises SkipModule with the cached failure."""
        ...

    def planned_spec(self, path: str, module: Any) -> tuple[str, dict] | None:
        """``(kind, params)`` this patch will apply to the module at ``path`` from the spec, or None."""
        ...


@dataclass(frozen=True)
class Param:
    """One parameter of a kind: accepted types, default (``REQUIRED``: none), allowed values (for a list
    value: allowed items), and a conversion applied after validation (``"eps"`` -> ``("eps",)``)."""

    types: type | tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple[str, ...] | None = None
    convert: Callable[[Any], Any] | None = None

    def accepts(self, value: Any) -> bool:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        if isinstance(value, bool) and bool not in types:
            return False
        return isinstance(value, types)

    def type_names(self) -> str:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        return " or ".join({"str": "a string", "list": "a list", "int": "a number", "float": "a number",
                            "bool": "true/false"}.get(t.__name__, t.__name__) for t in types)


Builder = Callable[..., Replacement]


@dataclass(frozen=True)
class PatchKind:
    """A registered kind: its name, parameter schema and replacement builder."""

    name: str
    params: Mapping[str, Param]
    build: Builder
    by_default: bool = True  # applied when the caller names no kinds; False: only when named (opt-in)

    def validate(self, raw: Any, where: str, bad: Callable[[str, Any, str], None]) -> dict[str, Any]:
        """``raw`` checked against the schema: every problem reported through ``bad(field, value, message)``,
        defaults filled in, conversions applied."""
        if not isinstance(raw, Mapping):
            bad(where, raw, "expected a mapping")
            raw = {}
        out: dict[str, Any] = {}
        for key, value in raw.items():
            param = self.params.get(key)
            if param is None:
                bad(f"{where}.{key}", value,
                    f"unknown parameter for kind {self.name!r}; expected one of {sorted(self.params)}")
            elif not param.accepts(value):
                bad(f"{where}.{key}", value, f"expected {param.type_names()}")
            else:
                out[key] = value
        for key, param in self.params.items():
            if key not in out:
                if param.default is REQUIRED:
                    bad(f"{where}.{key}", None, f"required parameter for kind {self.name!r}")
                    continue
                out[key] = list(param.default) if isinstance(param.default, (list, tuple)) else param.default
            if param.choices is not None:
                _check_choices(out[key], param.choices, f"{where}.{key}", bad)
            if param.convert is not None:
                out[key] = param.convert(out[key])
        return out


def _check_choices(value: Any, choices: tuple[str, ...], fld: str, bad: Callable[[str, Any, str], None]) -> None:
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if item not in choices:
            bad(fld, item, f"use one of {', '.join(choices)}")


_lock = threading.Lock()
_kinds: dict[str, PatchKind] = {}


def register_patch_kind(name: str, *, params: Mapping[str, Param],
                        by_default: bool = True) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn(ctx, path, module, params, *, verify, detected) -> Replacement`` as the
    builder of kind ``name`` with its parameter schema. ``by_default=False`` makes the kind opt-in: a
    ``patch()`` that names no kinds leaves it out. Registering a name twice raises ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_patch_kind: the kind name must be a non-empty string, got {name!r}")
    for key, param in params.items():
        if not isinstance(param, Param):
            raise TypeError(f"register_patch_kind({name!r}): params[{key!r}] must be a Param, got "
                            f"{type(param).__name__}")

    def decorate(fn: Builder) -> Builder:
        with _lock:
            if name in _kinds:
                raise ValueError(f"register_patch_kind: kind {name!r} is already registered "
                                 f"(by {_kinds[name].build.__qualname__}); unregister it first")
            _kinds[name] = PatchKind(name, dict(params), fn, by_default)
        return fn

    return decorate


def unregister_patch_kind(name: str) -> None:
    """Remove a kind (a plug-in's or a test's); unknown names are ignored."""
    with _lock:
        _kinds.pop(name, None)


def patch_kinds() -> tuple[str, ...]:
    """Every registered kind, shipped ones first, in registration order."""
    return tuple(_kinds)


def default_patch_kinds() -> tuple[str, ...]:
    """The kinds a ``patch()`` that names none applies: every registered kind but the opt-in ones."""
    return tuple(name for name, kind in _kinds.items() if kind.by_default)


def get_patch_kind(name: str) -> PatchKind | None:
    return _kinds.get(name)
