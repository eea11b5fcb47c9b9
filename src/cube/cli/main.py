"""The ``cube`` command."""

from __future__ import annotations

import click

from cube.cli.agents import dev_command, manager_command, worker_command
from cube.cli.nodes import nodes_group
from cube.cli.run import run_command
from cube.cli.tasks import logs_command, status_command, stop_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cube")
def cli() -> None:
    """Cube: a small container orchestrator.

    \b
    Example:
      cube worker --name w1 --port 5556
      ID=$(cube run examples/web.yaml --wait)
      cube status $ID
      cube logs -f $ID
      cube stop $ID
      cube nodes

    Commands that talk to the manager take --manager URL (or CUBE_ADDR).
    """


cli.add_command(manager_command)
cli.add_command(worker_command)
cli.add_command(run_command)
cli.add_command(status_command)
cli.add_command(logs_command)
cli.add_command(stop_command)
cli.add_command(nodes_group)
cli.add_command(dev_command)


def main() -> None:
    cli()
