"""Send rounds and outcomes read back from the send ledger (pure)."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl

from itel_dagster.stages.send_ledger import recorded_outcomes, send_rounds


def test_a_round_takes_each_assignments_next_event_and_keeps_their_order():
    rows = pl.DataFrame({"event_id": list("abcdefg"),
                         "assignment_id": [1, 1, 1, 2, 3, 2, 4],
                         "kafka_offset": [0, 1, 2, 3, 4, 5, 6]})
    rounds = send_rounds(rows, round_size=3)
    assert rounds.select("event_id", "send_round").rows() == [
        ("a", 0), ("d", 0), ("e", 0), ("g", 1), ("b", 1), ("f", 1), ("c", 2)]
    # Within each assignment, a later offset never goes in an earlier round.
    per_assignment = rounds.group_by("assignment_id").agg(
        pl.col("send_round").sort_by("kafka_offset").diff().min().alias("step"))
    assert per_assignment["step"].drop_nulls().min() >= 0
    assert rounds.group_by("send_round").len()["len"].max() <= 3


def test_only_the_ledger_row_of_this_very_record_is_recovered_accepted_first():
    when = datetime(2026, 12, 3, tzinfo=timezone.utc)
    rows = pl.DataFrame({"event_id": ["a", "b", "c"], "kafka_topic": ["t"] * 3,
                         "kafka_partition": pl.Series([0, 0, 1], dtype=pl.Int32),
                         "kafka_offset": [10, 11, 5]})
    ledger = pl.DataFrame({
        "event_id": ["a", "a", "b", "c"],
        "outcome": ["dead_lettered", "accepted", "rejected", "accepted"],
        "status_code": [503, 201, 422, 201], "attempts": [4, 1, 1, 1],
        "attempt_log": ["HTTP 503 in 1 ms\nHTTP 503 in 1 ms", "HTTP 201 in 2 ms",
                        "HTTP 422 in 1 ms", "HTTP 201 in 2 ms"],
        "latency_ms": [5.0, 2.0, 1.0, 2.0], "response_body": [None, "{}", "bad", "{}"],
        "itel_id": [None, "ITEL-1", None, "ITEL-3"], "sent_at": [when] * 4,
        "kafka_topic": ["t"] * 4, "kafka_partition": [0, 0, 0, 1],
        # c's ledger row is of an earlier, committed copy at offset 2: not this record.
        "kafka_offset": [10, 10, 11, 2],
    })
    recovered = recorded_outcomes(rows, ledger)
    assert recovered.sort("event_id").select("event_id", "outcome", "itel_id").rows() == [
        ("a", "accepted", "ITEL-1"), ("b", "rejected", None)]
    assert recovered.filter(pl.col("event_id") == "b")["attempt_log"].to_list() == [
        ["HTTP 422 in 1 ms"]]
