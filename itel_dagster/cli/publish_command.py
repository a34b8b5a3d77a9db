"""`itel-dagster publish`: ClaimX task events (and chosen bad records) onto the pipeline's topic.

Command-line wiring only; what is published and how lives in itel_dagster.devstack.publisher.
"""

from __future__ import annotations

import click

from itel_dagster.devstack.publisher.publish import DEFAULT_TOPIC, PublishError, publish_events

_FRACTION = click.FloatRange(0.0, 1.0)


@click.command()
@click.option("--count", type=click.IntRange(min=0), default=1_000, show_default=True,
              help="How many records to publish (ignored with --continuous).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Records per second, evenly paced [default: as fast as the broker takes them].")
@click.option("--bad-fraction", type=_FRACTION, default=0.0, show_default=True,
              help="Share of records that are bad, spread evenly over malformed_json, "
                   "missing_field, wrong_task_id, wrong_type, non_utf8 and oversized "
                   "(Kafka header itel_bad_kind names the kind).")
@click.option("--unknown-fraction", type=_FRACTION, default=0.0, show_default=True,
              help="Share of assignments ClaimX does not know (its lookup answers 404); "
                   "those events are valid.")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=3.0,
              show_default=True, help="Event timestamps are spread over this many days up to now.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same seed, same records (ids, statuses, bad kinds); timestamps follow now.")
@click.option("--topic", default=None,
              help=f"Topic to publish to [default: the workers' input_topic in workers.yaml, "
                   f"{DEFAULT_TOPIC}].")
@click.option("--bootstrap-servers", default=None,
              help="Kafka address [default: KAFKA_BOOTSTRAP_SERVERS, else the local broker of "
                   "`itel-dagster kafka start`].")
@click.option("--continuous", is_flag=True,
              help="Publish events stamped now until Ctrl-C or SIGTERM (or --duration), "
                   "at --rate.")
@click.option("--duration", "duration_seconds", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Stop after this many seconds.")
@click.option("--no-progress", is_flag=True, help="No progress bar (it shows above 1000 records).")
@click.option("--upstream", is_flag=True,
              help="Publish upstream ClaimX task events (no trigger_name; some of other tasks) to "
                   "the plugin trigger's input topic [default topic: the kafka_publish worker's "
                   "input_topic].")
@click.option("--other-task-fraction", type=_FRACTION, default=0.3, show_default=True,
              help="With --upstream: share of valid events that are of other ClaimX tasks.")
def publish(count, rate, bad_fraction, unknown_fraction, days, seed, topic, bootstrap_servers,
            continuous, duration_seconds, no_progress, upstream, other_task_fraction) -> None:
    """Publish realistic ClaimX events of the iTel Cabinet Repair Form task (32513).

    Each assignment goes assigned -> in_progress -> completed in order, keyed by assignment_id;
    the Kafka record timestamp is the event's timestamp. Prints a summary at the end.

    \b
    Examples:
      itel-dagster publish --count 100000
      itel-dagster publish --count 600 --bad-fraction 0.1 --rate 200
      itel-dagster publish --continuous --rate 2
      itel-dagster publish --upstream --count 1000 --other-task-fraction 0.5
    """
    if continuous and rate is None and duration_seconds is None:
        raise click.UsageError("--continuous needs --rate (or --duration)")
    try:
        summary = publish_events(
            bootstrap_servers or _default_bootstrap_servers(),
            topic or _configured_input_topic(upstream),
            None if continuous else count,
            rate_per_second=rate,
            bad_fraction=bad_fraction,
            unknown_fraction=unknown_fraction,
            days=days,
            seed=seed,
            progress=not no_progress,
            duration_seconds=duration_seconds,
            upstream=upstream,
            other_task_fraction=other_task_fraction,
        )
    except PublishError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.describe())


def _default_bootstrap_servers() -> str:
    # Imported here: the broker module is the dev stack's, and its absence must not break --help.
    from itel_dagster.devstack.kafka.broker import configured_or_local_bootstrap_servers
    from itel_dagster.devstack.kafka.classpath import KafkaSetupError

    try:
        return configured_or_local_bootstrap_servers()
    except KafkaSetupError as exc:
        raise click.ClickException(str(exc)) from exc


def _configured_input_topic(upstream: bool = False) -> str:
    """The topic the workers consume (the first worker's in ITEL_CONFIG_DIR's workers.yaml), so
    `up` with a renamed topic publishes where its workers read; upstream: the trigger's."""
    from itel_dagster.settings.env_yaml import ConfigError
    from itel_dagster.settings.workers import KAFKA_PUBLISH, load_workers, workers_with_final_stage

    try:
        if upstream:
            triggers = workers_with_final_stage(KAFKA_PUBLISH)
            if not triggers:
                raise click.ClickException("--upstream: workers.yaml has no kafka_publish worker; "
                                           "name the topic with --topic")
            return triggers[0].input_topic
        return next(iter(load_workers().values())).input_topic
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
