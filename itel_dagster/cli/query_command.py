"""`itel-dagster query`: SQL and named queries over the Delta tables, read-only.

A query that cannot run (bad SQL, unknown column or table, a table not written yet) prints one
line on stderr and exits 2, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import click
import polars as pl

from itel_dagster.query import named_queries as named
from itel_dagster.query.named_queries import QueryError, QueryTables
from itel_dagster.query.output import FORMATS, render
from itel_dagster.settings.paths import delta_root, delta_storage_options
from itel_dagster.settings.workers import DELTA_WRITE, ITEL_API_SEND, workers_with_final_stage

format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default=None,
    help="Output: an aligned table [default], CSV, or JSON (a list of objects).")


def _table_of(final_stage: str) -> str:
    """The table of the first worker with this final stage (workers.yaml)."""
    workers = workers_with_final_stage(final_stage)
    if not workers:
        raise QueryError(f"no worker in workers.yaml ends in {final_stage}")
    return workers[0].table


def _run(ctx: click.Context, fmt: str | None,
         build: Callable[[QueryTables], pl.LazyFrame]) -> None:
    try:
        root = ctx.obj["delta_root"] or delta_root()
        tables = QueryTables(root, _table_of(DELTA_WRITE), _table_of(ITEL_API_SEND),
                             delta_storage_options())
        frame = named.collect(build(tables))
    except (QueryError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(2)
    click.echo(render(frame, fmt or ctx.obj["fmt"] or "table"), nl=False)


@click.group(invoke_without_command=True)
@click.option("--sql", default=None, metavar="QUERY",
              help="A SQL query over the tables `tracking` and `sends` (polars SQL).")
@format_option
@click.option("--delta-root", "root", default=None,
              help="Where the tables are [default: ITEL_DELTA_ROOT, else ./data/delta].")
@click.pass_context
def query(ctx: click.Context, sql: str | None, fmt: str | None, root: str | None) -> None:
    """SQL over the Delta tables: --sql "SELECT ..." or a named query (docs/operations.md)."""
    ctx.obj = {"delta_root": root, "fmt": fmt}  # named queries below read these
    if ctx.invoked_subcommand is not None:
        if sql is not None:
            raise click.UsageError("give --sql or a named query, not both")
        return
    if sql is None:
        raise click.UsageError("give --sql \"SELECT ...\" or a named query (see --help)")
    _run(ctx, fmt, lambda tables: tables.sql(sql))


@query.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@format_option
@click.pass_context
def recent(ctx: click.Context, limit: int, fmt: str | None) -> None:
    """The latest events, newest first."""
    _run(ctx, fmt, lambda tables: named.recent(tables.scan("tracking"), limit))


@query.command()
@click.option("--assignment", type=int, required=True, help="The assignment_id.")
@format_option
@click.pass_context
def lifecycle(ctx: click.Context, assignment: int, fmt: str | None) -> None:
    """One assignment's events over time, each with the status before it."""
    _run(ctx, fmt, lambda tables: named.lifecycle(tables.scan("tracking"), assignment))


@query.command()
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Only changes of the last D days, today (UTC) included [default: all].")
@format_option
@click.pass_context
def transitions(ctx: click.Context, days: int | None, fmt: str | None) -> None:
    """Status changes of assignments (previous -> next status), with counts."""
    today = datetime.now(timezone.utc).date()
    _run(ctx, fmt, lambda tables: named.transitions(tables.scan("tracking"), days, today))


@query.command("daily-counts")
@format_option
@click.pass_context
def daily_counts(ctx: click.Context, fmt: str | None) -> None:
    """Events per day and status."""
    _run(ctx, fmt, lambda tables: named.daily_counts(tables.scan("tracking")))


@query.command("send-outcomes")
@format_option
@click.pass_context
def send_outcomes(ctx: click.Context, fmt: str | None) -> None:
    """Send ledger: accepted / rejected / dead_lettered per day."""
    _run(ctx, fmt, lambda tables: named.send_outcomes(tables.scan("sends")))
