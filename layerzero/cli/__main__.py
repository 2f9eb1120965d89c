"""``python -m layerzero.cli``: the ``layerzero`` command without the console script installed."""

from layerzero.cli import main

if __name__ == "__main__":
    main()
