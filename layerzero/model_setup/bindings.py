"""The one lifecycle of per-model setups: held through weak references, released when the model goes.

An integration binds a setup to an object that lives exactly as long as the model (the model itself or
its config object: one per loaded model). The binding is a claim on the setup (:class:`Owner`) keyed by
the object's id and dropped by a ``weakref.finalize`` on the object, so when the model is garbage-collected
its orchestrator is unregistered and its watcher stopped, whichever integration built it. The finalizer
also removes the key, so a later object reusing the id never finds a stale setup.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

from layerzero.model_setup.setup import ModelSetup, Owner, release

__all__ = ["SetupBindings", "release_when_collected"]

_pinned: list[Any] = []  # objects that cannot be weakly referenced: kept alive so their ids stay unique


def release_when_collected(obj: Any, callback: Callable[[], Any]) -> None:
    """Run ``callback`` once ``obj`` is garbage-collected (or at interpreter exit). An object that cannot be
    weakly referenced is kept alive for the process instead, and the callback never runs."""
    try:
        weakref.finalize(obj, callback)
    except TypeError:
        _pinned.append(obj)


class SetupBindings:
    """Which setup serves each live object (a model or its config): one claim per binding, dropped when
    the object is collected, replaced by :meth:`bind`, or removed by :meth:`unbind`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[int, Owner] = {}

    def get(self, obj: Any) -> ModelSetup | None:
        """The setup bound to ``obj``, if any (cheap: one dict lookup)."""
        owner = self._owners.get(id(obj))
        return owner.setup if owner is not None else None

    def get_or_build(self, obj: Any, build: Callable[[], ModelSetup]) -> ModelSetup:
        """The setup bound to ``obj``, built and bound on first use (``build`` returns a setup whose one
        claim the binding takes). When two threads race, the loser's setup is released."""
        found = self.get(obj)
        if found is not None:
            return found
        setup = build()
        with self._lock:
            owner = self._owners.get(id(obj))
            if owner is None:
                owner = self._owners[id(obj)] = Owner(setup)
        if owner.setup is not setup:
            release(setup)  # another thread won the race
            return owner.setup
        release_when_collected(obj, lambda key=id(obj): self._forget(key, owner))
        return setup

    def bind(self, obj: Any, setup: ModelSetup) -> None:
        """Make ``setup`` the one found for ``obj``; the binding holds its own claim until it is replaced,
        unbound, or ``obj`` is collected."""
        key = id(obj)
        owner = Owner(setup.retain())
        with self._lock:
            previous = self._owners.get(key)
            self._owners[key] = owner
        if previous is not None:
            previous.close()
        release_when_collected(obj, lambda: self._forget(key, owner))

    def unbind(self, obj: Any, setup: ModelSetup) -> None:
        """Drop ``obj``'s binding if it is to ``setup`` (a later binding to another setup is kept)."""
        with self._lock:
            owner = self._owners.get(id(obj))
            if owner is None or owner.setup is not setup:
                return
            del self._owners[id(obj)]
        owner.close()

    def setups(self) -> list[ModelSetup]:
        """The setups bound now (for telemetry and reports)."""
        with self._lock:
            return [o.setup for o in self._owners.values()]

    def _forget(self, key: int, owner: Owner) -> None:
        with self._lock:
            if self._owners.get(key) is owner:
                del self._owners[key]
        owner.close()
