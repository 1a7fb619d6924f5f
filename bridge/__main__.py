"""``python -m bridge`` is ``ktb``."""

from bridge.cli import main

main()
