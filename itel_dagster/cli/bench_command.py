"""`itel-dagster bench`: throughput, latency, overhead, memory and ClaimX figures of both workers,
the Dagster path against the in-process limit, in one run (itel_dagster_bench.suite).

Command-line wiring only. Exits 1 when a record was lost or duplicated, or a phase did not end.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from itel_dagster.settings.paths import PROJECT_ROOT

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
SMOKE = {"events": 200, "days": 0.2, "steady_seconds": 8.0, "overhead_runs": 1,
         "catch_up_timeout": 600.0}


@click.command()
@click.option("--events", type=click.IntRange(min=10), default=100_000, show_default=True,
              help="Backlog size: published once, then run in process and through Dagster.")
@click.option("--bad-fraction", type=click.FloatRange(0.0, 0.5), default=0.02, show_default=True,
              help="Share of bad records in the backlog and the steady stream.")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=3.0,
              show_default=True, help="The backlog's timestamps span this many days up to now.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the backlog.")
@click.option("--latency-ms", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Latency added by the ClaimX and iTel simulators to every request.")
@click.option("--steady-rate", type=click.FloatRange(min=0, min_open=True), default=20.0,
              show_default=True, help="Events per second of the latency phase.")
@click.option("--steady-seconds", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Duration of the latency phase.")
@click.option("--overhead-runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="One-record runs timed for the per-run overhead.")
@click.option("--itel-rate-limit", type=click.FloatRange(min=0, min_open=True), default=1000.0,
              show_default=True,
              help="iTel requests/s per run process in the bench's config copy (app.itel.yaml "
                   "has 20, which would make the bench measure the limit).")
@click.option("--sensor-interval", "sensor_interval_seconds", type=click.IntRange(1, 300),
              default=None, help="Override both sensors' interval in the bench's config copy "
                                 "[default: workers.yaml's].")
@click.option("--dagster-yaml", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Dagster instance settings [default: the repository's "
                                 "dagster.yaml].")
@click.option("--catch-up-timeout", type=click.FloatRange(min=10), default=3600.0,
              show_default=True, help="Seconds the catch-up may take before the bench fails.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path),
              default=RESULTS_DIR, show_default=True, help="Where the JSON result goes.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Working directory (config copy, Delta, DAGSTER_HOME, logs) [default: a new "
                   "temporary one, removed after a passing run].")
@click.option("--keep-work", is_flag=True, help="Keep the working directory after a passing run.")
@click.option("--smoke", is_flag=True,
              help=f"A quick run that checks the bench completes: {SMOKE['events']} events, "
                   f"{SMOKE['steady_seconds']:g} s steady phase, one one-record run "
                   "(overrides those options).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def bench(no_progress: bool, smoke: bool, dagster_yaml: Path | None, results_dir: Path,
          **options) -> None:
    """Measure both workers on a private local stack: real Kafka (KAFKA_BOOTSTRAP_SERVERS, else
    a broker of its own), both simulators in their own processes with added latency, real Delta.

    Phases, in one run: publish the backlog; (1) each worker's stage functions in this process,
    no Dagster: the in-process limit; (2) dagster-daemon with both sensors until both groups are
    at lag 0: catch-up events/s and its ratio to (1); (3) a steady stream: latency from Kafka
    timestamp to the Delta row's ingested_at and to iTel's receipt; (4) one-record runs: run
    start to end; (5) peak RSS of the largest worker run process (other runs, such as the asset
    checks, apart), the daemon and the code server;
    (6) ClaimX requests per event and the bound a 60 s shared cache allows; (7) correctness: every
    valid event once in Delta and once at iTel, every bad record on both error topics.

    Prints one table and writes the same figures as JSON to --results-dir. Exit code 1 when a
    correctness check failed or a phase did not finish.
    """
    # Imported here: they load Dagster, polars and deltalake, which other commands do not need.
    from itel_dagster_bench.report import document, table, write_json
    from itel_dagster_bench.suite import BenchOptions, run_bench

    chosen = BenchOptions(progress=not no_progress, smoke=smoke, **options)
    if dagster_yaml is not None:
        chosen = replace(chosen, dagster_yaml=dagster_yaml.resolve())
    if smoke:
        chosen = replace(chosen, **SMOKE)
    run = run_bench(chosen)
    doc = document(run)
    path = write_json(doc, results_dir)
    click.echo(table(doc))
    click.echo(f"\nfigures written to {path}")
    if run.error and run.work_dir is not None:
        click.echo(f"working directory kept for inspection: {run.work_dir}", err=True)
    if not run.passed:
        raise SystemExit(1)
