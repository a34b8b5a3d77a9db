"""Alerts to a webhook: what an alert says (messages) and how it is posted (webhook).

The sensors that raise them are in itel_dagster/sensors/ (a run that finds records lost to
retention posts its own: ops/retention_loss.py); nothing here may break a pipeline run.
"""
