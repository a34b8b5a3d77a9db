"""Group progress read and committed without joining the group; ranges read by assignment."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

import pytest

from itel_dagster.kafka import offsets
from itel_dagster.kafka.offsets import (
    GroupProgressReader,
    commit_offsets,
    group_progress,
    kept_group_progress,
)
from itel_dagster.kafka.range_reader import read_range
from itel_dagster.kafka.results_producer import ResultsProducer


def produce_to_partitions(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for partition, count in counts.items():
        for i in range(count):
            producer.produce(topic, value=f"p{partition}-{i}".encode(), partition=partition,
                             timestamp=1_790_000_000_000 + i)
    assert producer.flush(30) == 0


def test_progress_of_a_new_group_starts_at_the_oldest_record(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=3)
    produce_to_partitions(kafka_bootstrap, topic, {0: 5, 1: 2, 2: 0})
    progress = {p.partition: p for p in group_progress(kafka_bootstrap, "fresh-group", topic)}
    assert set(progress) == {0, 1, 2}
    assert [progress[p].committed for p in range(3)] == [None, None, None]
    assert [progress[p].lag for p in range(3)] == [5, 2, 0]
    assert progress[0].next_offset == 0 and progress[0].high == 5


def test_commits_move_forward_only_and_show_as_lag(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=2)
    produce_to_partitions(kafka_bootstrap, topic, {0: 10, 1: 4})
    assert commit_offsets(kafka_bootstrap, "g-commit", topic, {0: 7, 1: 4}) == {0: 7, 1: 4}
    # A stale commit (a retried run that finished late) never moves progress back.
    assert commit_offsets(kafka_bootstrap, "g-commit", topic, {0: 3}) == {}
    progress = {p.partition: p for p in group_progress(kafka_bootstrap, "g-commit", topic)}
    assert (progress[0].committed, progress[0].lag) == (7, 3)
    assert (progress[1].committed, progress[1].lag) == (4, 0)
    # Another group is independent.
    other = {p.partition: p for p in group_progress(kafka_bootstrap, "g-other", topic)}
    assert other[0].lag == 10


def test_a_kept_reader_sees_every_later_commit_and_record(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=2)
    produce_to_partitions(kafka_bootstrap, topic, {0: 4, 1: 1})
    with GroupProgressReader(kafka_bootstrap, "g-kept") as reader:
        first = {p.partition: p for p in reader.read(topic)}
        assert [(first[p].committed, first[p].high) for p in (0, 1)] == [(None, 4), (None, 1)]
        commit_offsets(kafka_bootstrap, "g-kept", topic, {0: 3})
        produce_to_partitions(kafka_bootstrap, topic, {1: 5})
        later = {p.partition: p for p in reader.read(topic)}
        assert [(later[p].committed, later[p].high) for p in (0, 1)] == [(3, 4), (None, 6)]
        assert reader.read(topic) == group_progress(kafka_bootstrap, "g-kept", topic)


def test_kept_readers_are_reused_fresh_bounded_and_dropped_when_a_read_fails(
        kafka_bootstrap, make_topic):
    topic = make_topic(partitions=1)
    produce_to_partitions(kafka_bootstrap, topic, {0: 3})
    assert kept_group_progress(kafka_bootstrap, "g-kept-1", topic)[0].committed is None
    reader = offsets._kept[(kafka_bootstrap, "g-kept-1")][0]
    commit_offsets(kafka_bootstrap, "g-kept-1", topic, {0: 2})
    assert kept_group_progress(kafka_bootstrap, "g-kept-1", topic)[0].committed == 2
    assert offsets._kept[(kafka_bootstrap, "g-kept-1")][0] is reader  # the same consumer

    with pytest.raises(RuntimeError, match="not available"):
        kept_group_progress(kafka_bootstrap, "g-kept-1", "no-such-topic", timeout=2)
    assert (kafka_bootstrap, "g-kept-1") not in offsets._kept
    assert kept_group_progress(kafka_bootstrap, "g-kept-1", topic)[0].committed == 2

    for n in range(offsets.KEPT_READERS + 2):
        kept_group_progress(kafka_bootstrap, f"g-kept-many-{n}", topic)
    assert len(offsets._kept) == offsets.KEPT_READERS
    assert (kafka_bootstrap, f"g-kept-many-{offsets.KEPT_READERS + 1}") in offsets._kept


def test_read_range_returns_exactly_the_range(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=2)
    produce_to_partitions(kafka_bootstrap, topic, {0: 30, 1: 3})
    read = read_range(kafka_bootstrap, topic, 0, 10, 25)
    assert [r.offset for r in read.records] == list(range(10, 25))
    assert [r.value for r in read.records] == [f"p0-{i}".encode() for i in range(10, 25)]
    assert read.records[0].timestamp_ms == 1_790_000_000_010
    assert read.missing_offsets == 0
    assert read_range(kafka_bootstrap, topic, 1, 3, 3).records == []


def test_read_range_past_the_log_end_returns_what_exists(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=1)
    produce_to_partitions(kafka_bootstrap, topic, {0: 5})
    read = read_range(kafka_bootstrap, topic, 0, 2, 8, timeout=10)
    assert [r.offset for r in read.records] == [2, 3, 4]
    assert read.missing_offsets == 0
    # The read says it ended at the log end, so the run commits 5, not the range's end.
    assert read.stopped_at == 5
    assert read_range(kafka_bootstrap, topic, 0, 5, 8, timeout=10).stopped_at == 5


def test_a_partition_eof_below_the_high_watermark_is_waited_out_not_skipped(
        kafka_bootstrap, make_topic):
    """An open transaction holds records 5..9 in the log (high watermark 10) that a read_committed
    reader cannot see yet: its fetch reaches PARTITION_EOF at 5. The read waits; the records
    arrive when the transaction commits, and none is counted missing."""
    topic = make_topic(partitions=1)
    produce_to_partitions(kafka_bootstrap, topic, {0: 5})
    transactional = Producer({"bootstrap.servers": kafka_bootstrap,
                              "transactional.id": f"test-{topic}"})
    transactional.init_transactions(30)
    transactional.begin_transaction()
    for i in range(5):
        transactional.produce(topic, value=f"t{i}".encode(), partition=0)
    assert transactional.flush(30) == 0
    committer = threading.Timer(1.0, transactional.commit_transaction)
    committer.start()
    try:
        read = read_range(kafka_bootstrap, topic, 0, 0, 10, stall_seconds=10)
    finally:
        committer.join()
    assert [r.offset for r in read.records] == list(range(10))
    assert read.records[-1].value == b"t4"
    assert (read.missing_offsets, read.stopped_at) == (0, None)


def produce_one_batch_each(bootstrap: str, topic: str, count: int, size: int = 1_000) -> None:
    """`count` records on partition 0, each in its own record batch (flushed one by one)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    for i in range(count):
        producer.produce(topic, value=f"{i:06d}".encode() + b"x" * (size - 6), partition=0)
        assert producer.flush(30) == 0


# A fetch asks for more bytes than one response may carry, so the broker answers each fetch
# after fetch.wait.max.ms with one record batch: the records arrive one by one, paced.
def paced(wait_ms: int) -> dict:
    return {"fetch.min.bytes": 10_000_000, "fetch.wait.max.ms": wait_ms,
            "max.partition.fetch.bytes": 1}


def test_a_slow_read_that_keeps_progressing_never_times_out(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=1)
    produce_one_batch_each(kafka_bootstrap, topic, 8)
    began = time.monotonic()
    read = read_range(kafka_bootstrap, topic, 0, 0, 8, stall_seconds=1.5,
                      consumer_settings=paced(400))
    took = time.monotonic() - began
    assert [r.offset for r in read.records] == list(range(8))
    assert took > 2 * 1.5  # the whole range took longer than the stall limit, twice over


def test_a_read_fails_when_no_record_arrives_for_stall_seconds(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=1)
    produce_one_batch_each(kafka_bootstrap, topic, 3)
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"{topic}\[0\] 0..3: no record for .* at offset 0"):
        read_range(kafka_bootstrap, topic, 0, 0, 3, stall_seconds=0.3,
                   consumer_settings=paced(3_000))
    assert time.monotonic() - began < 2.5  # it gave up before the first record came


def test_max_bytes_stops_before_the_record_that_would_pass_it(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=1)
    produce_one_batch_each(kafka_bootstrap, topic, 10)
    read = read_range(kafka_bootstrap, topic, 0, 2, 10, max_bytes=3_500)
    assert [r.offset for r in read.records] == [2, 3, 4]
    assert (read.value_bytes, read.stopped_at, read.missing_offsets) == (3_000, 5, 0)
    # The first record is read whatever its size, unless told otherwise.
    assert [r.offset for r in read_range(kafka_bootstrap, topic, 0, 2, 10, max_bytes=10).records] == [2]
    nothing = read_range(kafka_bootstrap, topic, 0, 2, 10, max_bytes=10, first_record_always=False)
    assert (nothing.records, nothing.stopped_at) == ([], 2)
    whole = read_range(kafka_bootstrap, topic, 0, 2, 10, max_bytes=8_000)
    assert (len(whole.records), whole.stopped_at) == (8, None)


def test_a_range_below_the_log_start_says_where_the_log_starts(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=1)
    produce_one_batch_each(kafka_bootstrap, topic, 10)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept until the answer
    [deleted] = admin.delete_records([TopicPartition(topic, 0, 4)]).values()
    deleted.result(30)
    read = read_range(kafka_bootstrap, topic, 0, 2, 10)
    assert [r.offset for r in read.records] == list(range(4, 10))
    assert (read.log_start, read.missing_offsets) == (4, 2)


def test_results_wait_for_room_when_the_producer_buffer_is_full(kafka_bootstrap, make_topic):
    """A bounded buffer (64 KB here) makes send() wait for deliveries, never drop or fail."""
    topic = make_topic(partitions=1)
    producer = ResultsProducer(kafka_bootstrap, client_id="buffer-test", buffer_kbytes=64)
    records = [(f"k{i}".encode(), f"{i:06d}".encode() + b"x" * 2_000) for i in range(300)]

    assert producer.send(topic, iter(records)) == 300  # 600 KB through a 64 KB buffer
    producer.flush()

    read = read_range(kafka_bootstrap, topic, 0, 0, 300)
    assert [r.value[:6] for r in read.records] == [f"{i:06d}".encode() for i in range(300)]
    assert read.missing_offsets == 0
