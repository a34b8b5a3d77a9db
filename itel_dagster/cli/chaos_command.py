"""`itel-dagster chaos`: the chaos soak (itel_dagster_bench.chaos) on a stack of its own.

Command-line wiring only. Exits 1 when a record was lost or doubled, a bound was passed, or the
soak did not get through its kills.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--events", type=click.IntRange(min=20), default=5_000, show_default=True,
              help="Events published over the soak (a part up front, a part before each kill).")
@click.option("--kills", type=click.IntRange(min=1), default=10, show_default=True,
              help="Kills, in the order run, run, daemon, run, run, broker, again.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the figures to this file.")
@click.option("--keep", is_flag=True, help="Keep the stack's work directory (logs, tables).")
def chaos(events: int, kills: int, json_path: Path | None, keep: bool) -> None:
    """Drain a backlog while killing run processes, the daemon and the broker (SIGKILL), then
    print the invariants and the recovery times. Starts and stops a stack of its own."""
    from itel_dagster_bench.chaos import run_soak

    if not run_soak(events, kills, json_path, keep, say=click.echo):
        raise SystemExit(1)
