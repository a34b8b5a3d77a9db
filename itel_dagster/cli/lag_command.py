"""`itel-dagster lag`: each consumer group's committed offset, log end offset and lag per partition,
the figures `kafka-consumer-groups --describe` prints. It only reads offsets, never commits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import click

from itel_dagster.kafka.offsets import PartitionProgress, group_progress
from itel_dagster.settings.workers import WorkerSettings, load_workers

COLUMNS = ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"]


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    current_offset: int | None  # None: the group never committed on this partition
    log_end_offset: int
    lag: int | None  # log_end_offset - current_offset, as Kafka computes it; None without a commit
    log_start_offset: int  # the oldest offset Kafka still holds

    def cells(self) -> list[str]:
        def shown(value: int | None) -> str:
            return "-" if value is None else str(value)

        return [self.group, self.topic, str(self.partition), shown(self.current_offset),
                str(self.log_end_offset), shown(self.lag)]


def lag_rows(group: str, topic: str, progress: list[PartitionProgress]) -> list[LagRow]:
    """Kafka's figures: lag counts from the committed offset even where retention deleted records
    past it, and is unknown ("-") without a commit."""
    return [
        LagRow(group, topic, p.partition, p.committed, p.high,
               None if p.committed is None else p.high - p.committed, p.low)
        for p in sorted(progress, key=lambda p: p.partition)
    ]


def _targets(workers: dict[str, WorkerSettings], group: str | None,
             topic: str | None) -> list[tuple[str, str]]:
    """(group, topic) pairs to describe: the workers' groups on their input topics by default."""
    if group is None:
        return [(w.consumer_group, topic or w.input_topic) for w in workers.values()]
    if topic:
        return [(group, topic)]
    for w in workers.values():
        if w.consumer_group == group:
            return [(group, w.input_topic)]
    known = ", ".join(w.consumer_group for w in workers.values())
    raise click.UsageError(f"group {group!r} is not a worker's group ({known}); name its topic "
                           "with --topic")


def format_table(rows: list[LagRow]) -> str:
    table = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in table
    )


@click.command()
@click.option("--group", default=None,
              help="One consumer group [default: both workers' groups from workers.yaml].")
@click.option("--topic", default=None,
              help="Topic to describe [default: the worker's input topic]; needed for a group "
                   "that is not a worker's.")
@click.option("--bootstrap-servers", default=None,
              help="Kafka address [default: KAFKA_BOOTSTRAP_SERVERS, else the local broker of "
                   "`itel-dagster kafka start`].")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per partition (null where the table shows '-').")
def lag(group, topic, bootstrap_servers, as_json) -> None:
    """Committed offset, log end offset and lag per consumer group and partition.

    The figures of `kafka-consumer-groups --describe --group G`. One difference: partitions the
    group never committed on are listed too, with '-' as current offset and lag (Kafka's tool
    leaves them out while the group has no active members, and the workers never join it).
    """
    from confluent_kafka import KafkaException

    from itel_dagster.devstack.kafka.classpath import KafkaSetupError
    from itel_dagster.devstack.kafka.broker import (
        configured_or_local_bootstrap_servers as configured_servers,
    )

    try:
        servers = bootstrap_servers or configured_servers()
        rows = [
            row
            for g, t in _targets(load_workers(), group, topic)
            for row in lag_rows(g, t, group_progress(servers, g, t))
        ]
    except (KafkaSetupError, KafkaException, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        for row in rows:
            click.echo(json.dumps(asdict(row)))
    else:
        click.echo(format_table(rows))
