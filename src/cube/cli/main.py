"""The ``cube`` command."""

from __future__ import annotations

import click

from cube.cli.agents import dev_command, manager_command, worker_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cube")
def cli() -> None:
    """Cube: a small container orchestrator.

    \b
    Example:
      cube worker --name w1 --port 5556
    """


cli.add_command(manager_command)
cli.add_command(worker_command)
cli.add_command(dev_command)


def main() -> None:
    cli()
