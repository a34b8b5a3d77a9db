"""Typed settings of Delta table maintenance, read from
config/plugins/itel_cabinet_api/delta_maintenance.yaml.

A retention below what a reader or the dedupe window needs is refused at load, with the key in
the message: vacuum must never delete a file a live run or a backfill may still read.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from itel_dagster.settings.env_yaml import ConfigError, load_yaml, parse_model
from itel_dagster.settings.paths import config_dir
from itel_dagster.settings.workers import WorkerSettings, load_workers

MAINTENANCE_FILE = "plugins/itel_cabinet_api/delta_maintenance.yaml"


class MaintenanceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Compact a day partition (the current day, or a late day) once it holds more files than this.
    compact_min_files: int = Field(100, ge=2)
    # Target size of a compacted file (delta-rs optimize target_size).
    target_file_mb: int = Field(256, ge=1)
    # How often the compaction sensor counts the files of today's and yesterday's partitions.
    compaction_check_seconds: int = Field(120, ge=10)
    # A closed day is compacted once, this long after its UTC midnight (late records land first).
    closed_day_delay_hours: float = Field(1.0, ge=0, le=24)
    # Closed days looked at for their one compaction (a stopped daemon catches up this far).
    closed_day_lookback_days: int = Field(3, ge=1, le=31)
    checkpoint_cron: str = "*/15 * * * *"
    vacuum_cron: str = "15 2 * * *"
    # The vacuum deletes files the table no longer references once they were written more than
    # vacuum_retention_hours ago; _delta_log entries older than log_retention_hours go with it.
    vacuum_retention_hours: int = Field(168, ge=1)
    log_retention_hours: int = Field(168, ge=1)
    # How long a removed file's tombstone stays in the table state (each run loads them all):
    # a removed file is kept at least this long, and vacuum_retention_hours after it was written.
    tombstone_retention_hours: int = Field(2, ge=1)
    # Hours of table history a reader may time-travel to (0: readers use the latest version only).
    reader_history_hours: int = Field(0, ge=0)
    # A maintenance commit that loses to a concurrent (live) commit backs off and retries; after
    # this many it gives up until its next turn, never failing or holding up a live run.
    max_conflict_retries: int = Field(5, ge=0)
    conflict_backoff_seconds: float = Field(1.0, ge=0)


def required_retention_hours(settings: MaintenanceSettings,
                             workers: dict[str, WorkerSettings]) -> int:
    """The shortest retention that no reader outlives: a dedupe window (its days and today), a
    run (max_runtime_seconds), and readers' time travel."""
    dedupe = max((w.dedupe_days + 1) * 24 for w in workers.values())
    run = math.ceil(max(w.max_runtime_seconds for w in workers.values()) / 3600)
    return max(dedupe, run, settings.reader_history_hours)


def required_tombstone_hours(settings: MaintenanceSettings,
                             workers: dict[str, WorkerSettings]) -> int:
    """The shortest tombstone retention that no snapshot in use outlives: a run's
    (max_runtime_seconds) and a time-travelling reader's (reader_history_hours). The dedupe
    window reads the latest snapshot, so it needs the files' retention, not their tombstones'."""
    run = math.ceil(max(w.max_runtime_seconds for w in workers.values()) / 3600)
    return max(run, settings.reader_history_hours)


def check_retention(settings: MaintenanceSettings, workers: dict[str, WorkerSettings],
                    source: str = MAINTENANCE_FILE) -> MaintenanceSettings:
    needed = required_retention_hours(settings, workers)
    for key in ("vacuum_retention_hours", "log_retention_hours"):
        if getattr(settings, key) < needed:
            raise ConfigError(
                f"{source}: key 'delta_maintenance.{key}' is {getattr(settings, key)} h, below the "
                f"{needed} h a reader needs (dedupe_days + 1 day, max_runtime_seconds, "
                "reader_history_hours)")
    tombstones = required_tombstone_hours(settings, workers)
    if settings.tombstone_retention_hours < tombstones:
        raise ConfigError(
            f"{source}: key 'delta_maintenance.tombstone_retention_hours' is "
            f"{settings.tombstone_retention_hours} h, below the {tombstones} h a snapshot in use "
            "needs (max_runtime_seconds, reader_history_hours)")
    return settings


def load_maintenance(env=None, workers: dict[str, WorkerSettings] | None = None
                     ) -> MaintenanceSettings:
    path = config_dir() / MAINTENANCE_FILE
    document = load_yaml(path, env)
    settings = parse_model(MaintenanceSettings, document, root_key="delta_maintenance")
    return check_retention(settings, workers or load_workers(env), str(path))


def maintained_tables(workers: dict[str, WorkerSettings]) -> list[str]:
    """The tables the workers write: each worker's Delta table or send ledger, each once."""
    return [*dict.fromkeys(w.table for w in workers.values())]
