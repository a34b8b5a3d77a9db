"""`itel-dagster up`: the whole local stack in the foreground, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal

import click

from itel_dagster.devstack.stack import LocalStack, StackOptions
from itel_dagster.settings.kafka import default_partitions


@click.command()
@click.option("--dagster-port", type=int, default=3000, show_default=True,
              help="Port of the Dagster UI (dagster dev).")
@click.option("--claimx-port", type=int, default=8081, show_default=True,
              help="Port of the ClaimX simulator (a free one if taken).")
@click.option("--itel-port", type=int, default=8082, show_default=True,
              help="Port of the iTel Cabinet simulator (a free one if taken).")
@click.option("--kafka-port", type=int, default=None,
              help="Port of the local broker (default 9092 if free). Ignored with "
                   "KAFKA_BOOTSTRAP_SERVERS set.")
@click.option("--demo-rate", type=float, default=1.0, show_default=True,
              help="Demo events per second published while the stack runs (0: none).")
@click.option("--demo-backlog", type=int, default=300, show_default=True,
              help="Demo events published at start, spread over the last 3 days (0: none).")
@click.option("--upstream-rate", type=float, default=1.0, show_default=True,
              help="Upstream ClaimX task events per second for the plugin trigger, which "
                   "forwards task 32513's to the workers' topic (0: none).")
@click.option("--bad-fraction", type=float, default=0.02, show_default=True,
              help="Fraction of demo records that are bad (they go to the error topics).")
@click.option("--keep-kafka", is_flag=True,
              help="Leave the local broker running when the stack stops.")
@click.option("--no-dagster", is_flag=True, help="Start everything except `dagster dev`.")
def up(dagster_port, claimx_port, itel_port, kafka_port, demo_rate, demo_backlog, upstream_rate,
       bad_fraction, keep_kafka, no_dagster) -> None:
    """Start Kafka, the ClaimX and iTel simulators, demo events and `dagster dev`.

    State lives in ./var (ITEL_STATE_DIR), Delta tables in ./data/delta (ITEL_DELTA_ROOT).
    Ctrl-C stops everything this command started.
    """
    options = StackOptions(
        dagster_port=dagster_port, claimx_port=claimx_port, itel_port=itel_port,
        kafka_port=kafka_port, partitions=default_partitions(), demo_rate=demo_rate,
        demo_backlog=demo_backlog, upstream_rate=upstream_rate, bad_fraction=bad_fraction,
        run_dagster=not no_dagster,
        stop_kafka_on_exit=not keep_kafka,
    )
    stack = LocalStack(options)

    def on_term(signum, frame):  # SIGTERM takes the same clean path as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        stack.start(say=click.echo)
        click.echo("stack is up; Ctrl-C stops it")
        code = stack.wait()
        click.echo(f"a stack process exited with code {code}; stopping the rest")
    except KeyboardInterrupt:
        click.echo("stopping the stack")
    finally:
        stack.stop()
    raise SystemExit(code)
