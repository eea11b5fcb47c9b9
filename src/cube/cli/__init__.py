"""The ``cube`` command-line interface."""
