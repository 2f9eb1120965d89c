"""The ``layerzero`` command-line tool (``pip install "layerzero-dispatch[cli]"``: typer + rich).

Importing this package is cheap and needs neither typer nor rich; they load when :func:`main` runs. The
measurement code it shares with ``layerzero_hf.compare`` lives in :mod:`layerzero.tuning.kernel_compare`.
"""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``layerzero`` console script, ``python -m layerzero`` and ``python -m layerzero.cli``."""
    try:
        from layerzero.cli.app import main as run
    except ImportError as e:  # typer/rich missing
        raise SystemExit(f"error: the layerzero command needs typer and rich: pip install "
                         f"'layerzero-dispatch[cli]' ({e})") from None
    run(argv)


__all__ = ["main"]
