"""The ``layerzero`` command: doctor, kernels, explain, validate, bench, tune.

Every command prints a readable rich table by default and machine-readable JSON with ``--json`` (bench
and tune also write files with ``--out``). Exit codes: 0 success; 1 the command ran but found a problem
(invalid policy, no kernel can run the described call, a broken configuration); 2 bad arguments or
unreadable input files. Errors are one line, ``error: ...`` with the option, the value and what to do,
never a traceback (``LAYERZERO_DEBUG=1`` shows the traceback of an unexpected failure).

Each command lives in its own module (:mod:`~layerzero.cli.info`, :mod:`~layerzero.cli.explain`,
:mod:`~layerzero.cli.validate`, :mod:`~layerzero.cli.bench`); this module assembles them.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, Optional, Sequence

import typer

from layerzero.cli.bench import bench
from layerzero.cli.common import EXIT_PROBLEM, EXIT_USAGE
from layerzero.cli.explain import explain
from layerzero.cli.info import doctor, kernels
from layerzero.cli.tune import tune_app
from layerzero.cli.validate import validate

DISTRIBUTION = "layerzero-dispatch"

app = typer.Typer(
    name="layerzero",
    help="LayerZero: see which kernel runs each operation on this machine, and why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def version_line() -> str:
    """``layerzero X (distribution layerzero-dispatch), torch Y, python Z``. Read from package metadata:
    importing torch would make ``--version`` take seconds."""
    from importlib.metadata import PackageNotFoundError, version

    import layerzero

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return (f"layerzero {layerzero.__version__} (distribution {DISTRIBUTION}), torch {torch_version}, "
            f"python {sys.version.split()[0]}")


def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """LayerZero: see which kernel runs each operation on this machine, and why."""


app.command()(doctor)
app.command()(kernels)
app.command()(explain)
app.command()(validate)
app.command()(bench)
app.add_typer(tune_app)


# Typer raises the usage errors of the click it is built on (recent releases vendor their own copy):
# take the exception classes from where typer.BadParameter lives rather than from a separate click.
_errors = sys.modules[typer.BadParameter.__module__]


def _usage_hint(error: Any) -> str:
    ctx = error.ctx
    path = ctx.command_path if ctx is not None else "layerzero"
    return f"see `{path} --help`"


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit code. Click's usage
    errors (an unknown option, a value of the wrong type) become one ``error:`` line plus a hint instead of
    a framed panel, and an unexpected exception one line instead of a traceback."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = command.main(args=args, prog_name="layerzero", standalone_mode=False)
    except _errors.NoSuchOption as e:
        hint = f" (did you mean {' or '.join(e.possibilities)}?)" if e.possibilities else ""
        typer.echo(f"error: no such option {e.option_name}{hint}; {_usage_hint(e)}", err=True)
        return EXIT_USAGE
    except _errors.UsageError as e:
        message = e.format_message().rstrip(".")  # click already adds "Did you mean ...?" to unknown commands
        typer.echo(f"error: {message}; {_usage_hint(e)}", err=True)
        return EXIT_USAGE
    except _errors.ClickException as e:  # e.g. an unreadable file argument
        typer.echo(f"error: {e.format_message()}", err=True)
        return EXIT_USAGE
    except _errors.Abort:
        typer.echo("aborted", err=True)
        return 130
    except _errors.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - the last resort: a one-line report, traceback on request
        if os.environ.get("LAYERZERO_DEBUG"):
            raise
        typer.echo(f"error: {type(e).__name__}: {e} (unexpected; rerun with LAYERZERO_DEBUG=1 for the traceback "
                   "and report it)", err=True)
        return EXIT_PROBLEM
    return rv if isinstance(rv, int) else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``layerzero = "layerzero.cli:main"``): exits with :func:`run`'s code."""
    raise SystemExit(run(argv))
