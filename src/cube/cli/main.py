"""The ``cube`` command."""

from __future__ import annotations

import importlib

import click

#: Command name -> "module:attribute". Loaded on first use, so `cube status` does not pay
#: for importing the servers (FastAPI, uvicorn) that only the agent commands need.
COMMANDS = {
    "manager": "cube.cli.agents:manager_command",
    "worker": "cube.cli.agents:worker_command",
    "dev": "cube.cli.agents:dev_command",
    "run": "cube.cli.run:run_command",
    "status": "cube.cli.tasks:status_command",
    "logs": "cube.cli.tasks:logs_command",
    "stop": "cube.cli.tasks:stop_command",
    "exec": "cube.cli.exec:exec_command",
    "nodes": "cube.cli.nodes:nodes_group",
    "top": "cube.cli.top:top_command",
    "job": "cube.cli.jobs:job_group",
    "alloc": "cube.cli.allocs:alloc_group",
    "sim-fleet": "cube.cli.sim:sim_fleet_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when called (or listed by --help)."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attr = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Click suggests a near name from ``self.commands``, which holds none of the lazy
        ones: without this, ``cube stauts`` got no ``Did you mean 'status'?``."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:
            known = self.list_commands(ctx)
            name = e.command_name
            raise click.exceptions.NoSuchCommand(name, possibilities=known, ctx=ctx) from None


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="cube")
def cli() -> None:
    """Cube: a small container orchestrator.

    \b
    Example:
      cube dev                              # a one-node cluster on this machine
      ID=$(cube run examples/web.yaml --wait)
      cube status $ID
      cube logs -f $ID
      cube stop $ID
      cube nodes
      cube top                              # nodes, jobs and tasks, refreshed in place

    Commands that talk to the manager take --manager URL (or CUBE_ADDR) and
    --token (or CUBE_TOKEN; found by itself next to a local manager).
    """


def main() -> None:
    cli()
