"""The `itel-dagster` command: the local stack (broker, simulators, publisher, `up`).

A subcommand's module is imported when that subcommand runs (click's lazy-loading pattern): most
of them import Dagster, polars or deltalake, about 1.5 s of CPU, which `kafka start`,
`simulators run` or `publish` never need. `itel-dagster --help` imports them all.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of the click command
SUBCOMMANDS = {
    "kafka": "itel_dagster.cli.kafka_commands:kafka",
    "simulators": "itel_dagster.cli.simulator_commands:simulators",
    "publish": "itel_dagster.cli.publish_command:publish",
    "up": "itel_dagster.cli.up_command:up",
    "lag": "itel_dagster.cli.lag_command:lag",
    "metrics": "itel_dagster.cli.metrics_command:metrics",
    "bench": "itel_dagster.cli.bench_command:bench",
    "chaos": "itel_dagster.cli.chaos_command:chaos",
    "breaker": "itel_dagster.cli.breaker_command:breaker",
    "stuck": "itel_dagster.cli.recovery_commands:stuck",
    "skip": "itel_dagster.cli.recovery_commands:skip",
    "query": "itel_dagster.cli.query_command:query",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported by name, on first use."""

    def __init__(self, *args, lazy_subcommands: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands and cmd_name not in self.commands:
            module, attribute = self.lazy_subcommands[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy_subcommands[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy_subcommands=SUBCOMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """itel-dagster: ClaimX task events -> Delta Lake and the iTel Cabinet API, on Dagster."""
