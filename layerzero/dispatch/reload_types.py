"""What a policy file source produces and checks: versions, reload statistics, parsing and the dry run.

Kept apart from :mod:`layerzero.dispatch.policy_source` (the reload machinery) so the records a caller
inspects and the checks a content must pass can be read on their own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layerzero.config_files import DOCUMENT
from layerzero.errors import ConfigValidationError, LayerZeroError, ValidationProblem

if TYPE_CHECKING:
    from layerzero.policy import Policy
    from layerzero.registry import KernelRegistry
    from layerzero.selection.engine import SelectionEngine

__all__ = ["ConfigVersion", "ReloadStats", "parse_policy_bytes", "problem_error", "validate_policy"]

log = logging.getLogger("layerzero.hot_reload")



@dataclass(frozen=True)
class ConfigVersion:
    """One good content of the config file. ``version`` counts up from 1 (the initial load);
    ``config_hash`` is the policy's sha256; ``warnings`` are facts found by the pre-swap validation
    that did not block it (e.g. a lock to a kernel that cannot run on this machine)."""

    version: int
    config_hash: str
    loaded_at: float
    source: str | None
    policy: "Policy" = field(repr=False)
    warnings: tuple[str, ...] = ()
    origin: str = "file"  # "file", "rollback", "set_policy"


@dataclass(frozen=True)
class ReloadStats:
    """``total_reloads`` counts successful reloads after the initial load (rollbacks included);
    ``failed_reloads`` counts rejected contents, once per distinct content."""

    total_reloads: int = 0
    failed_reloads: int = 0
    last_reload_time_ms: float | None = None
    current_version: int = 0
    rollbacks: int = 0
    last_error: str | None = None
    last_grace_wait_ms: float | None = None
    in_flight_at_last_swap: int = 0


def problem_error(source: str | None, field_name: str, value: Any, message: str) -> ConfigValidationError:
    return ConfigValidationError([ValidationProblem(field_name, value, message, source)], source=source)


def parse_policy_bytes(path: str, data: bytes | None, error: OSError | None,
                       registry: "KernelRegistry") -> "Policy":
    """The policy in a file's bytes, or a ConfigValidationError naming what is wrong (unreadable, not
    UTF-8, a bad field). Parses exactly the bytes that were hashed, never a fresh read."""
    from layerzero.policy import parse_policy_text

    if data is None:
        what = "file not found" if isinstance(error, FileNotFoundError) else f"cannot read it ({error})"
        raise problem_error(path, DOCUMENT, path, f"{what}; fix: check config_path (the last good policy keeps serving)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise problem_error(path, DOCUMENT, f"byte {e.start}",
                            "the file is not UTF-8 text; fix: save the policy as UTF-8 YAML") from None
    return parse_policy_text(text, source=path, registry=registry)


def _default_device() -> str:
    """The device the dry run checks locks against: where this process most likely runs kernels."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "cpu"


def validate_policy(path: str, engine: "SelectionEngine", policy: "Policy") -> tuple[str, ...]:
    """Dry-run selection (on this machine's default device) for every operation the policy locks or
    chains, before it serves traffic. A selection that raises rejects the policy; notes (a lock that
    cannot take effect here) become the version's warnings."""
    from layerzero.context.call_context import SelectionContext
    from layerzero.operations import expand

    ops: list[str] = []
    for pattern in (*policy.locks, *policy.fallback_chains):
        for op in expand(pattern):
            if op not in ops:
                ops.append(op)
    warnings: list[str] = []
    device = _default_device()
    for op in ops:
        try:
            exp = engine.explain(op, SelectionContext(operation=op, device=device))
        except LayerZeroError:
            raise
        except Exception as e:  # noqa: BLE001
            raise problem_error(path, DOCUMENT, op, f"selection for {op!r} fails under this policy: "
                                f"{type(e).__name__}: {e}; fix: check its locks and chains") from e
        for note in exp.notes:
            warnings.append(f"{op}: {note}")
        if exp.chosen is None:
            warnings.append(f"{op}: no kernel can run it on this machine under this policy")
    return tuple(warnings)
