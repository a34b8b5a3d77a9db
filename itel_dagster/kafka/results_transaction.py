"""A run's success and error records and its offset commit, in one Kafka transaction.

Readers with `isolation.level=read_committed` (librdkafka's default) see a run's result records
exactly when its offsets are committed: a run that dies or fails mid-publish leaves records that
no such reader ever sees, and its retry publishes them again in a transaction of its own.

The `transactional.id` names the worker's consumer group and lane, the unit the sensor never runs
twice at once. `init_transactions` fences every older producer of that id at the broker: a zombie
run of the lane (one Dagster took for dead, still running) can no longer commit anything, and an
open transaction that a dead run left behind is aborted at once rather than holding
read_committed readers back until `transaction.timeout.ms`.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from itel_dagster.kafka.client_config import KafkaTarget
from itel_dagster.kafka.offsets import group_consumer
from itel_dagster.kafka.results_producer import DeliveryFailed, ResultsProducer

TRANSACTION_TIMEOUT_MS = 60_000
_FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


class Fenced(RuntimeError):
    """A newer producer of the same transactional id exists: this one may commit nothing."""


def transactional_id(group: str, topic: str, lanes: set[int]) -> str:
    return f"itel-dagster.{group}.{topic}.lane-{'-'.join(str(lane) for lane in sorted(lanes))}"


class ResultsTransaction(ResultsProducer):
    """Opened: the id is registered and older producers of it fenced. Then `begin()`, `send()`
    records, and `commit()` them with the group's offsets, or `abort()`."""

    def __init__(self, bootstrap_servers: KafkaTarget, transactional_id: str, client_id: str,
                 timeout: float = 30.0):
        super().__init__(bootstrap_servers, client_id=client_id,
                         **{"transactional.id": transactional_id,
                            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS})
        self.transactional_id = transactional_id
        self._bootstrap_servers = bootstrap_servers
        self._call(self._producer.init_transactions, timeout)

    def begin(self) -> None:
        self._call(self._producer.begin_transaction)

    def commit(self, group: str, topic: str, next_offsets: dict[int, int],
               timeout: float = 60.0) -> None:
        """Commits the records sent and `partition -> next offset` for `group` atomically.
        Raises Fenced, DeliveryFailed or KafkaException; on any but Fenced the transaction is
        aborted, so nothing of it is ever visible."""
        try:
            if self._failures:
                failures, self._failures = self._failures, []
                raise DeliveryFailed(f"{len(failures)} result records failed: {failures[:3]}")
            if next_offsets:
                consumer = group_consumer(self._bootstrap_servers, group)
                try:
                    metadata = consumer.consumer_group_metadata()
                    self._call(self._producer.send_offsets_to_transaction,
                               [TopicPartition(topic, p, o) for p, o in next_offsets.items()],
                               metadata, timeout)
                finally:
                    consumer.close()
            self._call(self._producer.commit_transaction, timeout)
        except Fenced:
            raise
        except Exception:
            self.abort()
            raise

    def abort(self, timeout: float = 30.0) -> None:
        try:
            self._producer.abort_transaction(timeout)
        except KafkaException:
            pass  # fatal or no transaction open: the broker aborts it (or a newer producer did)

    def _call(self, method, *args):
        try:
            return method(*args)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() in _FENCED_CODES:
                raise Fenced(
                    f"transactional id {self.transactional_id} was taken over by a newer run "
                    f"of the lane: this run may commit nothing ({error.str()})") from exc
            raise
