"""``python -m landscape``: the same command as ``landscape``."""

from landscape.cli import main

main()
