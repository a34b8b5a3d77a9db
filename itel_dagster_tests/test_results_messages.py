"""The success and error messages a run publishes: encoded a slice at a time, the same messages
in the same order as encoding the whole batch at once."""

import polars as pl

from itel_dagster.ops.results_ops import in_slices, slice_bounds, success_messages


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


def test_error_slices_stop_at_a_payload_byte_budget():
    payloads = ["x" * 900_000, "y" * 900_000, "z" * 900_000, None, "w" * 10, "v" * 1_500_000]
    errors = pl.DataFrame({"original_payload": payloads, "kafka_offset": list(range(6))})

    bounds = slice_bounds(errors, rows=1_000, sized_by="original_payload", max_bytes=2_000_000)

    # Rows starting within the same 2 MB stretch of payload bytes share a slice.
    assert bounds == [(0, 3), (3, 3)]
    assert slice_bounds(errors, rows=2) == [(0, 2), (2, 2), (4, 2)]
    assert slice_bounds(errors, rows=2, sized_by="original_payload",
                        max_bytes=2_000_000) == [(0, 2), (2, 1), (3, 1), (4, 2)]
    assert slice_bounds(errors.clear(), sized_by="original_payload") == []
    sliced = in_slices(errors, _offsets_of, sized_by="original_payload", max_bytes=2_000_000)
    assert [offset for _, offset, _ in sliced] == list(range(6))  # all, in order


def _offsets_of(frame: pl.DataFrame) -> list[tuple[None, int, list]]:
    return [(None, offset, []) for offset in frame["kafka_offset"]]
