"""Dispatch telemetry: exact counters, bounded latency samples, selection-change logs, optional
Prometheus export (:mod:`layerzero.telemetry.prometheus`, imported on demand)."""

from layerzero.telemetry.log import JsonFormatter
from layerzero.telemetry.recorder import DispatchTelemetry, KernelStats, OperationStats, TelemetrySnapshot

__all__ = ["DispatchTelemetry", "JsonFormatter", "KernelStats", "OperationStats", "TelemetrySnapshot"]
