"""Dispatch configuration and results."""

from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from layerzero.errors import ConfigValidationError, ValidationProblem

if TYPE_CHECKING:
    from layerzero.policy import Policy
    from layerzero.selection.ranking import Ranking


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
    # How eligible kernels are ordered in DYNAMIC and HOT_RELOAD (None: selection.measured_ranking.default_ranking());
    # the dispatcher's one strategy point, where a measured-cost ranking plugs in. STATIC ranks by
    # registration order and AUTOTUNE by measuring, whatever this says.
    ranking: "Ranking | None" = None
    # resilience
    enable_fallback: bool = True
    max_fallback_attempts: int = 3
    circuit_breaker_enabled: bool = True
    failure_threshold: int = 5
    success_threshold: int = 2
    recovery_timeout_seconds: float = 30.0
    half_open_max_calls: int = 3
    check_outputs: bool = False
    # verified kernels (the canary): the first call of a kernel in each shape bucket is compared with the
    # fp32 reference before its result is served; every ``verify_sample_every``-th later call is compared
    # off the critical path (0 turns sampling off). A failed check removes the kernel from that bucket.
    verify_kernels: bool = True
    verify_sample_every: int = 1000
    verify_max_elements: int = 1 << 26
    # observability
    enable_telemetry: bool = True
    record_timing: bool = True
    # hot reload
    config_path: str | None = None
    watch_interval_seconds: float = 1.0
    validate_on_reload: bool = True
    # A changed file is applied only once its content has read the same for this long, so a writer
    # stalled mid-file (an in-place rewrite) never gets a valid-looking prefix served; 0 applies a change
    # on the first poll that sees it.
    reload_settle_seconds: float = 1.0
    # autotune
    autotune_cache_path: str | None = None
    autotune_warmup: int = 3
    autotune_repeats: int = 10

    def __post_init__(self) -> None:
        """Reject wrong values at construction, each as a ConfigValidationError naming the field, the
        value and the fix (a bool is not a count here, although Python's bool is an int)."""
        if isinstance(self.mode, str):
            try:
                self.mode = DispatchMode(self.mode.lower())
            except ValueError:
                valid = ", ".join(m.value for m in DispatchMode)
                raise _invalid("mode", self.mode, f"unknown mode {self.mode!r}; fix: use one of {valid}") from None
        elif not isinstance(self.mode, DispatchMode):
            raise _invalid("mode", self.mode, f"expected a DispatchMode or its name, got {type(self.mode).__name__}; "
                           "fix: e.g. DispatchMode.DYNAMIC or 'dynamic'")
        for name, low in _INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "a positive integer" if low == 1 else f"an integer >= {low}"
                raise _invalid(name, value, f"expected {kind}, got {value!r}; fix: pass e.g. "
                               f"{_DEFAULTS[name]!r}")
        for name, strict in _SECONDS:
            value = getattr(self, name)
            ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
                  and (value > 0 if strict else value >= 0))
            if not ok:
                kind = "a positive number of seconds" if strict else "a number of seconds >= 0"
                raise _invalid(name, value, f"expected {kind}, got {value!r}; fix: pass e.g. {_DEFAULTS[name]!r}")
        for name in _BOOLS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise _invalid(name, value, f"expected True or False, got {value!r}; fix: pass a bool")
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)):
                    raise _invalid(name, value, f"expected a file path, got {type(value).__name__}; fix: pass a "
                                   "str or pathlib.Path (or None)")
                setattr(self, name, os.fsdecode(value))
        self.static_kernel_map = _check_kernel_map(self.static_kernel_map)
        if self.ranking is not None and not callable(getattr(self.ranking, "rank", None)):
            raise _invalid("ranking", self.ranking, "expected a Ranking (an object with rank(operation, context, "
                           "candidates)); fix: e.g. layerzero.selection.ranking.PriorityRanking(), or None")


def _invalid(name: str, value: Any, message: str) -> ConfigValidationError:
    return ConfigValidationError([ValidationProblem(f"DispatchConfig.{name}", value, message)])


def _check_kernel_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid("static_kernel_map", value, f"expected a mapping of operation -> kernel id, got "
                       f"{type(value).__name__}; fix: e.g. {{'rms_norm': 'torch_rms_norm'}}")
    out: dict[str, str] = {}
    for op, kernel in value.items():
        if not isinstance(op, str):
            raise _invalid("static_kernel_map", op, f"operation keys must be strings, got {type(op).__name__} "
                           f"{op!r}; fix: e.g. {{'rms_norm': 'torch_rms_norm'}}")
        if not isinstance(kernel, str):
            raise ConfigValidationError([ValidationProblem(
                f"DispatchConfig.static_kernel_map[{op!r}]", kernel,
                f"expected a kernel id (a string), got {type(kernel).__name__} {kernel!r}; fix: e.g. "
                f"{{{op!r}: 'torch_rms_norm'}} (`layerzero kernels` lists kernel ids)")])
        out[op] = kernel
    return out


_INTS = (("cache_size", 1), ("max_fallback_attempts", 0), ("failure_threshold", 1), ("success_threshold", 1),
         ("half_open_max_calls", 1), ("autotune_warmup", 0), ("autotune_repeats", 1))
_SECONDS = (("recovery_timeout_seconds", True), ("watch_interval_seconds", True), ("reload_settle_seconds", False))
_BOOLS = ("enable_cache", "enable_fallback", "circuit_breaker_enabled", "check_outputs", "enable_telemetry",
          "record_timing", "validate_on_reload")
_PATHS = ("policy_path", "config_path", "autotune_cache_path")
_DEFAULTS = {"cache_size": 4096, "max_fallback_attempts": 3, "failure_threshold": 5, "success_threshold": 2,
             "half_open_max_calls": 3, "autotune_warmup": 3, "autotune_repeats": 10, "recovery_timeout_seconds": 30.0,
             "watch_interval_seconds": 1.0, "reload_settle_seconds": 1.0}


@dataclass(slots=True, eq=False)
class DispatchTiming:
    """Wall-clock nanoseconds of the dispatch path. ``execution_ns`` is the time to launch the kernel
    from Python: on CUDA it does not include GPU time unless the kernel synchronises."""

    total_ns: int = 0
    selection_ns: int = 0
    execution_ns: int = 0

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
