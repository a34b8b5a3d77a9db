"""CPU seconds (user + system) a process has used so far, from getrusage or /proc (Linux)."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def cpu_seconds(pid: int | None = None) -> float:
    """This process's CPU seconds, or those of process `pid`."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
