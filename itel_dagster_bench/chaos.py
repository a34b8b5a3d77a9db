"""The chaos soak: both workers drain a backlog on a real stack (broker, simulators, code server
and `dagster-daemon run`, see crash_stack.py) while run processes, the daemon and the broker are
killed with SIGKILL on a schedule. After each kill it waits until the groups move again (the
recovery time); at the end, until both groups are at the end of everything published, then it
checks what survived against the ground truth and prints a table and JSON. It stops by itself:
after `kills` kills and the drain, or at `deadline_seconds`.

    itel-dagster chaos [--events 5000] [--kills 10] [--json chaos.json]
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from itel_dagster_bench.crash_stack import WORKERS, Batch, CrashStack, Invariants
from itel_dagster_bench.seed_workers import API_WORKER
from itel_dagster.kafka.offsets import GroupProgressReader
from itel_dagster.resources.itel_api import ROUND_EVENTS_PER_CONNECTION
from itel_dagster.settings.connections import load_itel_connection

# The order kills come in, again and again: mostly run processes, every third a daemon or broker.
SCHEDULE = ("run", "run", "daemon", "run", "run", "broker")


@dataclass
class Kill:
    number: int
    action: str  # run, daemon, broker
    at_seconds: float  # since the soak began
    killed: str  # what died: run ids and workers, or the process
    recovery_seconds: float | None = None  # kill -> every group with work committing again


@dataclass
class SoakResult:
    events: int
    kills: list[Kill] = field(default_factory=list)
    drain_seconds: float | None = None
    invariants: Invariants | None = None
    max_re_posts: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


class _Progress:
    """Both groups' committed offsets (summed over partitions), read with kept consumers."""

    def __init__(self, stack: CrashStack):
        self._workers = [stack.workers[w] for w in WORKERS]
        self._readers = {w.name: GroupProgressReader(stack.bootstrap, w.consumer_group)
                         for w in self._workers}

    def committed(self) -> dict[str, tuple[int, int]]:
        """worker -> (records committed, lag)."""
        found = {}
        for worker in self._workers:
            progress = self._readers[worker.name].read(worker.input_topic)
            found[worker.name] = (sum(p.committed or 0 for p in progress),
                                  sum(p.lag for p in progress))
        return found

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()


def _round_size() -> int:
    """The API worker's send round in the stack's config (its env is exported by the stack)."""
    connection = load_itel_connection()
    return (connection.send_round_size
            or connection.max_concurrency * ROUND_EVENTS_PER_CONNECTION)


def _wait_recovered(progress: _Progress, before: dict[str, tuple[int, int]], began: float,
                    timeout: float, check) -> float | None:
    """Seconds from `began` until every group that had work then committed past where it stood
    (or has nothing left); None past `timeout`."""
    deadline = time.monotonic() + timeout
    waiting = {w for w, (_, lag) in before.items() if lag}
    while waiting and time.monotonic() < deadline:
        now = progress.committed()
        waiting = {w for w in waiting if now[w][0] <= before[w][0] and now[w][1]}
        if waiting:
            check()
            time.sleep(0.25)
    return None if waiting else round(time.monotonic() - began, 1)


def _kill(stack: CrashStack, action: str) -> tuple[str, int]:
    """Does the kill; (what died, how many API runs died with it)."""
    if action == "run":
        stack.wait_for_started_run(timeout=60)
        died = stack.kill_runs()
        what = ", ".join(f"{r.worker} run {r.run_id[:8]}" for r in died) or "no run (all ended)"
    elif action == "daemon":
        died = stack.restart_daemon()
        what = f"daemon, with {len(died)} live runs"
    else:
        stack.restart_broker()
        died, what = [], "broker"
    return what, sum(1 for r in died if r.worker == API_WORKER)


def soak(stack: CrashStack, events: int = 5_000, kills: int = 10, pause_seconds: float = 3.0,
         deadline_seconds: float = 1_500.0, say=print) -> SoakResult:
    """On a started stack: publishes `events` in `kills` + 1 parts (one up front, one before
    each kill, so every kill meets work), kills on SCHEDULE, then drains and checks."""
    result = SoakResult(events=events)
    began = time.monotonic()
    parts = [events // (kills + 1)] * (kills + 1)
    parts[0] += events - sum(parts)
    progress = _Progress(stack)
    try:
        batches: list[Batch] = [stack.publish(parts[0])]
        say(f"published {parts[0]} events; {kills} kills to come")
        killed_api_runs = 0
        for number in range(1, kills + 1):
            if time.monotonic() - began > deadline_seconds:
                result.failures.append(f"deadline {deadline_seconds:.0f} s reached after "
                                       f"{number - 1} kills")
                break
            time.sleep(pause_seconds)
            batches.append(stack.publish(parts[number]))
            action = SCHEDULE[(number - 1) % len(SCHEDULE)]
            before = progress.committed()
            at = time.monotonic()
            what, api_runs = _kill(stack, action)
            killed_api_runs += api_runs
            kill = Kill(number, action, round(at - began, 1), what)
            kill.recovery_seconds = _wait_recovered(progress, before, at, 300,
                                                    stack.daemon.check_alive)
            result.kills.append(kill)
            say(f"kill {number:>2}: {action:6} {what}; recovered in {kill.recovery_seconds} s")
    finally:
        progress.close()
    everything = Batch(tuple(r for b in batches for r in b.records), batches[-1].target,
                       batches[0].published_at)
    remaining = max(60.0, deadline_seconds - (time.monotonic() - began))
    stack.wait_drained(everything, timeout=remaining)
    result.drain_seconds = round(time.monotonic() - began, 1)
    result.invariants = stack.check(everything)
    result.max_re_posts = _round_size() * max(killed_api_runs, 1)
    result.failures += result.invariants.failures(result.max_re_posts)
    if len(result.kills) < kills:
        result.failures.append(f"{len(result.kills)} kills of {kills}")
    return result


def report(result: SoakResult) -> str:
    lines = [f"{'#':>2} {'kill':7} {'at s':>7} {'recovery s':>10}  what died"]
    for k in result.kills:
        recovery = "-" if k.recovery_seconds is None else f"{k.recovery_seconds:.1f}"
        lines.append(f"{k.number:>2} {k.action:7} {k.at_seconds:>7.1f} {recovery:>10}  {k.killed}")
    inv = result.invariants
    if inv is not None:
        lines += [
            "",
            f"events {inv.events}, drained in {result.drain_seconds} s",
            f"lost {inv.lost} (Delta {inv.lost_delta_rows}, iTel {inv.lost_itel_sends}, "
            f"result records {inv.lost_results})",
            f"duplicate Delta rows {inv.duplicate_delta_rows}, duplicate result records "
            f"(read_committed) {inv.duplicate_results}, lag {inv.lag}",
            f"re-POSTs {inv.re_posts} (bound {result.max_re_posts})",
        ]
    lines.append("PASSED" if result.passed else "FAILED: " + "; ".join(result.failures))
    return "\n".join(lines)


def as_json(result: SoakResult) -> dict:
    recoveries = [k.recovery_seconds for k in result.kills if k.recovery_seconds is not None]
    return {
        "events": result.events,
        "passed": result.passed,
        "failures": result.failures,
        "drain_seconds": result.drain_seconds,
        "max_re_posts": result.max_re_posts,
        "recovery_seconds_max": max(recoveries, default=None),
        "kills": [asdict(k) for k in result.kills],
        "invariants": asdict(result.invariants) if result.invariants else None,
    }


def run_soak(events: int, kills: int, json_path: Path | None, keep: bool, say=print) -> bool:
    work = Path(tempfile.mkdtemp(prefix="itel-chaos-"))
    try:
        with CrashStack(work, send_round_size=None) as stack:
            result = soak(stack, events=events, kills=kills, say=say)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    say(report(result))
    document = as_json(result)
    say(json.dumps(document))
    if json_path is not None:
        json_path.write_text(json.dumps(document, indent=2) + "\n")
    return result.passed
