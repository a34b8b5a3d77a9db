"""The `itel-dagster` command: the local stack (broker, simulators, publisher, `up`)."""

from __future__ import annotations

import click

from itel_dagster.cli.bench_command import bench
from itel_dagster.cli.breaker_command import breaker
from itel_dagster.cli.chaos_command import chaos
from itel_dagster.cli.kafka_commands import kafka
from itel_dagster.cli.lag_command import lag
from itel_dagster.cli.metrics_command import metrics
from itel_dagster.cli.publish_command import publish
from itel_dagster.cli.query_command import query
from itel_dagster.cli.recovery_commands import skip, stuck
from itel_dagster.cli.simulator_commands import simulators
from itel_dagster.cli.up_command import up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """itel-dagster: ClaimX task events -> Delta Lake and the iTel Cabinet API, on Dagster."""


main.add_command(kafka)
main.add_command(simulators)
main.add_command(publish)
main.add_command(up)
main.add_command(lag)
main.add_command(metrics)
main.add_command(bench)
main.add_command(chaos)
main.add_command(breaker)
main.add_command(stuck)
main.add_command(skip)
main.add_command(query)
