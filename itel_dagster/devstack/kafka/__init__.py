"""The local Apache Kafka broker (KRaft) of the dev stack and its topics."""
