"""Alerts to a webhook: what an alert says (messages) and how it is posted (webhook).

The sensors that raise them are in itel_dagster/sensors/; nothing here may break a pipeline run.
"""
