"""Reading LayerZero telemetry out of vLLM's engine and worker processes.

The model runs in vLLM's engine-core / worker processes, not in the process that created ``vllm.LLM``,
so the calling process's telemetry is empty. Two ways to get the workers' counters back:

1. On demand, through vLLM's RPC: start the engine with
   ``LLM(..., worker_extension_cls="layerzero_vllm.LayerZeroWorkerExtension")`` and call
   :func:`read_worker_telemetry` (``llm.collective_rpc("layerzero_telemetry")``): one plain dict per
   worker, msgpack-safe, so no insecure (pickle) serialization is needed.
2. At exit: with ``LAYERZERO_VLLM_TELEMETRY_DIR=/some/dir`` every process that dispatched through
   LayerZero writes ``layerzero-telemetry-<pid>.json`` there when it exits;
   :func:`read_telemetry_dir` loads them.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = [
    "LayerZeroWorkerExtension",
    "install_exit_dump",
    "read_telemetry_dir",
    "read_worker_telemetry",
    "sum_operation_calls",
    "worker_telemetry",
]

RPC_METHOD = "layerzero_telemetry"
EXTENSION_PATH = "layerzero_vllm.LayerZeroWorkerExtension"


def _orchestrators() -> dict[str, Any]:
    """Every orchestrator the plugin's ops may have used in this process: the per-model ones and the
    plugin's own (ops built outside model construction), see :mod:`layerzero_vllm.model_setup`."""
    from layerzero_vllm.model_setup import orchestrators

    return orchestrators()


def _operations(snap: Any) -> dict[str, Any]:
    return {
        op: {"calls": int(s.calls), "fallbacks": int(s.fallbacks), "failures": int(s.failures),
             "kernels": {k: int(v) for k, v in s.kernels.items()}}
        for op, s in snap.operations.items()
    }


def worker_telemetry(reset: bool = False) -> dict[str, Any]:
    """This process's LayerZero telemetry as plain (msgpack/JSON-safe) data::

        {"pid", "time", "dispatch_count", "layers": {LayerZero class: instances built},
         "plans": {vLLM class: {"operation", "runs": {what the layers run: layers}}},
         "operations": {op: {"calls", "fallbacks", "failures", "kernels": {kernel_id: calls}}},  # summed
         "orchestrators": {name: {"dispatch_count", "operations", "snapshot"}}}

    ``reset`` clears the counters after reading, for per-phase measurements."""
    from layerzero_vllm.custom_ops import instances
    from layerzero_vllm.planning import layers

    out: dict[str, Any] = {"pid": os.getpid(), "time": time.time(), "dispatch_count": 0, "operations": {},
                           "orchestrators": {}, "layers": instances(), "plans": layers()}
    for name, orch in _orchestrators().items():
        snap = orch.get_telemetry()
        ops = _operations(snap)
        out["orchestrators"][name] = {
            "dispatch_count": int(snap.dispatch_count),
            "operations": ops,
            "snapshot": json.loads(json.dumps(snap.as_dict(), default=str)),
        }
        out["dispatch_count"] += int(snap.dispatch_count)
        for op, stats in ops.items():
            total = out["operations"].setdefault(op, {"calls": 0, "fallbacks": 0, "failures": 0, "kernels": {}})
            for key in ("calls", "fallbacks", "failures"):
                total[key] += stats[key]
            for kid, n in stats["kernels"].items():
                total["kernels"][kid] = total["kernels"].get(kid, 0) + n
        if reset:
            telemetry = getattr(orch, "telemetry", None)
            if telemetry is not None and hasattr(telemetry, "reset"):
                telemetry.reset()
    return out


class LayerZeroWorkerExtension:
    """vLLM worker extension (``worker_extension_cls``) that answers ``collective_rpc`` calls.

    vLLM mixes this class into its worker class, so the methods below become RPC targets by name."""

    def layerzero_telemetry(self, reset: bool = False) -> dict[str, Any]:
        data = worker_telemetry(reset=reset)
        data["rank"] = getattr(self, "rank", None)
        return data

    def layerzero_dump_telemetry(self, directory: str) -> str:
        """Write this worker's snapshot to ``directory`` now; returns the file path."""
        return _dump(directory, worker_telemetry())


def _extension_configured(llm: Any) -> bool | None:
    """Whether ``llm`` was created with :class:`LayerZeroWorkerExtension` (None: cannot tell)."""
    engine = getattr(llm, "llm_engine", None)
    config = getattr(engine, "vllm_config", None)
    parallel = getattr(config, "parallel_config", None)
    if parallel is None:
        return None
    configured = getattr(parallel, "worker_extension_cls", "") or ""
    return EXTENSION_PATH in str(configured) or "LayerZeroWorkerExtension" in str(configured)


def _missing_extension_error() -> RuntimeError:
    return RuntimeError(
        f"read_worker_telemetry(llm): the vLLM workers do not have the {RPC_METHOD!r} method because the engine "
        f"was created without LayerZero's worker extension. Fix: create it with vllm.LLM(..., "
        f"worker_extension_cls={EXTENSION_PATH!r}), or set LAYERZERO_VLLM_TELEMETRY_DIR before starting vLLM "
        "and read the files written at exit with read_telemetry_dir()"
    )


def read_worker_telemetry(llm: Any, reset: bool = False) -> list[dict[str, Any]]:
    """One telemetry dict per vLLM worker of ``llm`` (a ``vllm.LLM``), read over vLLM's RPC.

    Raises RuntimeError naming ``worker_extension_cls`` when the engine was created without
    :class:`LayerZeroWorkerExtension` (checked before the call: vLLM's own error for an unknown RPC
    method is a bare "Call to collective_rpc method failed")."""
    configured = _extension_configured(llm)
    if configured is False:
        raise _missing_extension_error()
    try:
        return list(llm.collective_rpc(RPC_METHOD, kwargs={"reset": reset}))
    except NotImplementedError as exc:  # vLLM's answer for an unknown method name in some versions
        raise _missing_extension_error() from exc
    except Exception as exc:  # vLLM 0.32 wraps the worker's AttributeError in a generic error
        if configured is None and (RPC_METHOD in str(exc) or "collective_rpc" in str(exc)):
            raise _missing_extension_error() from exc
        raise


def _dump(directory: str, data: dict[str, Any]) -> str:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    target = path / f"layerzero-telemetry-{data['pid']}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, target)  # readers never see half a file
    return str(target)


_EXIT_DUMP: dict[str, str] = {}


def install_exit_dump(directory: str) -> None:
    """Write this process's telemetry into ``directory`` at exit, if it dispatched anything (idempotent)."""
    if _EXIT_DUMP.get("dir") == directory:
        return
    first = not _EXIT_DUMP
    _EXIT_DUMP["dir"] = directory
    if first:
        atexit.register(_exit_dump)


def _exit_dump() -> None:
    directory = _EXIT_DUMP.get("dir")
    if not directory or not _orchestrators():
        return
    try:
        _dump(directory, worker_telemetry())
    except Exception:  # noqa: BLE001 - never turn a clean interpreter exit into a traceback
        pass


def read_telemetry_dir(directory: str) -> list[dict[str, Any]]:
    """The snapshots written by :func:`install_exit_dump` / ``layerzero_dump_telemetry``."""
    return [json.loads(p.read_text()) for p in sorted(Path(directory).glob("layerzero-telemetry-*.json"))]


def sum_operation_calls(snapshots: list[dict[str, Any]]) -> dict[str, int]:
    """Total LayerZero calls per operation across worker snapshots."""
    totals: dict[str, int] = {}
    for snap in snapshots:
        for op, stats in (snap.get("operations") or {}).items():
            totals[op] = totals.get(op, 0) + int(stats.get("calls", 0))
    return totals
