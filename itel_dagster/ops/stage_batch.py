"""What flows between a worker's ops: the rows still in the pipeline and the error rows so far.

It also carries the Kafka ranges it came from, so the last op knows what to commit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import date

import polars as pl

from itel_dagster.kafka.day_window import DayWindow
from itel_dagster.sensors.dispatch_plan import KafkaRange
from itel_dagster.settings.workers import WorkerSettings, load_workers
from itel_dagster.stages.duplicate_deliveries import first_copies


@dataclass(frozen=True)
class StageBatch:
    worker: str
    kafka_ranges: tuple[KafkaRange, ...]  # one per partition; a backfill or replay: its topic
    rows: pl.DataFrame
    errors: list[pl.DataFrame] = field(default_factory=list)  # error-record frames, per stage
    missing_offsets: int = 0
    counts: dict[str, int | float | str] = field(default_factory=dict)  # run facts, for metadata
    started_at: float = field(default_factory=time.monotonic)
    # Set by a final stage that stopped on purpose (the API worker's open breaker): offsets are
    # committed only up to here (partition -> offset), and the events from there stay in Kafka.
    commit_before: dict[int, int] | None = None
    # Set by the read when max_bytes_per_run stopped it: partition -> first offset not read.
    # Kept apart from commit_before (which the final stage sets); the commit takes the lower.
    read_until: dict[int, int] | None = None
    # Offsets retention removed before this worker's group handled them (read op), reported once
    # the commit moves past them.
    lost_to_retention: tuple[KafkaRange, ...] = ()
    # Events handled earlier (already accepted in the send ledger): counted, not re-published.
    already_handled: int = 0
    ledger: pl.DataFrame | None = None  # the API worker's send-ledger rows of this run
    # A label for logs and metadata only ("live", "backfill", "replay"): which job read the batch.
    # No op branches on it; the live, backfill and replay graphs are built from different ops.
    mode: str = "live"
    # A backfill's input: the days it rebuilds and the window of each read from each partition.
    day_windows: dict[date, tuple[DayWindow, ...]] = field(default_factory=dict)
    # How logs and metadata name the input, where the Kafka ranges do not (a backfill, a replay).
    described_as: str | None = None

    @property
    def source(self) -> str:
        """The input, as logs and run metadata name it."""
        return self.described_as or ", ".join(
            f"{r.topic}[{r.partition}] {r.start}..{r.end}" for r in self.kafka_ranges)

    @property
    def settings(self) -> WorkerSettings:
        return load_workers()[self.worker]

    def next(self, rows: pl.DataFrame, errors: pl.DataFrame | None = None, **counts):
        return replace(
            self,
            rows=rows,
            errors=self.errors + ([errors] if errors is not None and errors.height else []),
            counts={**self.counts, **counts},
        )

    def without_duplicate_deliveries(self) -> StageBatch:
        """Each event_id once: later copies read in this batch (a producer retry) are counted as
        already handled and in `duplicates_in_run`, so every record read is accounted for once."""
        firsts = first_copies(self.rows)
        duplicates = self.rows.height - firsts.height
        if not duplicates:
            return self
        return replace(self.next(firsts, duplicates_in_run=duplicates),
                       already_handled=self.already_handled + duplicates)

    def commit_to(self) -> dict[int, int]:
        """partition -> the offset to commit: its range's end, or the lower of commit_before and
        read_until where either holds the partition back."""
        limits = [limit for limit in (self.commit_before, self.read_until) if limit]
        return {r.partition: min([r.end, *(limit[r.partition] for limit in limits
                                           if r.partition in limit)])
                for r in self.kafka_ranges}

    def error_count(self) -> int:
        return sum(frame.height for frame in self.errors)
