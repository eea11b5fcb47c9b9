"""``python -m cube`` is the ``cube`` command."""

from cube.cli.main import main

main()
