"""Kafka transport of the workers: group progress and commits, range reads, result publishing.

Nothing here decides what to process; the sensors and runs do.
"""
