"""The Kafka cluster of the pipeline as a Dagster resource (KAFKA_BOOTSTRAP_SERVERS, else the
local dev broker), read at run time so the code location loads without a broker."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import date

import dagster as dg

from itel_dagster.kafka.client_config import KafkaAccessDenied
from itel_dagster.kafka.day_window import DayWindow, day_windows
from itel_dagster.kafka.offsets import commit_offsets, group_progress
from itel_dagster.kafka.range_reader import READ_STALL_SECONDS, RangeRead, read_range
from itel_dagster.kafka.results_producer import ResultsProducer
from itel_dagster.kafka.results_transaction import ResultsTransaction
from itel_dagster.settings.kafka import bootstrap_servers as configured_bootstrap_servers


@contextmanager
def _refusal_fails_the_step():
    """A refused login or certificate fails the step at once with its one-line reason: the
    ops' retry policies would only repeat it."""
    try:
        yield
    except KafkaAccessDenied as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


class KafkaResource(dg.ConfigurableResource):
    bootstrap_servers: str | None = None

    def servers(self) -> str:
        return self.bootstrap_servers or configured_bootstrap_servers()

    def read_range(self, topic: str, partition: int, start: int, end: int,
                   stall_seconds: float = READ_STALL_SECONDS, max_bytes: int | None = None,
                   first_record_always: bool = True, fetch_records: int = 10_000) -> RangeRead:
        with _refusal_fails_the_step():
            return read_range(self.servers(), topic, partition, start, end,
                              stall_seconds=stall_seconds, max_bytes=max_bytes,
                              first_record_always=first_record_always,
                              fetch_records=fetch_records)

    def results_producer(self, client_id: str) -> ResultsProducer:
        with _refusal_fails_the_step():
            return ResultsProducer(self.servers(), client_id=client_id)

    def results_transaction(self, transactional_id: str, client_id: str) -> ResultsTransaction:
        with _refusal_fails_the_step():
            return ResultsTransaction(self.servers(), transactional_id, client_id=client_id)

    def commit(self, group: str, topic: str, next_offsets: dict[int, int]) -> dict[int, int]:
        with _refusal_fails_the_step():
            return commit_offsets(self.servers(), group, topic, next_offsets)

    def progress(self, group: str, topic: str):
        with _refusal_fails_the_step():
            return group_progress(self.servers(), group, topic)

    def day_windows(self, topic: str, day: date) -> list[DayWindow]:
        with _refusal_fails_the_step():
            return day_windows(self.servers(), topic, day)
