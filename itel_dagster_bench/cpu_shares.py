"""Where the machine's CPU went during the catch-up: CPU seconds (user + system) of each kind of
process from the daemon's start until a group reached lag 0, next to what the cores offered.

The catch-up ratio compares a worker running alone in one process with both workers running
through Dagster at once, on the same cores as the simulators and the broker. These figures show
how the cores were shared: each worker's runs, the simulators, the broker, the daemon, the code
server, the warm fork server and the bench itself.

It reads /proc only (Linux). It follows the daemon's and the code server's process trees and the
processes it is given by name. A process that exits between two polls loses the CPU it used
after the last one, so the runs' figures are lower bounds, by at most one poll each.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from itel_dagster_bench.memory import RUN, descendants, process_role
from itel_dagster_bench.process_cpu import stat_cpu_seconds
from itel_dagster.metrics.process_stat import TICKS_PER_SECOND, stat_fields

def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def _cpu_and_start(pid: int, boot_time: float) -> tuple[float, float] | None:
    """(CPU seconds used, epoch seconds it started at), or None when it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return stat_cpu_seconds(fields), boot_time + int(fields[19]) / TICKS_PER_SECOND


@dataclass
class _Seen:
    role: str
    baseline: float  # CPU seconds already used when the window opened (0 if born after)
    last: float  # CPU seconds at the last poll that saw it


@dataclass
class CpuSampler:
    """CPU seconds per process from `since` (epoch seconds) on. named: pid -> role of processes
    followed alone (not their children), such as the simulators, the broker and this process."""

    since: float
    daemon_pid: int
    code_server_pid: int | None = None
    named: dict[int, str] = field(default_factory=dict)
    interval_seconds: float = 0.5
    seen: dict[int, _Seen] = field(default_factory=dict)
    _boot_time: float = field(default_factory=_boot_time)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> CpuSampler:
        self.sample()
        self._thread = threading.Thread(target=self._poll, name="bench-cpu", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.sample()

    def sample(self) -> None:
        roots = [p for p in (self.daemon_pid, self.code_server_pid) if p is not None]
        for pid in descendants(*roots) | set(self.named):
            found = _cpu_and_start(pid, self._boot_time)
            if found is None:
                continue
            used, started_at = found
            with self._lock:
                known = self.seen.get(pid)
                if known is None:
                    role = self.named.get(pid) or process_role(pid, self.daemon_pid,
                                                               self.code_server_pid)
                    # Started before the window: only what it uses from now on counts.
                    baseline = used if started_at < self.since - 1 else 0.0
                    known = self.seen[pid] = _Seen(role, baseline, used)
                known.last = used

    def used(self) -> dict[int, tuple[str, float]]:
        """pid -> (role, CPU seconds used in the window so far), after a fresh poll."""
        self.sample()
        with self._lock:
            return {pid: (s.role, s.last - s.baseline) for pid, s in self.seen.items()}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def cpu_shares(used: dict[int, tuple[str, float]], run_workers: dict[int, str], seconds: float,
               cores: int) -> dict[str, float]:
    """CPU seconds by kind: '<worker>_runs' for run processes whose pid a run of that worker
    names (run_workers: pid -> worker), 'other_runs' for the rest (asset checks, a spare that
    waited), then each other role; 'available' is seconds x cores."""
    shares: dict[str, float] = {}
    for pid, (role, seconds_used) in used.items():
        kind = f"{run_workers[pid]}_runs" if pid in run_workers else (
            "other_runs" if role == RUN else role)
        shares[kind] = shares.get(kind, 0.0) + seconds_used
    shares = {kind: round(value, 1) for kind, value in sorted(shares.items())}
    shares["available"] = round(seconds * cores, 1)
    return shares
