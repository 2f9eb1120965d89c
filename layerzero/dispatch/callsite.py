"""CallSite: a patched module's handle on dispatch, over :meth:`DispatchOrchestrator.bind`.

A site names its orchestrator (``layerzero.ops`` registers per-model orchestrators by name, and compiled
graphs carry that name) and keeps one :class:`~layerzero.dispatch.bound.BoundCall` per operation it has
seen. The bound calls carry the guard (selection state, cache key); the site only drops them when the
orchestrator registered under its name, or that orchestrator's default dispatcher, is replaced. Anything
standing in for an orchestrator (a recorder, a subclass overriding ``call``/``dispatch``) is never
bound: it sees every call.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from layerzero.dispatch.bound import RoutedCall
from layerzero.dispatch.orchestrator import DispatchOrchestrator

__all__ = ["CallSite"]


class CallSite:
    """Bound dispatch for one call site. ``call(operation, inputs, kwargs)`` has the signature of
    :meth:`DispatchOrchestrator.call`, so a site can stand wherever an orchestrator is passed to
    :mod:`layerzero.ops`. Thread-safe: the binding is one tuple, replaced by a single assignment."""

    __slots__ = ("orchestrator_name", "_resolve", "_registry", "_memo", "_past_binds", "__weakref__")

    def __init__(self, resolve: Callable[[], Any], orchestrator_name: str | None = None,
                 registry: Mapping[str, Any] | None = None):
        self._resolve = resolve
        self.orchestrator_name = orchestrator_name  # what compiled graphs use to find the orchestrator
        # name -> orchestrator mapping read directly on the hot path (``layerzero.ops``' registry); a name
        # missing there goes through ``resolve``, which raises the helpful error.
        self._registry = registry
        # (orchestrator, its default dispatcher or None when it must not be bound, {operation: bound call})
        self._memo: tuple = (None, None, {})
        self._past_binds = 0  # binds of the bound calls dropped with a replaced orchestrator

    def call(self, operation: str, inputs: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
        registry = self._registry
        orch = registry.get(self.orchestrator_name) if registry is not None else None
        if orch is None:
            orch = self._resolve()
        bound_orch, default, bounds = self._memo
        if bound_orch is not orch or (default is not None and orch.default is not default):
            bound_orch, default, bounds = self._rebind(orch)
        try:
            bound = bounds[operation]
        except KeyError:
            bound = bounds[operation] = orch.bind(operation) if default is not None else RoutedCall(orch, operation)
        return bound.call(inputs, kwargs)  # a method call: cheaper than calling the instance (BoundCall.call)

    def _rebind(self, orch: Any) -> tuple:
        self._past_binds += sum(b.binds for b in self._memo[2].values())
        m = self._memo = (orch, orch.default if _bindable(orch) else None, {})
        return m

    # A copy (deepcopy of a patched model, pickling a module that holds a site) starts unbound: the binding
    # refers to live dispatcher objects that must not be copied along.
    def __copy__(self) -> "CallSite":
        return CallSite(self._resolve, self.orchestrator_name, self._registry)

    def __deepcopy__(self, memo: dict) -> "CallSite":
        return CallSite(self._resolve, self.orchestrator_name, self._registry)

    def __reduce__(self) -> tuple:
        # the registry is process state: an unpickled site resolves through ``resolve`` alone
        return (CallSite, (self._resolve, self.orchestrator_name))

    def reset(self) -> None:
        """Forget the bindings (the next call selects through the dispatcher's cache)."""
        self._past_binds = self.binds
        self._memo = (None, None, {})

    @property
    def binds(self) -> int:
        """How many times the site (re)selected: a decode loop should leave this flat."""
        return self._past_binds + sum(b.binds for b in self._memo[2].values())

    @property
    def bound_kernel(self) -> str | None:
        """The kernel id the site's newest operation would run next without selecting, if bound."""
        bound = self._memo[2]
        return next((b.bound_kernel for b in reversed(bound.values())), None)

    def __repr__(self) -> str:
        return f"CallSite(orchestrator={self.orchestrator_name!r}, bound={self.bound_kernel!r}, binds={self.binds})"


def _bindable(orch: Any) -> bool:
    """Only a plain DispatchOrchestrator may be bypassed by a bound call: anything standing in for one (a
    recorder, a subclass overriding ``call``/``dispatch``) must see every call."""
    cls = type(orch)
    return (issubclass(cls, DispatchOrchestrator) and cls.call is DispatchOrchestrator.call
            and cls.dispatch is DispatchOrchestrator.dispatch)
