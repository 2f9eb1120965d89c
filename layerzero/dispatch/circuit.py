"""Circuit breakers: stop calling a kernel that keeps failing, and try it again later.

A kernel that raises or returns garbage (NaN, wrong shape) on some input usually keeps doing so, and every
failed attempt costs a kernel launch plus a fallback. The breaker turns repeated failures into a cheap
"skip it" for ``cooldown_seconds``, then lets a few trial calls through to see whether it recovered.

States: CLOSED counts *consecutive* failures (a success resets the count); at ``failure_threshold`` the
circuit OPENs and rejects every call until ``cooldown_seconds`` have passed; it then becomes HALF_OPEN and
admits at most ``half_open_max_calls`` concurrent trial calls; ``success_threshold`` successes close it,
any failure re-opens it with a fresh cooldown.

The runner reads :attr:`CircuitBreaker.healthy` (CLOSED, no failure counted) on every dispatch and calls
``allow_request`` / ``record_success`` only when it is False: the common path is one attribute read. Every other path is rare
and locked. The clock is injectable so tests never sleep.

Listeners ``fn(old, new)`` are called outside the breaker's lock, in the order the transitions happened
(a pending-transition queue drained under a separate re-entrant lock), and an exception in a listener is
logged and swallowed: observers must never break dispatch. Every transition is also logged on the
``layerzero.circuit`` logger (WARNING when a circuit opens, with the failure that opened it; INFO
otherwise) with ``extra`` fields ``kernel_id``, ``old_state``, ``new_state``, ``last_failure``.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from layerzero.errors import ConfigValidationError, ValidationProblem, describe_failure

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerManager",
    "CircuitState",
    "CircuitStats",
    "StateListener",
]

_log = logging.getLogger("layerzero.circuit")

Clock = Callable[[], float]
StateListener = Callable[["CircuitState", "CircuitState"], Any]
ManagerListener = Callable[[str, "CircuitState", "CircuitState"], Any]


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class CircuitBreakerConfig:
    """Thresholds of one breaker. Defaults: 5 failures, 2 successes, 30 s, 3 trials."""

    failure_threshold: int = 5
    success_threshold: int = 2
    cooldown_seconds: float = 30.0
    half_open_max_calls: int = 3

    def __post_init__(self) -> None:
        problems: list[ValidationProblem] = []
        for name in ("failure_threshold", "success_threshold", "half_open_max_calls"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(ValidationProblem(name, v, "must be an integer >= 1"))
        cd = self.cooldown_seconds
        if isinstance(cd, bool) or not isinstance(cd, (int, float)) or not cd >= 0:
            problems.append(ValidationProblem("cooldown_seconds", cd, "must be a number of seconds >= 0"))
        if problems:
            raise ConfigValidationError(problems, source="CircuitBreakerConfig")

    @classmethod
    def from_dispatch_config(cls, config: Any) -> "CircuitBreakerConfig":
        """The breaker thresholds a ``DispatchConfig`` asks for (``failure_threshold``,
        ``recovery_timeout_seconds``); fields it lacks keep their defaults."""
        kw: dict[str, Any] = {}
        if getattr(config, "failure_threshold", None) is not None:
            kw["failure_threshold"] = config.failure_threshold
        if getattr(config, "recovery_timeout_seconds", None) is not None:
            kw["cooldown_seconds"] = float(config.recovery_timeout_seconds)
        for name in ("success_threshold", "half_open_max_calls"):
            v = getattr(config, name, None)
            if v is not None:
                kw[name] = v
        return cls(**kw)


@dataclass(frozen=True)
class CircuitStats:
    """A consistent picture of one breaker, taken under its lock."""

    kernel_id: str
    state: CircuitState
    failure_count: int
    success_count: int
    total_failures: int
    total_successes: int
    total_rejections: int
    times_opened: int
    last_failure: str | None
    last_failure_at: float | None
    opened_at: float | None
    half_open_calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.name
        return d


class CircuitBreaker:
    """One kernel's breaker. Thread-safe; see the module docstring for the state machine."""

    def __init__(
        self,
        kernel_id: str,
        config: CircuitBreakerConfig | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.kernel_id = kernel_id
        self.config = config or CircuitBreakerConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._notify_lock = threading.RLock()
        self._pending: deque[tuple[CircuitState, CircuitState]] = deque()
        self._listeners: tuple[StateListener, ...] = ()
        # Read without the lock on the hot path; written only under it.
        self._state = CircuitState.CLOSED
        self._failures = 0  # consecutive failures (CLOSED) / failures seen (HALF_OPEN: 0 or 1)
        # Public, read-only: CLOSED with no failure counted, so a caller may skip ``allow_request`` and
        # ``record_success`` (the runner's one read per call). Kept in step by ``_publish``.
        self.healthy = True
        self._successes = 0  # successes in HALF_OPEN
        self._half_open_calls = 0  # trial calls admitted and not yet finished
        self._half_open_since: float | None = None
        self._opened_at: float | None = None
        self._total_failures = 0
        self._total_successes = 0
        self._total_rejections = 0
        self._times_opened = 0
        self._last_failure: str | None = None
        self._last_failure_at: float | None = None

    # ------------------------------------------------------------------ hot path
    def allow_request(self) -> bool:
        """Whether the caller may run the kernel now. In HALF_OPEN an admitted call is a trial: the
        caller must report its outcome with ``record_success`` / ``record_failure``."""
        if self._state is CircuitState.CLOSED:
            return True
        with self._lock:
            allowed = self._allow_locked()
        if self._pending:
            self._drain()
        return allowed

    def record_success(self) -> None:
        """A call admitted by ``allow_request`` produced a good output."""
        if self._state is CircuitState.CLOSED and self._failures == 0:
            # Totals of successes are kept only off the lock-free path: counting them here would need a
            # lock (or lose updates) on every call. ``total_successes`` counts locked successes.
            return
        with self._lock:
            self._total_successes += 1
            st = self._state
            if st is CircuitState.CLOSED:
                self._failures = 0
            elif st is CircuitState.HALF_OPEN:
                if self._half_open_calls > 0:
                    self._half_open_calls -= 1
                self._successes += 1
                if self._successes >= self.config.success_threshold:
                    self._transition(CircuitState.CLOSED)
            # OPEN: a call admitted before the circuit opened finished well; it does not close it.
            self._publish()
        if self._pending:
            self._drain()

    def record_failure(self, exc: BaseException | str | None = None) -> None:
        """A call failed (raised, or its output failed the check)."""
        with self._lock:
            now = self._clock()
            self._total_failures += 1
            self._last_failure = describe_failure(exc)
            self._last_failure_at = now
            st = self._state
            if st is CircuitState.CLOSED:
                self._failures += 1
                if self._failures >= self.config.failure_threshold:
                    self._open(now)
            elif st is CircuitState.HALF_OPEN:
                self._failures += 1
                self._open(now)
            else:  # OPEN: a late failure of a call admitted earlier restarts the cooldown
                self._opened_at = now
            self._publish()
        if self._pending:
            self._drain()

    # ------------------------------------------------------------------ state machine (under the lock)
    def _allow_locked(self) -> bool:
        st = self._state
        if st is CircuitState.CLOSED:
            return True
        now = self._clock()
        if st is CircuitState.OPEN:
            if self._opened_at is not None and now - self._opened_at >= self.config.cooldown_seconds:
                self._transition(CircuitState.HALF_OPEN)
                self._half_open_since = now
                self._half_open_calls = 1
                return True
            self._total_rejections += 1
            return False
        # HALF_OPEN
        if self._half_open_calls < self.config.half_open_max_calls:
            self._half_open_calls += 1
            return True
        # Every trial slot is taken. If no trial reported back for a whole cooldown, the callers lost
        # them (an exception between allow and record): grant fresh slots rather than stay stuck.
        since = self._half_open_since
        if since is not None and now - since >= max(self.config.cooldown_seconds, 1e-9):
            self._half_open_since = now
            self._half_open_calls = 1
            return True
        self._total_rejections += 1
        return False

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._times_opened += 1
        self._half_open_calls = 0
        self._half_open_since = None
        self._transition(CircuitState.OPEN)

    def _transition(self, new: CircuitState) -> None:
        old = self._state
        if old is new:
            return
        if new is CircuitState.CLOSED:
            self._opened_at = None
            self._half_open_since = None
            self._half_open_calls = 0
        # Counters belong to the state being entered; reset them before publishing the new state so a
        # lock-free reader never sees CLOSED with a stale failure count. OPEN keeps the failure count
        # that opened it (what an operator wants to see).
        if new is not CircuitState.OPEN:
            self._failures = 0
        self._successes = 0
        self._state = new
        self._publish()
        self._pending.append((old, new))  # transitions are rare: always queue them (they are logged)

    def _publish(self) -> None:
        self.healthy = self._state is CircuitState.CLOSED and self._failures == 0

    # ------------------------------------------------------------------ listeners
    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(old_state, new_state)`` on every transition, in order, outside the lock."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def _drain(self) -> None:
        with self._notify_lock:
            while True:
                try:
                    old, new = self._pending.popleft()
                except IndexError:
                    return
                self._log_transition(old, new)
                for listener in self._listeners:
                    try:
                        listener(old, new)
                    except Exception:
                        _log.exception(
                            "circuit listener %r failed on %s: %s -> %s", listener, self.kernel_id, old, new
                        )

    def _log_transition(self, old: CircuitState, new: CircuitState) -> None:
        level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
        if not _log.isEnabledFor(level):
            return
        if new is CircuitState.OPEN:
            msg = "circuit for %s opened (%s -> %s) after: %s; calls skip it for %.1fs"
            args = (self.kernel_id, old.name, new.name, self._last_failure, self.config.cooldown_seconds)
        else:
            msg = "circuit for %s: %s -> %s"
            args = (self.kernel_id, old.name, new.name)
        _log.log(level, msg, *args, extra={"kernel_id": self.kernel_id, "old_state": old.name,
                                           "new_state": new.name, "last_failure": self._last_failure})

    # ------------------------------------------------------------------ inspection / control
    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN circuit whose cooldown has elapsed reads (and becomes) HALF_OPEN."""
        st = self._state
        if st is CircuitState.OPEN:
            with self._lock:
                if (
                    self._state is CircuitState.OPEN
                    and self._opened_at is not None
                    and self._clock() - self._opened_at >= self.config.cooldown_seconds
                ):
                    self._transition(CircuitState.HALF_OPEN)
                    self._half_open_since = self._clock()
                    self._half_open_calls = 0
                st = self._state
            if self._pending:
                self._drain()
        return st

    @property
    def is_closed(self) -> bool:
        return self._state is CircuitState.CLOSED

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted in the current state."""
        return self._failures

    @property
    def success_count(self) -> int:
        """Successes counted in HALF_OPEN towards ``success_threshold``."""
        return self._successes

    @property
    def time_until_half_open(self) -> float:
        """Seconds an OPEN circuit still rejects calls (0 when not OPEN)."""
        with self._lock:
            if self._state is not CircuitState.OPEN or self._opened_at is None:
                return 0.0
            return max(0.0, self.config.cooldown_seconds - (self._clock() - self._opened_at))

    def reset(self) -> None:
        """Force CLOSED and forget the current counts (totals are kept)."""
        with self._lock:
            self._transition(CircuitState.CLOSED)
            self._failures = 0
            self._successes = 0
            self._publish()
        if self._pending:
            self._drain()

    def force_open(self, reason: str | None = None) -> None:
        """Open the circuit now (an operator took the kernel out of service)."""
        with self._lock:
            if reason is not None:
                self._last_failure = reason
            if self._state is not CircuitState.OPEN:
                self._open(self._clock())
            else:
                self._opened_at = self._clock()
        if self._pending:
            self._drain()

    def stats(self) -> CircuitStats:
        self.state  # noqa: B018 - apply a due OPEN -> HALF_OPEN transition so the picture is current
        with self._lock:
            return CircuitStats(
                kernel_id=self.kernel_id,
                state=self._state,
                failure_count=self._failures,
                success_count=self._successes,
                total_failures=self._total_failures,
                total_successes=self._total_successes,
                total_rejections=self._total_rejections,
                times_opened=self._times_opened,
                last_failure=self._last_failure,
                last_failure_at=self._last_failure_at,
                opened_at=self._opened_at,
                half_open_calls=self._half_open_calls,
            )

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.kernel_id!r}, state={self._state.name}, failures={self._failures})"


class CircuitBreakerManager:
    """One breaker per kernel id, created on first use with the default (or a per-kernel) config.

    ``get_circuit`` is a plain dict read when the breaker exists (``existing`` is that read alone);
    creation is locked. Listeners ``fn(kernel_id, old, new)`` attach to every breaker, existing and future."""

    def __init__(
        self,
        default_config: CircuitBreakerConfig | None = None,
        clock: Clock = time.monotonic,
        configs: dict[str, CircuitBreakerConfig] | None = None,
    ) -> None:
        self.default_config = default_config or CircuitBreakerConfig()
        self._clock = clock
        self._configs: dict[str, CircuitBreakerConfig] = dict(configs or {})
        self._circuits: dict[str, CircuitBreaker] = {}
        #: The breaker if created, else None: a C-level dict read, the runner's per-call lookup.
        self.existing: Callable[[str], CircuitBreaker | None] = self._circuits.get
        self._listeners: list[ManagerListener] = []
        self._lock = threading.Lock()

    @classmethod
    def from_dispatch_config(cls, config: Any, clock: Clock = time.monotonic) -> "CircuitBreakerManager":
        return cls(CircuitBreakerConfig.from_dispatch_config(config), clock=clock)

    def get_circuit(self, kernel_id: str) -> CircuitBreaker:
        c = self._circuits.get(kernel_id)
        if c is not None:
            return c
        with self._lock:
            c = self._circuits.get(kernel_id)
            if c is None:
                c = CircuitBreaker(kernel_id, self._configs.get(kernel_id, self.default_config), self._clock)
                for listener in self._listeners:
                    c.add_listener(_bind(listener, kernel_id))
                self._circuits[kernel_id] = c
        return c

    def allow_request(self, kernel_id: str) -> bool:
        """Fast check for the executor: a kernel with no breaker yet, or a CLOSED one, is allowed."""
        c = self._circuits.get(kernel_id)
        if c is None or c.healthy:
            return True
        return c.allow_request()

    def is_open(self, kernel_id: str) -> bool:
        """Whether the kernel is currently rejected (OPEN with its cooldown still running). Does not
        consume a HALF_OPEN trial slot."""
        c = self._circuits.get(kernel_id)
        if c is None or c.is_closed:
            return False
        return c.state is CircuitState.OPEN

    def configure(self, kernel_id: str, config: CircuitBreakerConfig) -> None:
        """Give one kernel its own thresholds (applies to a breaker created later, or replaces the
        existing breaker's config; its state is kept)."""
        with self._lock:
            self._configs[kernel_id] = config
            c = self._circuits.get(kernel_id)
            if c is not None:
                c.config = config

    def add_listener(self, listener: ManagerListener) -> None:
        with self._lock:
            self._listeners.append(listener)
            circuits = list(self._circuits.items())
        for kid, c in circuits:
            c.add_listener(_bind(listener, kid))

    def get_all_stats(self) -> dict[str, CircuitStats]:
        return {kid: c.stats() for kid, c in list(self._circuits.items())}

    def open_circuits(self) -> list[str]:
        return [kid for kid, c in list(self._circuits.items()) if not c.is_closed]

    def reset_circuit(self, kernel_id: str) -> None:
        c = self._circuits.get(kernel_id)
        if c is not None:
            c.reset()

    def reset_all(self) -> None:
        for c in list(self._circuits.values()):
            c.reset()

    def __contains__(self, kernel_id: object) -> bool:
        return kernel_id in self._circuits

    def __len__(self) -> int:
        return len(self._circuits)

    def __repr__(self) -> str:
        return f"CircuitBreakerManager({len(self._circuits)} circuits, open={self.open_circuits()})"


@dataclass(frozen=True)
class _Bound:
    listener: ManagerListener
    kernel_id: str = field(default="")

    def __call__(self, old: CircuitState, new: CircuitState) -> Any:
        return self.listener(self.kernel_id, old, new)


def _bind(listener: ManagerListener, kernel_id: str) -> StateListener:
    return _Bound(listener, kernel_id)
