"""The Delta writer's dedupe window (real Delta tables on disk, no broker)."""

from __future__ import annotations

import polars as pl
import pytest

from itel_dagster.resources.delta_tables import DeltaTableWriter, window_days

# The day reads use delta-rs' current API (`filters`, not the deprecated `partitions`).
pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning")


def rows(ids: list[str], day: tuple[int, int, int]) -> pl.DataFrame:
    year, month, day_of_month = day
    return pl.DataFrame(
        {"event_id": ids, "year": [year] * len(ids), "month": [month] * len(ids),
         "day": [day_of_month] * len(ids)},
        schema_overrides={"year": pl.Int32, "month": pl.Int32, "day": pl.Int32})


def test_the_window_is_each_day_and_the_days_before_across_month_and_year_ends():
    assert window_days([(2027, 1, 1)], 0) == [(2027, 1, 1)]
    assert window_days([(2027, 1, 1)], 1) == [(2026, 12, 31), (2027, 1, 1)]
    assert window_days([(2026, 3, 1), (2026, 3, 2)], 2) == [
        (2026, 2, 27), (2026, 2, 28), (2026, 3, 1), (2026, 3, 2)]


def test_a_key_already_in_the_day_before_is_not_inserted_again(tmp_path):
    before, after = (2026, 11, 30), (2026, 12, 1)
    window = DeltaTableWriter(str(tmp_path / "window"), dedupe_days=1)
    window.merge_new_rows(rows(["a", "b"], before))
    result = window.merge_new_rows(rows(["a", "c"], after))
    assert (result.inserted, result.already_present) == (1, 1)
    table = pl.read_delta(str(tmp_path / "window"))
    assert sorted(table.select("event_id", "day").rows()) == [("a", 30), ("b", 30), ("c", 1)]

    own_day = DeltaTableWriter(str(tmp_path / "own_day"), dedupe_days=0)  # the negative control
    own_day.merge_new_rows(rows(["a"], before))
    assert own_day.merge_new_rows(rows(["a"], after)).inserted == 1


def test_replacing_a_day_reads_only_that_day_and_leaves_out_keys_of_the_day_before(tmp_path):
    before, after = (2026, 11, 30), (2026, 12, 1)
    writer = DeltaTableWriter(str(tmp_path / "table"), dedupe_days=1)
    writer.merge_new_rows(rows(["a", "b"], before))
    writer.merge_new_rows(rows(["c", "d"], after))

    result = writer.replace_day(rows(["a", "c", "e"], after), after, held={})

    # "a" is the day before's; "d" has no Kafka coordinates, so it cannot be proven re-read: kept
    assert (result.written, result.kept, result.in_earlier_days) == (2, 1, 1)
    table = pl.read_delta(str(tmp_path / "table"))
    assert sorted(table.select("event_id", "day").rows()) == [
        ("a", 30), ("b", 30), ("c", 1), ("d", 1), ("e", 1)]
