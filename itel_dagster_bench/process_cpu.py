"""CPU seconds (user + system) a process has used so far, from getrusage or /proc (Linux)."""

from __future__ import annotations

import resource

from itel_dagster.metrics.process_stat import TICKS_PER_SECOND, stat_fields


def stat_cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def cpu_seconds(pid: int | None = None) -> float:
    """This process's CPU seconds, or those of process `pid`."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(f"no process {pid}")
    return stat_cpu_seconds(fields)
