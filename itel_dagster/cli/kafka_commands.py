"""`itel-dagster kafka start|stop|status|topics`: the local broker of the dev stack."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from itel_dagster.devstack.kafka.broker import LocalKafkaBroker
from itel_dagster.devstack.kafka.classpath import KafkaSetupError
from itel_dagster.devstack.kafka.topics import ensure_topics, pipeline_topics
from itel_dagster.kafka.client_config import client_config
from itel_dagster.settings.kafka import default_partitions
from itel_dagster.settings.workers import load_workers

_home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the broker's data, pid and log (default: <ITEL_STATE_DIR or ./var>/kafka).",
)


def _existing_cluster() -> str | None:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or None


def _create_topics(bootstrap: str, partitions: int) -> None:
    created = ensure_topics(bootstrap, pipeline_topics(load_workers()), partitions=partitions)
    for name, was_created in created.items():
        click.echo(f"  topic {name}: {'created' if was_created else 'exists'}")


def _print_exports(broker: LocalKafkaBroker) -> None:
    """The variables a client of the secure broker needs; the password is read from its file,
    never printed."""
    click.echo("SASL_SSL listener; export these in the shells that run the pipeline:")
    for name, value in (broker.status().client_env or {}).items():
        click.echo(f"  export {name}={value}")
    click.echo(f'  export KAFKA_SASL_PASSWORD="$(cat {broker.password_file})"')


@click.group()
def kafka() -> None:
    """Run the local Apache Kafka broker (single node, KRaft) and create the pipeline topics."""


@kafka.command()
@_home_option
@click.option("--port", type=int, default=None,
              help="Listener port (default 9092 if free, else any free loopback port).")
@click.option("--partitions", type=int, default=None,
              help="Partitions of topics it creates (default ITEL_KAFKA_PARTITIONS or 3).")
@click.option("--secure", is_flag=True, default=False,
              help="Clients connect over SASL_SSL (SCRAM-SHA-512 over TLS); prints the variables "
                   "to export. Takes effect when the broker's home is first formatted.")
def start(home: Path | None, port: int | None, partitions: int | None, secure: bool) -> None:
    """Start the broker (if not running), wait until it answers, create the topics.

    With KAFKA_BOOTSTRAP_SERVERS set, nothing is started: the topics are created there.
    """
    partitions = partitions or default_partitions()
    existing = _existing_cluster()
    try:
        if existing:
            click.echo(f"KAFKA_BOOTSTRAP_SERVERS={existing}: using that cluster, nothing started")
            bootstrap = existing
        else:
            broker = LocalKafkaBroker(home, port=port, partitions=partitions, secure=secure)
            already = broker.status()
            began = time.monotonic()
            status = already or broker.start()
            state = "already running" if already else (
                f"started in {time.monotonic() - began:.1f} s"
            )
            click.echo(
                f"Kafka broker at {status.bootstrap_servers}: {state} "
                f"(pid {status.pid}, log {status.log_file})"
            )
            bootstrap = status.bootstrap_servers
            if secure and not status.client_env:
                click.echo("this broker's home was made without --secure: it stays PLAINTEXT "
                           "(stop it and start with another --home for a secure one)")
            if status.client_env:
                _print_exports(broker)
                os.environ.update(broker.client_env())  # this process creates the topics with them
        _create_topics(bootstrap, partitions)
    except KafkaSetupError as exc:
        raise click.ClickException(str(exc)) from None


@kafka.command()
@_home_option
def stop(home: Path | None) -> None:
    """Stop the local broker (its data is kept for the next start)."""
    if _existing_cluster():
        click.echo("KAFKA_BOOTSTRAP_SERVERS is set: that cluster is not ours to stop")
        return
    stopped = LocalKafkaBroker(home).stop()
    click.echo("Kafka broker stopped" if stopped else "Kafka broker was not running")


@kafka.command()
@_home_option
def status(home: Path | None) -> None:
    """Report whether the broker is running, where, and its topics. Exit code 1 if not."""
    from confluent_kafka.admin import AdminClient

    existing = _existing_cluster()
    if existing:
        bootstrap = existing
        click.echo(f"cluster from KAFKA_BOOTSTRAP_SERVERS: {existing}")
    else:
        running = LocalKafkaBroker(home).status()
        if running is None:
            click.echo("Kafka broker: not running")
            raise SystemExit(1)
        bootstrap = running.bootstrap_servers
        uptime = time.time() - running.started_at
        click.echo(
            f"Kafka broker: running at {bootstrap} (pid {running.pid}, up {uptime:.0f} s, "
            f"home {running.home})"
        )
    try:
        metadata = AdminClient(client_config(bootstrap)).list_topics(timeout=10)
    except Exception as exc:  # noqa: BLE001 - report any client failure as "not answering"
        click.echo(f"  not answering: {exc}")
        raise SystemExit(1) from None
    for name in sorted(t for t in metadata.topics if not t.startswith("__")):
        click.echo(f"  topic {name}: {len(metadata.topics[name].partitions)} partitions")


@kafka.command()
@click.option("--partitions", type=int, default=None,
              help="Partitions of topics it creates (default ITEL_KAFKA_PARTITIONS or 3).")
def topics(partitions: int | None) -> None:
    """Create the input and the four success/error topics where missing (idempotent)."""
    from itel_dagster.devstack.kafka.broker import configured_or_local_bootstrap_servers

    try:
        _create_topics(configured_or_local_bootstrap_servers(), partitions or default_partitions())
    except KafkaSetupError as exc:
        raise click.ClickException(str(exc)) from None
