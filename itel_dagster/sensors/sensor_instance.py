"""The Dagster instance our sensors read runs and events from, kept for the code server's life.

`SensorEvaluationContext.instance` builds a new DagsterInstance from the daemon's instance ref for
every evaluation, every storage rehydrated, and disposes of it after the tick: with two worker
sensors ticking every few seconds it was the largest share of the code server's CPU (py-spy over
`itel-dagster bench`'s catch-up). One instance per ref serves every tick instead, as the
webserver's one instance serves all its requests; storages open their connections per query.
"""

from __future__ import annotations

import threading

import dagster as dg

_lock = threading.Lock()
_instances: dict[str, dg.DagsterInstance] = {}


def sensor_instance(context: dg.SensorEvaluationContext) -> dg.DagsterInstance:
    ref = context.instance_ref
    if ref is None:  # a context built around an instance (build_sensor_context in tests)
        return context.instance
    key = dg.serialize_value(ref)
    with _lock:
        instance = _instances.get(key)
        if instance is None:
            instance = _instances[key] = dg.DagsterInstance.from_ref(ref)
        return instance
