"""``python -m bridge`` is ``ktb``."""

from bridge.cli.main import main

main()
