"""Prometheus metrics of both workers: counters kept in a SQLite file that every run process adds
to, rendered with prometheus_client by `itel-dagster metrics serve`. Recording never fails a run.
"""
