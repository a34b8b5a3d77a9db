"""`python -m itel_dagster_bench.steady --quick`: it completes and reports every figure for both
tables. Timings are reported by the bench, never asserted here."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import polars as pl
import pytest

from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster_bench.steady import RUN_SECONDS

SIZE_FIGURES = ["no_maintenance_ms", "compacted_ms", "before_next_compaction_ms",
                "compaction_seconds"]


@pytest.mark.slow
def test_quick_steady_bench_reports_both_tables_at_each_size(tmp_path):
    out = tmp_path / "steady.json"
    finished = subprocess.run(
        [sys.executable, "-m", "itel_dagster_bench.steady", "--quick", "--json", str(out),
         "--work-dir", str(tmp_path / "work")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "Per-run Delta write" in finished.stdout
    doc = json.loads(out.read_text())
    assert set(doc["tables"]) == {"tracking", "ledger"}
    for name, table in doc["tables"].items():
        sizes = table["sizes"]
        assert list(sizes) == ["1", "20", "60"], name
        for size, figures in sizes.items():
            for figure in SIZE_FIGURES:
                assert isinstance(figures[figure], (int, float)) and figures[figure] >= 0, (
                    name, size, figure)
            # An open day is compacted by 15-minute buckets of write time; the files of its last
            # minute (a run every RUN_SECONDS) stay: at most 2 buckets + those in 5 minutes.
            assert figures["files_after_compaction"] <= 2 + math.ceil(60 / RUN_SECONDS), (
                name, size)
            # Measured in steady state: the checkpoint carries the tombstones of the last
            # tombstone retention's runs (and the buckets they were merged into), not those of
            # the day's first compaction nor of the closed days'.
            window = doc["options"]["runs_per_tombstone_retention"]
            assert 0 < figures["tombstones"] <= window + 4, (name, size, figures["tombstones"])
        # Each append is one commit: the log grows with the partition.
        assert sizes["60"]["delta_log"]["entries"] > sizes["1"]["delta_log"]["entries"] + 50
        assert sizes["60"]["lifecycle_read"]["rows"] == sizes["60"]["lifecycle_read_compacted"][
            "rows"] > 0
        assert table["closed_day_files_after_compaction"] == [1, 1, 1]
        assert table["full_day_files_after_compaction"] == 1
        assert table["full_day_rows"] >= 60 * 20


def test_the_fast_generator_writes_one_file_per_run_with_stats_a_few_commits(tmp_path):
    from deltalake import DeltaTable

    from itel_dagster_bench.steady import TODAY, RunRows, Table, enriched_pool
    from itel_dagster.resources.delta_maintenance import day_file_count
    from itel_dagster.resources.delta_tables import DeltaTableWriter

    rows = RunRows(enriched_pool(200))
    for name, key in (("tracking", "event_id"), ("ledger", "ledger_key")):
        uri = str(tmp_path / name)
        table = Table(uri, name, rows, rows_per_file=7, files_per_commit=5)
        table.append(TODAY, 12)  # the first through delta-rs, then commits of 5, 5 and 1

        delta = DeltaTable(uri)
        assert day_file_count(delta, TODAY) == 12 and delta.version() == 3
        stats = pl.DataFrame(delta.get_add_actions(flatten=True))
        assert stats["num_records"].to_list() == [7] * 12
        assert stats["min.kafka_offset"].null_count() == 0
        written = pl.read_delta(uri)
        assert written.height == 84 and written[key].n_unique() == 84
        # The workers' writer reads and merges into them as into its own files.
        again = rows.rows(name, 3, TODAY)
        result = DeltaTableWriter(uri, key=key, dedupe_days=1).merge_new_rows(
            pl.concat([again, written.head(2).select(again.columns).cast(again.schema)]))
        assert (result.inserted, result.already_present) == (3, 2)
