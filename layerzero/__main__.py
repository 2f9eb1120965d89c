"""``python -m layerzero``: the ``layerzero`` command without the console script on PATH."""

from layerzero.cli import main

if __name__ == "__main__":
    main()
