"""`itel-dagster bench` end to end, in one run so the figures compare side by side: publish a
backlog, the in-process limit of each worker, the Dagster path's catch-up, latency at a steady
rate, per-run overhead, memory, ClaimX requests per event, and correctness of all of it.

Everything runs on a private stack (bench/stack.py); a failed check or a wait that runs out makes
the result a failure, never a figure.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from confluent_kafka import Producer
from tqdm import tqdm

from itel_dagster_bench.claimx_bound import requests_bound
from itel_dagster_bench.correctness import Check, check_all, read_table
from itel_dagster_bench.cpu_shares import CpuSampler, cpu_shares
from itel_dagster_bench.dagster_path import (
    DagsterDaemon,
    RunFacts,
    between_runs,
    run_facts,
    wait_until_caught_up,
)
from itel_dagster_bench.ground_truth import end_offsets, read_input
from itel_dagster_bench.in_process import in_process_settings, run_in_process
from itel_dagster_bench.latency import itel_latencies, percentiles, tracking_latencies
from itel_dagster_bench.memory import CODE_SERVER, DAEMON, FORK_SERVER, RUN, MemorySampler
from itel_dagster_bench.stack import BenchStack, StackChoices
from itel_dagster.launchers.warm_fork_run_launcher import RUN_PID_TAG
from itel_dagster.devstack.publisher.events import live_records
from itel_dagster.devstack.publisher.publish import publish_events
from itel_dagster.kafka.client_config import client_config
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster_bench.seed_workers import API_WORKER, TRACKING_WORKER
from itel_dagster.settings.workers import load_workers

SHORT = {TRACKING_WORKER: "tracking", API_WORKER: "api"}


@dataclass(frozen=True)
class BenchOptions:
    events: int = 100_000
    bad_fraction: float = 0.02
    days: float = 3.0
    seed: int = 0
    latency_ms: float = 20.0
    steady_rate: float = 20.0
    steady_seconds: float = 120.0
    overhead_runs: int = 3
    itel_rate_limit: float = 1000.0
    sensor_interval_seconds: int | None = None
    dagster_yaml: Path = PROJECT_ROOT / "dagster.yaml"
    catch_up_timeout: float = 3600.0
    work_dir: Path | None = None
    keep_work: bool = False
    progress: bool = True
    smoke: bool = False


@dataclass
class BenchRun:
    options: BenchOptions
    figures: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    error_traceback: str | None = None
    work_dir: Path | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.passed for c in self.checks)


def _bar(options: BenchOptions, total: float | None, desc: str, unit: str = "rec") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not options.progress, leave=False,
                smoothing=0.1)


def _phase_in_process(run: BenchRun, stack: BenchStack, backlog, workers) -> None:
    results = {}
    for worker in workers:
        with _bar(run.options, len(backlog), f"in-process {SHORT[worker.name]}") as bar:
            result = run_in_process(stack.bootstrap, worker, stack.work / "inprocess/delta",
                                    stack.work / "inprocess", bar.update)
        results[SHORT[worker.name]] = {
            "records": result.records, "seconds": round(result.seconds, 3),
            "events_per_second": round(result.events_per_second, 1),
            "claimx_requests_per_event": round(result.claimx_requests / max(1, result.records), 4),
            "stage_seconds": {k: round(v, 3) for k, v in result.stage_seconds.items()},
        }
    run.figures["in_process"] = results
    checks = check_all(backlog, stack.bootstrap, stack.work / "inprocess/delta",
                       in_process_settings(workers[0]), in_process_settings(workers[1]),
                       stack.itel_requests())
    run.checks += [Check(f"in-process: {c.name}", c.passed, c.detail) for c in checks]


def stack_cpu_sampler(stack: BenchStack, daemon: DagsterDaemon) -> CpuSampler:
    """CPU seconds from the daemon's start: its process trees, the stack's processes, the bench."""
    return CpuSampler(daemon.started_at, daemon.process.pid, daemon.code_server.pid,
                      {**stack.processes(), os.getpid(): "bench"}).start()


def catch_up_figures(runs: list[RunFacts], seconds: float, events: int, limit: float | None,
                     cpu_used: dict, run_workers: dict[int, str]) -> dict:
    """One worker's catch-up: `events` in `seconds` from the daemon's start to lag 0 over its
    `runs`; limit: its in-process events/s; cpu_used: CpuSampler.used() when it got there."""
    per_second = events / seconds
    return {
        "seconds": round(seconds, 3), "events_per_second": round(per_second, 1),
        "ratio_to_in_process": round(per_second / limit, 3) if limit else None,
        "runs": len(runs), "failed_runs": sum(r.status == "FAILURE" for r in runs),
        **between_runs(runs),
        # From the daemon's start until this group got to lag 0 (bench/cpu_shares.py).
        "cpu_seconds": cpu_shares(cpu_used, run_workers, seconds, os.cpu_count() or 1),
    }


def _phase_catch_up(run: BenchRun, stack: BenchStack, daemon: DagsterDaemon,
                    sampler: MemorySampler, targets: dict[int, int], workers) -> None:
    total = sum(targets.values())
    cpu = stack_cpu_sampler(stack, daemon)
    cpu_at_lag_0 = {}  # worker -> CPU seconds of each process when its group got to lag 0
    try:
        with _bar(run.options, 2 * total, "dagster catch-up (both groups)") as bar:
            reached = wait_until_caught_up(
                stack.bootstrap, workers, targets, run.options.catch_up_timeout,
                on_progress=lambda done: bar.update(done - bar.n), check=daemon.check_alive,
                on_reached=lambda worker: cpu_at_lag_0.update({worker: cpu.used()}))
    finally:
        cpu.stop()
    sampler.sample()
    instance = daemon.instance()
    all_runs = [r for w in workers for r in run_facts(instance, w.name)]
    run_workers = {r.pid: SHORT[r.worker] for r in all_runs if r.pid is not None}
    catch_up = {}
    for worker in workers:
        runs = run_facts(instance, worker.name)
        first = min((r.started_at for r in runs if r.started_at), default=None)
        limit = run.figures["in_process"][SHORT[worker.name]]["events_per_second"]
        catch_up[SHORT[worker.name]] = {
            **catch_up_figures(runs, reached[worker.name] - daemon.started_at, total, limit,
                               cpu_at_lag_0[worker.name], run_workers),
            "largest_run_records": max((r.records for r in runs), default=0),
            "daemon_start_to_first_run_seconds":
                round(first - daemon.started_at, 3) if first else None,
        }
    run.figures["catch_up"] = catch_up
    worker_pids = {r.pid for r in all_runs if r.pid is not None}
    others = other_runs(instance, sampler, exclude=worker_pids)
    run.figures["memory_mb"] = {
        # The target's figure: worker runs only (the asset-checks schedule also runs meanwhile).
        "largest_run_process": max((mb for pid, mb in sampler.run_peaks_mb().items()
                                    if pid in worker_pids), default=None),
        "run_processes_seen": sampler.count(RUN),
        "largest_run_records": max(c["largest_run_records"] for c in catch_up.values()),
        **largest_run_by_worker(sampler, all_runs),
        "other_runs": others,
        "unattributed_run_processes": unattributed_runs(
            sampler, worker_pids | {o["pid"] for o in others}, daemon.started_at),
    }


def other_runs(instance, sampler: MemorySampler, exclude: set[int]) -> list[dict]:
    """Runs that are not worker micro-batches (e.g. the asset-checks schedule): job and peak MB."""
    peaks = sampler.run_peaks_mb()
    found = []
    for record in instance.get_run_records():
        pid = record.dagster_run.tags.get(RUN_PID_TAG)
        if pid and int(pid) not in exclude and int(pid) in peaks:
            found.append({"job": record.dagster_run.job_name, "pid": int(pid),
                          "mb": peaks[int(pid)]})
    return sorted(found, key=lambda o: o["mb"], reverse=True)


def unattributed_runs(sampler: MemorySampler, known_pids: set[int], since: float,
                      top: int = 3) -> list[dict]:
    """The largest run-like processes no run's itel/run_pid tag names (to find what they are):
    pid, peak MB, parent pid, and when they were seen (seconds after `since`)."""
    found = sorted((p for p in sampler.run_processes() if p.pid not in known_pids),
                   key=lambda p: p.peak_kb, reverse=True)[:top]
    return [{"pid": p.pid, "mb": round(p.peak_kb / 1024, 1), "parent": p.parent,
             "seen_from_s": round(p.first_seen - since, 1), "seen_to_s": round(p.last_seen - since, 1)}
            for p in found]


def largest_run_by_worker(sampler: MemorySampler, runs) -> dict:
    """Each worker's run process with the highest peak RSS: its MB and records (runs are matched
    to processes by their itel/run_pid tag)."""
    peaks = sampler.run_peaks_mb()
    found = {}
    for facts in runs:
        mb = peaks.get(facts.pid) if facts.pid is not None else None
        key = f"largest_run_{SHORT[facts.worker]}"
        if mb is not None and mb > found.get(key, {}).get("mb", -1):
            found[key] = {"mb": mb, "records": facts.records, "run_id": facts.run_id}
    return found


def _phase_steady(run: BenchRun, stack: BenchStack, daemon: DagsterDaemon, workers) -> None:
    topic = workers[0].input_topic
    start = end_offsets(stack.bootstrap, topic)
    publish_events(stack.bootstrap, topic, count=None, rate_per_second=run.options.steady_rate,
                   bad_fraction=run.options.bad_fraction, duration_seconds=run.options.steady_seconds,
                   seed=run.options.seed, progress=run.options.progress)
    end = end_offsets(stack.bootstrap, topic)
    wait_until_caught_up(stack.bootstrap, workers, end, max(300.0, run.options.steady_seconds * 3),
                         check=daemon.check_alive)
    records = read_input(stack.bootstrap, topic, start=start, end=end)
    tracking = read_table(stack.delta_root / "itel_cabinet_task_tracking",
                          ["event_id", "ingested_at"])
    run.figures["latency"] = {
        "rate_per_second": run.options.steady_rate, "seconds": run.options.steady_seconds,
        "events": len(records),
        "tracking": percentiles(tracking_latencies(records, tracking)),
        "api": percentiles(itel_latencies(records, stack.itel_requests())),
    }


def _publish_one(bootstrap: str, topic: str, seed: str) -> None:
    record = next(live_records(seed=seed))  # the first record of a stream is a valid event
    producer = Producer(client_config(bootstrap, acks="all"))
    producer.produce(topic, key=record.key, value=record.value, timestamp=record.timestamp_ms,
                     headers=record.headers)
    if producer.flush(30):
        raise RuntimeError("the one-record run's record was not delivered")


def _phase_overhead(run: BenchRun, stack: BenchStack, daemon: DagsterDaemon, workers) -> None:
    topic = workers[0].input_topic
    seconds: dict[str, list[float]] = {SHORT[w.name]: [] for w in workers}
    queued: dict[str, list[float]] = {SHORT[w.name]: [] for w in workers}  # created -> end
    with _bar(run.options, run.options.overhead_runs, "one-record runs", unit="run") as bar:
        for sample in range(run.options.overhead_runs):
            before = end_offsets(stack.bootstrap, topic)
            _publish_one(stack.bootstrap, topic, f"bench-overhead-{sample}-{time.time_ns()}")
            after = end_offsets(stack.bootstrap, topic)
            wait_until_caught_up(stack.bootstrap, workers, after, 300.0, check=daemon.check_alive)
            (partition,) = [p for p in after if after[p] != before.get(p, 0)]
            instance = daemon.instance()
            for worker in workers:
                # A run commits before it turns SUCCESS: give its end a moment to be recorded.
                deadline = time.monotonic() + 60
                while not (found := [r for r in run_facts(instance, worker.name)
                                     if r.covers(partition, before[partition])
                                     and r.status == "SUCCESS" and r.seconds is not None]):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                if found:
                    seconds[SHORT[worker.name]].append(found[0].seconds)
                    queued[SHORT[worker.name]].append(found[0].ended_at - found[0].created_at)
            bar.update()
    run.figures["run_overhead"] = {
        worker: {"median_seconds": round(statistics.median(values), 3) if values else None,
                 "max_seconds": round(max(values), 3) if values else None, "samples": len(values),
                 # Requested by the sensor -> finished: adds the queue and the run process launch.
                 "created_to_end_median_seconds":
                     round(statistics.median(queued[worker]), 3) if queued[worker] else None}
        for worker, values in seconds.items()
    }


def _phase_claimx_and_correctness(run: BenchRun, stack: BenchStack, daemon: DagsterDaemon,
                                  workers) -> None:
    topic = workers[0].input_topic
    records = read_input(stack.bootstrap, topic)
    instance = daemon.instance()
    runs = [r for w in workers for r in run_facts(instance, w.name)]
    valid = sum(r.valid for r in records)
    gets = stack.claimx_gets()
    bound = requests_bound(records, runs)
    run.figures["claimx"] = {
        "requests": gets, "valid_events": valid,
        "requests_per_event": round(gets / max(1, valid), 4),
        "bound_per_event": round(bound / max(1, valid), 4),
    }
    run.checks += [Check(f"dagster: {c.name}", c.passed, c.detail) for c in
                   check_all(records, stack.bootstrap, stack.delta_root, workers[0], workers[1],
                             stack.itel_requests())]


def run_bench(options: BenchOptions) -> BenchRun:
    run = BenchRun(options)
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="itel-bench-"))
    run.work_dir = work
    stack = BenchStack(work, StackChoices(
        latency_ms=options.latency_ms, itel_rate_limit=options.itel_rate_limit,
        sensor_interval_seconds=options.sensor_interval_seconds, dagster_yaml=options.dagster_yaml))
    daemon = sampler = None
    try:
        stack.start()
        settings = load_workers()
        workers = [settings[TRACKING_WORKER], settings[API_WORKER]]
        topic = workers[0].input_topic
        publish_events(stack.bootstrap, topic, count=options.events,
                       bad_fraction=options.bad_fraction, days=options.days, seed=options.seed,
                       progress=options.progress)
        backlog_end = end_offsets(stack.bootstrap, topic)
        backlog = read_input(stack.bootstrap, topic, end=backlog_end)
        _phase_in_process(run, stack, backlog, workers)
        stack.reset_simulators()

        daemon = DagsterDaemon(work / "dagster_home", stack.env(), options.dagster_yaml,
                               work / "logs/dagster_daemon.log")
        daemon.start()
        sampler = MemorySampler(daemon.process.pid, daemon.code_server.pid).start()
        _phase_catch_up(run, stack, daemon, sampler, backlog_end, workers)
        _phase_steady(run, stack, daemon, workers)
        _phase_overhead(run, stack, daemon, workers)
        sampler.sample()
        run.figures["memory_mb"].update(daemon=sampler.peak_mb(DAEMON),
                                        code_server=sampler.peak_mb(CODE_SERVER),
                                        fork_server=sampler.peak_mb(FORK_SERVER))
        _phase_claimx_and_correctness(run, stack, daemon, workers)
    except Exception as exc:  # noqa: BLE001 - any failure is the bench's result, with its reason
        run.error = f"{type(exc).__name__}: {exc}"
        run.error_traceback = traceback.format_exc()
    finally:
        if sampler is not None:
            sampler.stop()
        if daemon is not None:
            daemon.stop()
        stack.stop()
        if not options.keep_work and run.passed:
            shutil.rmtree(work, ignore_errors=True)
    return run
