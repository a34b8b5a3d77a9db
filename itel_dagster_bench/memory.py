"""Peak memory of the Dagster daemon, its code server and each run process, from /proc (Linux).

A thread polls the process trees under the daemon and the code server and keeps each process's
VmHWM (its peak RSS so far, which the kernel keeps). A run that grows and exits between two polls
shows the peak of its last poll, so polls are frequent. It only reads /proc; it never signals a
process.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from itel_dagster.metrics.process_memory import peak_rss_kb
from itel_dagster.metrics.process_stat import stat_fields

DAEMON, CODE_SERVER, RUN, FORK_SERVER, OTHER = (
    "daemon", "code_server", "run", "fork_server", "other")


@dataclass
class ProcessPeak:
    pid: int
    role: str
    peak_kb: int = 0
    parent: int | None = None
    first_seen: float = 0.0  # time.time() of the first and the last poll that saw it
    last_seen: float = 0.0


def _stat_ppid(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def process_role(pid: int, root: int, code_server: int | None = None) -> str:
    if pid == root:
        return DAEMON
    if pid == code_server:
        return CODE_SERVER
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return OTHER
    # WarmForkRunLauncher: runs are forks of the warm process, so they share its command line;
    # the warm process is the one whose parent is not another of its kind.
    if "run_fork_server" in command:
        parent = _stat_ppid(pid)
        try:
            parent_command = Path(f"/proc/{parent}/cmdline").read_bytes() if parent else b""
        except OSError:
            parent_command = b""
        return RUN if b"run_fork_server" in parent_command else FORK_SERVER
    # The code server starts each run as a multiprocessing child (DefaultRunLauncher); other
    # launchers use `dagster api execute_run`.
    if "spawn_main" in command or "execute_run" in command or "resume_run" in command:
        return RUN
    if "grpc" in command or "code-server" in command:
        return CODE_SERVER
    return OTHER


def descendants(*roots: int) -> set[int]:
    """The roots and every process under them, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _stat_ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


@dataclass
class MemorySampler:
    root_pid: int  # the daemon: runs are launched under it
    code_server_pid: int | None = None  # a code server started apart from the daemon
    interval_seconds: float = 0.3
    peaks: dict[int, ProcessPeak] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "MemorySampler":
        self._thread = threading.Thread(target=self._poll, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_seconds)

    def sample(self) -> None:
        roots = [p for p in (self.root_pid, self.code_server_pid) if p is not None]
        pids = descendants(*roots)
        for pid in pids:
            hwm = peak_rss_kb(pid)
            if hwm is None:
                continue
            with self._lock:
                peak = self.peaks.get(pid)
                if peak is None:
                    role = process_role(pid, self.root_pid, self.code_server_pid)
                    peak = self.peaks[pid] = ProcessPeak(pid, role,
                                                         parent=_stat_ppid(pid),
                                                         first_seen=time.time())
                peak.peak_kb = max(peak.peak_kb, hwm)
                peak.last_seen = time.time()

    def reset_runs(self) -> None:
        """Forget run processes seen so far (a new phase measures its own runs)."""
        with self._lock:
            self.peaks = {pid: p for pid, p in self.peaks.items() if p.role != RUN}

    def peak_mb(self, role: str) -> float | None:
        with self._lock:
            values = [p.peak_kb for p in self.peaks.values() if p.role == role]
        return round(max(values) / 1024, 1) if values else None

    def run_peaks_mb(self) -> dict[int, float]:
        """pid -> peak RSS (MB) of every run process seen."""
        with self._lock:
            return {pid: round(p.peak_kb / 1024, 1) for pid, p in self.peaks.items()
                    if p.role == RUN}

    def run_processes(self) -> list[ProcessPeak]:
        with self._lock:
            return [p for p in self.peaks.values() if p.role == RUN]

    def count(self, role: str) -> int:
        with self._lock:
            return sum(1 for p in self.peaks.values() if p.role == role)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
