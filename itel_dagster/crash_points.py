"""Crash points: named places in the workers' commit sequences where a test or the chaos soak can
make the run process die by SIGKILL, as a lost node or the kernel's OOM killer would.

Off by default. Only when `ITEL_CRASH_POINTS_FILE` names a file does `crash_point` read it: one
armed point per line, `<worker>:<point>` (for example `api:after_post_round`). The first run
process of that worker to reach the point removes the line, appends it to `<file>.fired` with its
pid and the time, and kills itself. A point fires once per line written, so the run that goes
again over the same range passes it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

CRASH_POINTS_ENV = "ITEL_CRASH_POINTS_FILE"

# Every point of the commit sequences, in the order a run reaches them.
POINTS = (
    "after_read",          # both workers: records read, nothing written
    "after_delta_write",   # tracking: rows in Delta, no result published
    "after_post_round",    # api: a round POSTed, its ledger rows not written
    "mid_publish",         # both: some result records handed to Kafka, none committed
    "before_commit",       # both: every result record handed to Kafka, offsets not committed
)


def crash_point(point: str, worker: str) -> None:
    """Dies here by SIGKILL when `<worker>:<point>` is armed; otherwise returns at once."""
    path = os.environ.get(CRASH_POINTS_ENV)
    if not path:
        return
    if _claim(Path(path), f"{worker}:{point}"):
        os.kill(os.getpid(), signal.SIGKILL)


def arm(path: Path, worker: str, point: str) -> None:
    """Arms `<worker>:<point>` once more in the file `path`."""
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
    with _locked(path) as handle:
        handle.seek(0, os.SEEK_END)
        handle.write(f"{worker}:{point}\n")


def fired(path: Path) -> list[str]:
    """The `<worker>:<point>` lines that fired so far, oldest first."""
    fired_path = Path(f"{path}.fired")
    if not fired_path.exists():
        return []
    return [line.split()[0] for line in fired_path.read_text().splitlines() if line.strip()]


def fired_times(path: Path) -> list[tuple[str, float]]:
    """(`<worker>:<point>`, time.time() it fired) of each line that fired, oldest first."""
    fired_path = Path(f"{path}.fired")
    if not fired_path.exists():
        return []
    return [(line.split()[0], float(line.rsplit("at=", 1)[1]))
            for line in fired_path.read_text().splitlines() if line.strip()]


def armed(path: Path) -> list[str]:
    """The lines still armed."""
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _claim(path: Path, line: str) -> bool:
    if not path.exists():
        return False
    with _locked(path) as handle:
        lines = handle.read().splitlines()
        if line not in lines:
            return False
        lines.remove(line)
        handle.seek(0)
        handle.truncate()
        handle.write("".join(f"{kept}\n" for kept in lines))
        with open(f"{path}.fired", "a", encoding="utf-8") as record:
            record.write(f"{line} pid={os.getpid()} at={time.time():.3f}\n")
            record.flush()
            os.fsync(record.fileno())
        handle.flush()
        os.fsync(handle.fileno())
    return True


class _locked:
    """The file opened for reading and writing under an exclusive lock (created if missing)."""

    def __init__(self, path: Path):
        self._path = path

    def __enter__(self):
        self._handle = open(self._path, "a+", encoding="utf-8")
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        self._handle.seek(0)
        return self._handle

    def __exit__(self, *_exc):
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
