"""Dispatch configuration and results."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from layerzero.policy import Policy


class DispatchMode(enum.Enum):
    """STATIC: a fixed kernel map, no policy. DYNAMIC: per-call selection under a policy.
    HOT_RELOAD: DYNAMIC with a policy file that is watched and swapped atomically. AUTOTUNE: DYNAMIC whose
    first call per shape bucket times every eligible kernel and keeps the fastest (persisted)."""

    STATIC = "static"
    DYNAMIC = "dynamic"
    HOT_RELOAD = "hot_reload"
    AUTOTUNE = "autotune"


@dataclass
class DispatchConfig:
    """Every knob of a dispatcher. Defaults favour a production inference server: cached selection,
    fallback on failure, circuit breakers on, telemetry on, timing of the dispatch path (not of the GPU)."""

    mode: DispatchMode = DispatchMode.DYNAMIC
    # selection
    enable_cache: bool = True
    cache_size: int = 4096
    policy: "Policy | None" = None
    policy_path: str | None = None
    static_kernel_map: Mapping[str, str] = field(default_factory=dict)
    # resilience
    enable_fallback: bool = True
    max_fallback_attempts: int = 3
    circuit_breaker_enabled: bool = True
    failure_threshold: int = 5
    success_threshold: int = 2
    recovery_timeout_seconds: float = 30.0
    half_open_max_calls: int = 3
    check_outputs: bool = False
    # observability
    enable_telemetry: bool = True
    record_timing: bool = True
    # hot reload
    config_path: str | None = None
    watch_interval_seconds: float = 1.0
    validate_on_reload: bool = True
    # autotune
    autotune_cache_path: str | None = None
    autotune_warmup: int = 3
    autotune_repeats: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.mode, str):
            try:
                self.mode = DispatchMode(self.mode.lower())
            except ValueError:
                valid = ", ".join(m.value for m in DispatchMode)
                raise ValueError(f"DispatchConfig.mode: unknown mode {self.mode!r}; use one of {valid}") from None
        for name in ("cache_size", "max_fallback_attempts", "failure_threshold", "success_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "max_fallback_attempts" else 1):
                raise ValueError(f"DispatchConfig.{name}: expected a positive integer, got {value!r}")
        for name in ("recovery_timeout_seconds", "watch_interval_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"DispatchConfig.{name}: expected a positive number of seconds, got {value!r}")
        self.static_kernel_map = dict(self.static_kernel_map or {})


@dataclass(slots=True, eq=False)
class DispatchTiming:
    """Wall-clock nanoseconds of the dispatch path. ``execution_ns`` is the time to launch the kernel
    from Python: on CUDA it does not include GPU time unless the kernel synchronises."""

    total_ns: int = 0
    selection_ns: int = 0
    execution_ns: int = 0

    @property
    def total_us(self) -> float:
        return self.total_ns / 1000.0

    @property
    def selection_us(self) -> float:
        return self.selection_ns / 1000.0

    @property
    def execution_us(self) -> float:
        return self.execution_ns / 1000.0


_NO_TIMING = DispatchTiming()


@dataclass(slots=True)
class DispatchResult:
    output: Any
    kernel_id: str
    timing: DispatchTiming = _NO_TIMING
    was_fallback: bool = False
    cache_hit: bool = False
    operation: str | None = None
    failed_kernels: tuple[str, ...] = ()
