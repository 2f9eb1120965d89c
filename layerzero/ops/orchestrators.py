"""Orchestrators reachable by name, and running one call through an orchestrator.

The ``torch.library`` custom ops take the orchestrator by NAME (a string is a graph constant), which is
why per-model orchestrators are registered with :func:`register_orchestrator`; ``None`` means the
process-wide global dispatcher, imported lazily because it pulls in policy and registries.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Optional, Union

import torch

from layerzero.errors import LayerZeroError

from layerzero.dispatch.callsite import CallSite
from layerzero.dispatch.orchestrator import DispatchOrchestrator

__all__ = [
    "OrchestratorLike",
    "OrchestratorNotFoundError",
    "call_site",
    "fresh",
    "get_orchestrator",
    "has_orchestrator",
    "list_orchestrators",
    "name_for_graph",
    "register_orchestrator",
    "resolve",
    "run",
    "unregister_orchestrator",
]

OrchestratorLike = Union[str, DispatchOrchestrator, CallSite, None]


# ------------------------------------------------------------------------------------------ orchestrators
class OrchestratorNotFoundError(LayerZeroError, KeyError):
    """A per-model orchestrator name that was never registered (or was unregistered)."""

    def __init__(self, name: str, known: tuple[str, ...]):
        self.name = name
        self.known = known
        super().__init__(
            f"orchestrator {name!r} is not registered (known: {', '.join(map(repr, known)) or 'none'}); "
            "register it with layerzero.ops.register_orchestrator(name, orchestrator) before calling, "
            "or pass orchestrator=None for the global dispatcher"
        )

    def __str__(self) -> str:
        return self.args[0]


_ORCHESTRATORS: dict[str, Any] = {}
_REGISTRY_LOCK = threading.Lock()


def register_orchestrator(name: str, orchestrator: Any) -> None:
    """Make ``orchestrator`` reachable by ``name`` from the ops (and from compiled graphs).

    Re-registering a name replaces the previous orchestrator: compiled graphs look the name up at run
    time, so they pick up the new one without recompiling."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"orchestrator name must be a non-empty string, got {name!r}")
    if not callable(getattr(orchestrator, "dispatch", None)):
        raise TypeError(
            f"orchestrator {name!r} must have a dispatch(operation, inputs, **kwargs) method; "
            f"got {type(orchestrator).__name__}"
        )
    with _REGISTRY_LOCK:
        _ORCHESTRATORS[name] = orchestrator


def unregister_orchestrator(name: str) -> None:
    """Forget a named orchestrator (e.g. when a model is unpatched). Unknown names are ignored."""
    with _REGISTRY_LOCK:
        _ORCHESTRATORS.pop(name, None)


def list_orchestrators() -> tuple[str, ...]:
    return tuple(_ORCHESTRATORS)


def has_orchestrator(name: str) -> bool:
    """Whether ``name`` is registered (cheap: one dict lookup)."""
    return name in _ORCHESTRATORS


_global_dispatcher: Any = None  # layerzero.dispatch.get_global_dispatcher, bound on first use


def get_orchestrator(name: str | None = None) -> Any:
    """The orchestrator registered as ``name``; ``None`` means the process-wide global dispatcher."""
    if name is None:
        global _global_dispatcher
        if _global_dispatcher is None:  # imported lazily: the dispatcher pulls in policy and registries
            from layerzero.dispatch import get_global_dispatcher

            _global_dispatcher = get_global_dispatcher
        return _global_dispatcher()
    try:
        return _ORCHESTRATORS[name]
    except KeyError:
        raise OrchestratorNotFoundError(name, tuple(_ORCHESTRATORS)) from None


def resolve(orchestrator: OrchestratorLike) -> Any:
    if orchestrator is None or isinstance(orchestrator, str):
        return get_orchestrator(orchestrator)
    return orchestrator


def call_site(orchestrator: str | None = None) -> "CallSite":
    """A :class:`~layerzero.dispatch.CallSite` for the orchestrator registered as ``orchestrator``
    (``None``: the global one). Pass it as ``orchestrator=`` to the functions here: in eager mode the call
    reuses the site's last plan while the call's cache key is unchanged; under ``torch.compile`` the
    custom op carries the orchestrator's name, as without a site. One site per patched module (or per
    shared function) keeps bindings from thrashing between shapes."""
    from layerzero.dispatch.callsite import CallSite

    if orchestrator is not None and not isinstance(orchestrator, str):
        raise TypeError(f"call_site takes an orchestrator name or None, got {type(orchestrator).__name__}")
    return CallSite(functools.partial(get_orchestrator, orchestrator), orchestrator,
                    _ORCHESTRATORS if orchestrator is not None else None)


def name_for_graph(orchestrator: OrchestratorLike) -> Optional[str]:
    """The string a custom op carries to find the orchestrator again at run time."""
    if orchestrator is None or isinstance(orchestrator, str):
        return orchestrator
    from layerzero.dispatch.callsite import CallSite

    if isinstance(orchestrator, CallSite):
        return orchestrator.orchestrator_name
    for name, registered in _ORCHESTRATORS.items():
        if registered is orchestrator:
            return name
    raise LayerZeroError(
        f"orchestrator object {orchestrator!r} is not registered, so a compiled graph cannot refer to it; "
        "call layerzero.ops.register_orchestrator(name, orchestrator) and pass orchestrator=name"
    )


# ------------------------------------------------------------------------------------------ running a call
def run(orchestrator: OrchestratorLike, operation: str, inputs: dict[str, Any], options: dict[str, Any]) -> Any:
    """Run one eager call through ``orchestrator`` (a name, None, an orchestrator or a CallSite) and return
    the output. A patched module's CallSite goes first and straight to its bound call: in a decode loop
    every Python frame on this path is paid per operation per layer."""
    if type(orchestrator) is CallSite:
        return orchestrator.call(operation, inputs, options)
    if orchestrator is None or isinstance(orchestrator, str):
        orchestrator = get_orchestrator(orchestrator)
    call = getattr(orchestrator, "call", None)  # output-only fast path of DispatchOrchestrator
    if call is not None:
        return call(operation, inputs, options)
    return orchestrator.dispatch(operation, inputs, **options).output


def fresh(out: torch.Tensor, dtype: torch.dtype, inputs: tuple[Optional[torch.Tensor], ...]) -> torch.Tensor:
    """Contiguous, in the contract dtype, and never the storage of an input (custom-op rules)."""
    out = out.to(dtype).contiguous()
    for t in inputs:
        if t is not None and out.data_ptr() == t.data_ptr() and out.numel() and t.numel():
            return out.clone()
    return out


