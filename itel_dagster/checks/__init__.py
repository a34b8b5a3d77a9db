"""Asset checks of the two tables (uniqueness, completeness against Kafka, freshness, sends), the
job that runs them and its schedule. Checks only read: never a Delta write, a commit or a send.
"""
