"""Resources own all I/O of the pipeline: Kafka, the ClaimX and iTel APIs, the lookup cache, Delta."""
