"""Error hierarchy.

Every error a user can meet derives from :class:`LayerZeroError`, so a server can catch one type at its
boundary. Errors carry structured data (candidates and reasons, attempts, validation problems) so callers
and the CLI can render them without parsing messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


def _clip(value: Any, limit: int = 200) -> str:
    """repr() of a value for an error message, cut to ``limit`` characters (a YAML alias expansion or a huge
    config value must not turn one message into megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} chars)"


def describe_failure(exc: BaseException | str | None, limit: int = 500) -> str | None:
    """``"TypeError: ..."`` for an exception (a string as it is), cut to ``limit`` characters: the form in
    which telemetry and circuit breakers keep a kernel's last failure, bounded so a kernel that raises
    with a huge message cannot grow every snapshot."""
    if exc is None:
        return None
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LayerZeroError(Exception):
    """Base class of every LayerZero error."""


class KernelNotFoundError(LayerZeroError, KeyError):
    """A kernel id or alias that the registry does not know."""

    def __init__(self, kernel_id: str, known: Sequence[str] = ()):
        self.kernel_id = kernel_id
        self.known = tuple(known)
        hint = ""
        if known:
            import difflib

            close = difflib.get_close_matches(kernel_id, list(known), n=3)
            if close:
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?"
        super().__init__(f"unknown kernel {kernel_id!r}{hint}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class NoKernelAvailableError(LayerZeroError):
    """No candidate can run this call. Lists every candidate with the reason it was rejected."""

    def __init__(self, operation: str, rejections: Sequence[tuple[str, Sequence[str]]], context: Any = None):
        self.operation = operation
        self.rejections = tuple((kid, tuple(reasons)) for kid, reasons in rejections)
        self.context = context
        lines = [f"no kernel can run operation {operation!r}"]
        if context is not None:
            lines[0] += f" for {context}"
        if not self.rejections:
            lines.append("  (no kernel is registered for this operation)")
        for kid, reasons in self.rejections:
            lines.append(f"  - {kid}: {'; '.join(reasons) or 'rejected'}")
        lines.append("Fix: relax the policy (locks/denies/allows), install a backend, or register a kernel.")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ValidationProblem:
    """One problem in a config: where (file, dotted field path), what value, what is wrong and the fix."""

    field: str
    value: Any
    message: str
    source: str | None = None

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.field}: {self.message} (got {_clip(self.value)})"


class ConfigValidationError(LayerZeroError, ValueError):
    """A policy or patch config is invalid. Holds every problem found, not just the first."""

    def __init__(self, problems: Sequence[ValidationProblem], source: str | None = None):
        self.problems = tuple(problems)
        self.source = source
        head = f"invalid config{f' {source}' if source else ''}: {len(self.problems)} problem(s)"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}\n{body}")


class InvalidInputError(LayerZeroError, ValueError):
    """A call's inputs or options are wrong: the caller's mistake, raised before any kernel runs (or when a
    kernel's failure turns out to be the input's fault). Never counted against a kernel's circuit breaker.

    ``problems`` holds ``(argument, value, message-with-fix)`` tuples, every one found."""

    def __init__(self, operation: Any, problems: Sequence[tuple[str, Any, str]], cause: BaseException | None = None):
        self.operation = operation
        self.problems = tuple(problems)
        self.cause = cause
        lines = [f"invalid call of {operation!r}:"]
        lines += [f"  - {arg}={value!r}: {msg}" for arg, value, msg in self.problems]
        if cause is not None:
            lines.append(f"  (the fp32 reference rejects this input too: {type(cause).__name__}: {cause})")
        super().__init__("\n".join(lines))


class KernelExecutionError(LayerZeroError):
    """A kernel raised, or its output failed the output check."""

    def __init__(self, kernel_id: str, cause: BaseException | str):
        self.kernel_id = kernel_id
        self.cause = cause
        super().__init__(f"kernel {kernel_id!r} failed: {cause}")


class CircuitOpenError(LayerZeroError):
    """Every candidate kernel's circuit breaker is open."""

    def __init__(self, operation: str, kernel_ids: Sequence[str]):
        self.operation = operation
        self.kernel_ids = tuple(kernel_ids)
        super().__init__(
            f"all circuits open for {operation!r}: {', '.join(self.kernel_ids) or '(none)'}; "
            "they close again after their cooldown, or reset them with CircuitBreakerManager.reset_all()"
        )


class FallbackChainExhaustedError(LayerZeroError):
    """Every kernel in the fallback chain failed. `attempts` holds (kernel_id, exception) in call order."""

    def __init__(self, operation: str, attempts: Sequence[tuple[str, BaseException]]):
        self.operation = operation
        self.attempts = tuple(attempts)
        detail = "; ".join(f"{kid}: {type(e).__name__}: {e}" for kid, e in self.attempts)
        super().__init__(f"all fallbacks failed for {operation!r}: {detail}")


class DispatcherFrozenError(LayerZeroError):
    """A frozen static registry was modified."""


class PatchError(LayerZeroError):
    """A model could not be patched as asked."""
