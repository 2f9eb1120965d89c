"""What every ``layerzero`` command shares: output helpers and the checks that turn bad input into one line.

A user who types ``--dtype bfloat`` or ``--device gpu`` must get ``error: ...`` naming the option, the
value and what to type instead (a did-you-mean when one is close), exit code 2, and never a traceback
from deep inside torch. The checks here run before any work starts, so they are also cheaper than
failing half-way through a benchmark.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sys
from typing import Any, Iterable, NoReturn, Sequence

import typer
from rich.console import Console

EXIT_PROBLEM = 1
EXIT_USAGE = 2

# Floating dtypes the kernels serve, with the spellings users type (torch's own names included).
DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
DTYPE_SPELLINGS: dict[str, str] = {
    "float16": "float16", "fp16": "float16", "half": "float16", "f16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
    "float64": "float64", "fp64": "float64", "double": "float64", "f64": "float64",
}
# Device words people type that torch does not know, and what they most likely meant.
DEVICE_HINTS: dict[str, str] = {"gpu": "cuda", "nvidia": "cuda", "cuda0": "cuda:0", "cuda1": "cuda:1"}
DEVICE_KINDS: tuple[str, ...] = ("cpu", "cuda")


class UsageProblem(Exception):
    """Bad input found by a check; the message is the whole user-facing line (without ``error:``)."""


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise (``raise fail(...)``)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def usage(message: str) -> NoReturn:
    """Stop with a one-line usage error (exit 2)."""
    raise fail(message)


def did_you_mean(value: str, choices: Iterable[str], n: int = 1) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string when none is close."""
    choices = list(choices)
    # A prefix ("bfloat" for "bfloat16") is the likeliest intent; then spelling distance.
    matches = [c for c in choices if value and c.startswith(value)][:n]
    matches = matches or difflib.get_close_matches(value, choices, n=n, cutoff=0.6)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"


def check_dtype(option: str, value: str | None) -> str | None:
    """Canonical dtype name for ``value`` (aliases such as bf16 accepted), or a usage error."""
    if value is None:
        return None
    name = value.strip().lower().removeprefix("torch.")
    if name in DTYPE_SPELLINGS:
        return DTYPE_SPELLINGS[name]
    hint = did_you_mean(name, DTYPE_SPELLINGS)
    why = " (kernels serve floating-point tensors only)" if re.fullmatch(r"u?int\d+|bool|complex\d*", name) else ""
    usage(f"{option} {value!r} is not a supported dtype{why}{hint}; use one of {', '.join(DTYPES)} "
          "(or fp16, bf16, fp32, fp64)")


def check_device(option: str, value: str | None, *, need_present: bool) -> str | None:
    """``value`` as ``cpu``, ``cuda`` or ``cuda:N``, or a usage error. ``need_present``: the command runs
    kernels there, so a CUDA device must exist (``explain`` only reasons about one and does not need it)."""
    if value is None:
        return None
    dev = value.strip().lower()
    kind, _, index = dev.partition(":")
    if kind not in DEVICE_KINDS or (index and not index.isdigit()) or dev.endswith(":"):
        if kind in DEVICE_HINTS:
            hint = f" (did you mean {DEVICE_HINTS[kind]!r}?)"
        elif kind in ("mps", "xpu", "hip", "rocm", "npu", "tpu", "xla", "meta"):
            hint = " (LayerZero's kernels run on CPU and CUDA devices only; ROCm devices are cuda in torch)"
        else:
            hint = did_you_mean(kind, DEVICE_KINDS)
        usage(f"{option} {value!r} is not a device LayerZero can use{hint}; use cpu, cuda or cuda:N")
    if need_present and kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            usage(f"{option} {value}: no CUDA device here (torch.cuda.is_available() is False); use {option} cpu")
        if index and int(index) >= torch.cuda.device_count():
            usage(f"{option} {value}: this machine has {torch.cuda.device_count()} CUDA device(s); use an index "
                  f"below {torch.cuda.device_count()}")
    return dev


def check_positive(values: dict[str, int | None]) -> None:
    """Every given size is at least 1 (one error naming every offending option)."""
    bad = [f"{name} {v}" for name, v in values.items() if v is not None and v < 1]
    if bad:
        usage(f"{', '.join(bad)}: sizes must be at least 1")


def check_operation(option: str, value: str, *, globs: bool) -> list[str]:
    """The operations ``value`` names (a glob when ``globs``), or a usage error with a did-you-mean."""
    from layerzero.operations import OPERATIONS, expand

    ops = expand(value) if globs else ([value] if value in OPERATIONS else [])
    if ops:
        return list(ops)
    hint = did_you_mean(value, OPERATIONS)
    usage(f"{option} {value!r} is not an operation{hint}; use one of {', '.join(OPERATIONS)}"
          + (" (globs allowed)" if globs else ""))


def check_kernels(option: str, values: Sequence[str], registry: Any) -> None:
    """Every kernel id or alias is registered, or a usage error with a did-you-mean."""
    known = sorted({s.kernel_id for s in registry.all()} | {a for s in registry.all() for a in s.aliases})
    for value in values:
        try:
            registry.get(value)
        except KeyError:
            hint = did_you_mean(value, known)
            usage(f"{option} {value!r} is not a registered kernel{hint}; `layerzero kernels` lists them")


def check_choice(option: str, value: str | None, choices: Sequence[str]) -> None:
    if value is not None and value not in choices:
        usage(f"{option} {value!r}: use {' or '.join(choices)}{did_you_mean(value, choices)}")


# ---------------------------------------------------------------------------------------------- output
def console() -> Console:
    """A console for tables. Tables are wide (kernel ids, reasons): when output is not a terminal (pipes,
    CliRunner, CI logs) use a wide fixed width so ids are never cut or folded."""
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 200
    return Console(width=width, highlight=False, soft_wrap=False)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=json_default))


def json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def clean_nans(value: Any) -> Any:
    """JSON has no NaN: missing measurements become null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: clean_nans(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_nans(v) for v in value]
    return value


def yes_no(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"


def esc(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text)) if text is not None else ""


def num(value: Any, fmt: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{fmt}}{suffix}"


def print_problems(problems: Iterable[Any]) -> None:
    for p in problems:
        typer.echo(f"  {p.field}: {p.message} (got {p.value!r})", err=True)


def load_policy_or_exit(path: Any) -> tuple[Any, str]:
    """The policy from ``--policy``, else ``$LAYERZERO_POLICY``, else the shipped default, and its label;
    an invalid or missing file is a usage error listing each problem."""
    from layerzero.errors import ConfigValidationError
    from layerzero.policy import default_policy_path, load_policy

    source = str(path) if path is not None else os.environ.get("LAYERZERO_POLICY") or default_policy_path()
    if source is None:
        from layerzero.policy import Policy

        return Policy.empty(), "(built-in priorities)"
    try:
        return load_policy(str(source)), str(source)
    except ConfigValidationError as e:
        print_problems(e.problems)
        raise fail(f"policy {source} is invalid ({len(e.problems)} problem(s)); run `layerzero validate "
                   f"{source}`") from None
