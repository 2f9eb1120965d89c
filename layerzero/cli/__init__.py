"""The ``layerzero`` command-line tool (``pip install layerzero[cli]``: typer + rich).

Importing this package is cheap and needs neither typer nor rich; they load when :func:`main` runs. The
measurement code it shares with ``layerzero_hf.compare`` lives in :mod:`layerzero.tuning.kernel_compare`.
"""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``layerzero`` console script."""
    try:
        from layerzero.cli.app import main as run
    except ImportError as e:  # typer/rich missing
        raise SystemExit(f"layerzero CLI needs typer and rich: pip install 'layerzero[cli]' ({e})") from None
    run()


__all__ = ["main"]
