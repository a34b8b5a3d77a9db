"""The success and error messages a run publishes: encoded a slice at a time, the same messages
in the same order as encoding the whole batch at once."""

import polars as pl

from itel_dagster.ops.results_ops import in_slices, success_messages


def test_slices_give_the_same_messages_in_order():
    successes = pl.DataFrame({
        "event_id": [f"evt-{i}" if i % 7 else None for i in range(2_500)],
        "kafka_offset": list(range(2_500)),
    })

    sliced = list(in_slices(successes, success_messages, rows=1_000))

    assert sliced == success_messages(successes)
    assert len(sliced) == 2_500
    assert sliced[1] == (b"evt-1", b'{"event_id":"evt-1","kafka_offset":1}')
    assert sliced[0][0] is None  # no event_id: no key
    assert list(in_slices(successes.clear(), success_messages)) == []
