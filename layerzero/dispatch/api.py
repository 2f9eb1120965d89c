"""Module-level entry points: ``dispatch()`` on a process-wide orchestrator."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Mapping

from layerzero.dispatch.orchestrator import DispatchOrchestrator
from layerzero.dispatch.types import DispatchConfig, DispatchMode, DispatchResult

if TYPE_CHECKING:
    from layerzero.context import SelectionContext

POLICY_ENV = "LAYERZERO_POLICY"

_lock = threading.Lock()
_global: DispatchOrchestrator | None = None


def _default_config() -> DispatchConfig:
    """Dynamic dispatch under the policy named by $LAYERZERO_POLICY, else the packaged default policy."""
    path = os.environ.get(POLICY_ENV)
    if not path:
        from layerzero.policy import default_policy_path

        found = default_policy_path()
        path = str(found) if found is not None else None
    return DispatchConfig(mode=DispatchMode.DYNAMIC, policy_path=path)


def get_global_orchestrator() -> DispatchOrchestrator:
    global _global
    o = _global
    if o is None:
        with _lock:
            if _global is None:
                _global = DispatchOrchestrator(_default_config())
            o = _global
    return o


def set_global_orchestrator(orchestrator: DispatchOrchestrator | None) -> None:
    """Replace (or, with None, reset) the process-wide orchestrator."""
    global _global
    with _lock:
        _global = orchestrator


get_global_dispatcher = get_global_orchestrator


def dispatch(
    operation: str,
    inputs: Mapping[str, Any],
    context: "SelectionContext | None" = None,
    mode: DispatchMode | None = None,
    **kwargs: Any,
) -> DispatchResult:
    """Run ``operation`` with the best kernel for these inputs (the path is described in docs/architecture.md)."""
    o = _global
    if o is None:
        o = get_global_orchestrator()
    return o.dispatch(operation, inputs, context, mode, **kwargs)
