"""Dynamic dispatch: per-call selection under a policy, ordered by the configured ranking, cached per
bucket of calls. The dispatcher's default configuration; the name stays for the code that builds it."""

from __future__ import annotations

from layerzero.dispatch.dispatcher import Dispatcher

__all__ = ["DynamicDispatcher"]


class DynamicDispatcher(Dispatcher):
    """A :class:`~layerzero.dispatch.dispatcher.Dispatcher` in DYNAMIC mode (same arguments)."""
