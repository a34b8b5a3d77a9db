"""Delta tables under ITEL_DELTA_ROOT, written exactly once per key.

`merge_new_rows` inserts only rows whose key is not in the table yet: per day, it reads the key
column of that day and the `dedupe_days` days before it on one snapshot, and appends the rows
whose key it did not find, in a commit that carries an application transaction one version past
the snapshot's (one_insert_at_a_time): a concurrent writer that committed in between makes the
commit fail and the check run again. A retried run, a re-delivered record (even across midnight)
or a concurrent writer therefore never adds a second row for a key.

Given `since` (dedupe_since: the batch's oldest Kafka timestamp less the dedupe window), the check
and the ledger lookups read only rows written at or after it (WRITE_TIME_COLUMNS): files are
written in time order, so their min/max statistics skip the rest of the day and the cost stays
flat as the day grows. A copy of the same record is never skipped: it was written after its own
Kafka timestamp."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import polars as pl
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import CommitProperties, Transaction

from itel_dagster.settings.paths import delta_root, delta_storage_options

PARTITION_COLUMNS = ["year", "month", "day"]
# When a row was written (the tracking table's ingested_at, the send ledger's sent_at): never
# before its record's Kafka timestamp, and increasing file by file.
WRITE_TIME_COLUMNS = ("ingested_at", "sent_at")
# Producers' clocks (Kafka timestamps) may run ahead of the workers' (write times) by this much.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class ReplaceResult:
    written: int  # rows of the re-read records
    kept: int  # rows kept because Kafka no longer holds their records, or holds them past the read
    removed: int  # rows that were in the day before and are not any more (duplicates, strays)
    version: int
    attempts: int  # > 1 when a concurrent writer committed first and the replace ran again
    in_earlier_days: int = 0  # re-read rows left out: their key is in the dedupe window's days


@dataclass(frozen=True)
class MergeResult:
    inserted: int
    already_present: int
    commits: int
    version: int  # the table version after the write


def window_days(days, dedupe_days: int) -> list[tuple[int, int, int]]:
    """Each (year, month, day) of `days` and the `dedupe_days` days before it, each once."""
    window = {
        (earlier.year, earlier.month, earlier.day)
        for y, m, d in days
        for earlier in (date(y, m, d) - timedelta(days=back) for back in range(dedupe_days + 1))
    }
    return sorted(window)


def _day_filter(year: int, month: int, day: int) -> list[tuple[str, str, int]]:
    """One day partition as a read filter: delta-rs reads only that partition's files."""
    return [("year", "=", year), ("month", "=", month), ("day", "=", day)]


def dedupe_since(kafka_timestamps: pl.Series, window_hours: float) -> datetime | None:
    """The earliest write time a row dedupe must see for these records: their oldest Kafka
    timestamp less the dedupe window (and CLOCK_SKEW). None for no records."""
    oldest = kafka_timestamps.min()
    if oldest is None:
        return None
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=timezone.utc)
    return oldest - timedelta(hours=window_hours) - CLOCK_SKEW


def write_time_column(columns) -> str | None:
    """The table's write-time column, if it has one (a column_mapping may leave it out)."""
    names = set(columns)
    return next((c for c in WRITE_TIME_COLUMNS if c in names), None)


# Every commit that adds keys carries this application transaction, one version past its
# snapshot's: of two writers that checked their keys on one snapshot, delta-rs refuses the second
# commit (the version is taken), which then checks again on the new snapshot. So no key is
# inserted twice, although the insert itself is a plain append that reads nothing.
INSERT_APP_ID = "itel-insert-new-keys"


def one_insert_at_a_time(table: DeltaTable) -> CommitProperties:
    version = table.transaction_version(INSERT_APP_ID) or 0
    return CommitProperties(app_transactions=[Transaction(INSERT_APP_ID, version + 1)])


class DeltaTableWriter:
    """One table; reuses its DeltaTable object across commits (NOTES.md: 25 ms vs 36-90 ms)."""

    def __init__(self, uri: str, key: str = "event_id", max_conflict_retries: int = 8,
                 storage_options: dict[str, str] | None = None, dedupe_days: int = 0):
        self.uri = uri
        self.storage_options = storage_options
        self.key = key
        self.dedupe_days = dedupe_days  # a key already in one of these earlier days: not inserted
        self.max_conflict_retries = max_conflict_retries
        self._table: DeltaTable | None = None

    def _load(self) -> DeltaTable | None:
        if self._table is None:
            try:
                self._table = DeltaTable(self.uri, storage_options=self.storage_options)
            except TableNotFoundError:
                return None
        else:
            self._table.update_incremental()
        return self._table

    def merge_new_rows(self, rows: pl.DataFrame, since: datetime | None = None) -> MergeResult:
        """since: look for keys only in rows written at or after it (dedupe_since); None: the
        whole window of days."""
        inserted = present = commits = 0
        if rows.is_empty():
            table = self._load()
            return MergeResult(0, 0, 0, table.version() if table else -1)
        for (year, month, day), day_rows in rows.group_by(PARTITION_COLUMNS, maintain_order=True):
            new, commit_count = self._merge_day(day_rows, int(year), int(month), int(day), since)
            inserted += new
            present += day_rows.height - new
            commits += commit_count
        table = self._load()
        return MergeResult(inserted, present, commits, table.version() if table else -1)

    def _merge_day(self, day_rows: pl.DataFrame, year: int, month: int, day: int,
                   since: datetime | None = None) -> tuple[int, int]:
        for attempt in range(self.max_conflict_retries + 1):
            try:
                table = self._load()
                if table is None:
                    try:
                        write_deltalake(self.uri, day_rows, partition_by=PARTITION_COLUMNS, mode="error",
                                        storage_options=self.storage_options)
                        return day_rows.height, 1
                    except Exception as exc:  # noqa: BLE001 - another writer created it first
                        if "already exists" not in str(exc).lower():
                            raise
                        continue
                present = self._keys_present(table, day_rows[self.key],
                                             window_days([(year, month, day)], self.dedupe_days),
                                             since)
                new = day_rows.filter(~pl.col(self.key).is_in(present.implode())) \
                    .unique(subset=self.key, keep="first", maintain_order=True)
                if new.is_empty():
                    return 0, 0
                write_deltalake(table, new, mode="append",
                                commit_properties=one_insert_at_a_time(table))
                return new.height, 1
            except CommitFailedError:
                # A concurrent writer committed first (a backfill, another Kafka partition's run).
                # Reload, check the keys again and append what is still new.
                self._table = None
                if attempt == self.max_conflict_retries:
                    raise
                time.sleep(random.uniform(0.05, 0.2 * (attempt + 1)))
        raise AssertionError("unreachable")


    def _keys_present(self, table: DeltaTable, keys: pl.Series, days: list[tuple[int, int, int]],
                      since: datetime | None) -> pl.Series:
        """Which of `keys` the snapshot holds in `days` (written at or after `since`, when the
        table has a write-time column). Reads the key column only, of the files the day
        partitions and the write-time statistics leave (the MERGE read every column of them)."""
        in_days = pl.any_horizontal(
            [(pl.col("year") == y) & (pl.col("month") == m) & (pl.col("day") == d)
             for y, m, d in days])
        wanted = in_days & pl.col(self.key).is_in(keys.implode())
        column = write_time_column(f.name for f in table.schema().fields)
        if since is not None and column is not None:
            wanted = wanted & (pl.col(column) >= since)
        return pl.scan_delta(table).filter(wanted).select(self.key).collect()[self.key]

    def replace_day(self, rows: pl.DataFrame | None, day: tuple[int, int, int],
                    held: dict[int, tuple[int, int]]) -> ReplaceResult:
        """Replace one day partition with `rows`, the day rebuilt from Kafka.

        held: partition -> (low, high) offsets Kafka held when the day was read. A row of the day
        whose record lies outside those (expired by retention, or written after the read by a
        live run) is kept, once per key: a backfill never deletes what it could not re-read. A
        concurrent commit to the day makes the replace fail and run again on the new snapshot.
        rows=None: Kafka holds no valid event of the day. A re-read row whose key one of the
        `dedupe_days` days before holds (a copy redelivered across midnight) is left out.
        """
        year, month, day_of_month = day
        predicate = f"year = {year} AND month = {month} AND day = {day_of_month}"
        for attempt in range(1, self.max_conflict_retries + 2):
            table = self._load()
            before = self._day_rows(table, year, month, day_of_month)
            if rows is None:
                if table is None:
                    return ReplaceResult(0, 0, 0, -1, attempt)
                rows = before.clear()
            reread = self._not_in_earlier_days(table, rows, day)
            kept = self._not_reread(before, reread, held)
            replacement = pl.concat([reread, kept.select(reread.columns).cast(reread.schema)]) \
                if kept.height else reread
            if table is None and replacement.is_empty():
                return ReplaceResult(0, 0, 0, -1, attempt)
            try:
                if table is None:
                    write_deltalake(self.uri, replacement, partition_by=PARTITION_COLUMNS,
                                    mode="error", storage_options=self.storage_options)
                else:
                    write_deltalake(table, replacement, mode="overwrite", predicate=predicate,
                                    commit_properties=one_insert_at_a_time(table))
            except CommitFailedError:
                self._table = None
                if attempt > self.max_conflict_retries:
                    raise
                time.sleep(random.uniform(0.05, 0.2 * attempt))
                continue
            except Exception as exc:  # noqa: BLE001 - another writer created the table first
                if table is not None or "already exists" not in str(exc).lower():
                    raise
                self._table = None
                continue
            version = self._load().version()
            removed = before.height - kept.height - self._still_there(before, reread)
            return ReplaceResult(written=reread.height, kept=kept.height, removed=removed,
                                 version=version, attempts=attempt,
                                 in_earlier_days=rows.height - reread.height)
        raise AssertionError("unreachable")

    def _not_in_earlier_days(self, table: DeltaTable | None, rows: pl.DataFrame,
                             day: tuple[int, int, int]) -> pl.DataFrame:
        earlier = [d for d in window_days([day], self.dedupe_days) if d != day]
        if table is None or not earlier or rows.is_empty():
            return rows
        keys = pl.concat([pl.from_arrow(table.to_pyarrow_table(
            filters=_day_filter(y, m, d), columns=[self.key]))[self.key] for y, m, d in earlier])
        return rows.filter(~pl.col(self.key).is_in(keys.implode()))

    def _day_rows(self, table: DeltaTable | None, year: int, month: int, day: int) -> pl.DataFrame:
        if table is None:
            return pl.DataFrame()
        return pl.from_arrow(table.to_pyarrow_table(filters=_day_filter(year, month, day)))

    def _not_reread(self, before: pl.DataFrame, rows: pl.DataFrame,
                    held: dict[int, tuple[int, int]]) -> pl.DataFrame:
        if before.is_empty():
            return before
        outside = before.filter(~pl.col(self.key).is_in(rows[self.key].implode()))
        if {"kafka_partition", "kafka_offset"} <= set(before.columns):
            bounds = pl.DataFrame(
                {"kafka_partition": list(held), "low": [lo for lo, _ in held.values()],
                 "high": [hi for _, hi in held.values()]},
                schema={"kafka_partition": before.schema["kafka_partition"], "low": pl.Int64,
                        "high": pl.Int64})
            outside = (
                outside.join(bounds, on="kafka_partition", how="left")
                .filter(pl.col("low").is_null() | (pl.col("kafka_offset") < pl.col("low"))
                        | (pl.col("kafka_offset") >= pl.col("high")))
                .drop("low", "high")
            )
        # Without Kafka coordinates no row can be proven re-readable: all are kept.
        return outside.unique(subset=self.key, keep="first", maintain_order=True)

    def _still_there(self, before: pl.DataFrame, rows: pl.DataFrame) -> int:
        """Rows of `before` that the rebuilt day holds again (one per key)."""
        if before.is_empty():
            return 0
        return before.filter(pl.col(self.key).is_in(rows[self.key].implode())) \
            .unique(subset=self.key).height


# Object-store keys of delta-rs storage options, each a field of its own so that it can be the
# dg.EnvVar of the variable that holds it (a dict field cannot hold an EnvVar).
SECRET_STORAGE_OPTIONS = ("aws_secret_access_key", "aws_session_token", "azure_client_secret",
                          "azure_storage_account_key", "azure_storage_sas_key",
                          "google_service_account_key")


class DeltaTablesResource(dg.ConfigurableResource):
    """Where the Delta tables live (ITEL_DELTA_ROOT: a path, s3://, abfss://, gs://) and the
    delta-rs storage options of connections/delta.yaml; resources/from_yaml.py builds it. A
    resource built without them reads ITEL_DELTA_ROOT and the options when used."""

    root: str | None = None
    # delta.yaml's storage options but the SECRET_STORAGE_OPTIONS; None: read when used.
    storage_options: dict[str, str] | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    azure_client_secret: str | None = None
    azure_storage_account_key: str | None = None
    azure_storage_sas_key: str | None = None
    google_service_account_key: str | None = None
    # dg.EnvVar("ITEL_DELTA_STORAGE_OPTIONS") when set: a JSON object of options over the above.
    storage_options_override: str | None = None
    # delta.yaml and its content's hash when built from it (resources/from_yaml.py).
    built_from: str | None = None

    def options(self) -> dict[str, str] | None:
        """delta-rs storage options for every reader and writer; None when none are set."""
        if self.storage_options is None:
            return delta_storage_options()
        options = dict(self.storage_options)
        options.update({k: getattr(self, k) for k in SECRET_STORAGE_OPTIONS if getattr(self, k)})
        if self.storage_options_override:
            options.update(json.loads(self.storage_options_override))
        return options or None

    def table_uri(self, name: str) -> str:
        return f"{(self.root or delta_root()).rstrip('/')}/{name}"

    def writer(self, name: str, key: str = "event_id", dedupe_days: int = 0) -> DeltaTableWriter:
        return DeltaTableWriter(self.table_uri(name), key=key,
                                storage_options=self.options(), dedupe_days=dedupe_days)

    def read(self, name: str) -> pl.DataFrame:
        return pl.read_delta(self.table_uri(name), storage_options=self.options())

    def values_present(
        self, name: str, column: str, values: list, days: list[tuple[int, int, int]],
        where: pl.Expr | None = None, since: datetime | None = None,
    ) -> set:
        """Which of `values` the table holds in `column`, looking only at the given days (and at
        rows matching `where`, when given; written at or after `since`, when given)."""
        found = self.rows_present(name, column, values, days, [column], where, since)
        return set() if found is None else set(found[column].to_list())

    def rows_present(
        self, name: str, column: str, values: list, days: list[tuple[int, int, int]],
        columns: list[str], where: pl.Expr | None = None, since: datetime | None = None,
    ) -> pl.DataFrame | None:
        """`columns` of the rows whose `column` is one of `values`, in the given days only (and
        matching `where`, written at or after `since`: dedupe_since); None when there are none
        or the table does not exist yet."""
        if not values or not days:
            return None
        uri = self.table_uri(name)
        options = self.options()
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            return None
        table = pl.scan_delta(uri, storage_options=options)
        in_days = pl.any_horizontal(
            [(pl.col("year") == y) & (pl.col("month") == m) & (pl.col("day") == d)
             for y, m, d in days]
        )
        wanted = in_days & pl.col(column).is_in(values)
        if where is not None:
            wanted = wanted & where
        written = write_time_column(table.collect_schema().names())
        if since is not None and written is not None:
            wanted = wanted & (pl.col(written) >= since)
        found = table.filter(wanted).select(columns).collect()
        return None if found.is_empty() else found
