"""Fields of /proc/<pid>/stat (Linux): a process's state, parent, CPU time and start time.

One reader for the run launcher (a run's process identity is its pid plus its start time, so a
reused pid is never mistaken for the run) and the bench's CPU and memory samplers. Read only.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from its state on ([0] state, [1] ppid, [11] utime, [12] stime,
    [19] starttime), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return text[text.rindex(")") + 2:].split()


def start_ticks(fields: list[str]) -> int:
    """When the process started, in clock ticks after boot (stat field 22): with the pid, it
    names one process for as long as the machine runs."""
    return int(fields[19])
