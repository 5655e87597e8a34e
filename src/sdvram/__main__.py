"""``python -m sdvram``: the same entry point as the ``sdvram`` console script."""

from sdvram.cli import main

main()
