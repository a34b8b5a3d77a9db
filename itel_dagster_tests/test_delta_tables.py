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


class StaleOnceWriter(DeltaTableWriter):
    """A writer whose first key check runs on `snapshot`, loaded before another writer's commit."""

    def __init__(self, uri: str, snapshot, **kwargs):
        super().__init__(uri, **kwargs)
        self._stale, self.fresh_loads = snapshot, 0

    def _load(self):
        if self._stale is not None:
            table, self._stale = self._stale, None
            return table
        if self._table is None:
            self.fresh_loads += 1
        return super()._load()


@pytest.mark.parametrize(("first", "other_day"), [("live", False), ("live", True),
                                                  ("backfill", False)])
def test_two_writers_that_checked_on_one_snapshot_insert_a_key_once(tmp_path, first, other_day):
    # Both check their keys on the same snapshot and neither sees the other's key; the append is
    # blind, so only the commit's application transaction makes the second one check again.
    from deltalake import DeltaTable

    uri, day, next_day = str(tmp_path / "t"), (2026, 11, 30), (2026, 12, 1)
    DeltaTableWriter(uri).merge_new_rows(rows(["a"], day))
    snapshot = DeltaTable(uri)
    if first == "live":
        DeltaTableWriter(uri, dedupe_days=1).merge_new_rows(rows(["k"], day))
    else:  # a backfill rebuilds the day from Kafka, which now holds k
        DeltaTableWriter(uri, dedupe_days=1).replace_day(rows(["a", "k"], day), day, held={})
    second = StaleOnceWriter(uri, snapshot, dedupe_days=1)

    result = second.merge_new_rows(rows(["k", "m"], next_day if other_day else day))

    assert (result.inserted, result.already_present) == (1, 1)
    assert second.fresh_loads == 1  # its first commit failed; it checked again
    assert sorted(pl.read_delta(uri)["event_id"]) == ["a", "k", "m"]


def test_a_key_twice_in_one_batch_is_inserted_once(tmp_path):
    writer = DeltaTableWriter(str(tmp_path / "t"), dedupe_days=1)
    writer.merge_new_rows(rows(["a"], (2026, 11, 30)))
    result = writer.merge_new_rows(rows(["x", "x", "a", "y"], (2026, 11, 30)))
    assert (result.inserted, result.already_present) == (2, 2)
    assert sorted(pl.read_delta(str(tmp_path / "t"))["event_id"]) == ["a", "x", "y"]
