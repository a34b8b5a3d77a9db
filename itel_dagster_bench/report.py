"""The bench's one table and its JSON twin under bench/results/, with the machine (cores, memory,
load), the git commit and the options, and each target of issue 6 as met or missed.

It only formats and writes: no figure is computed here beyond comparing it with its target.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from itel_dagster_bench.suite import BenchRun
from itel_dagster.settings.paths import PROJECT_ROOT

WORKERS = ("tracking", "api")


def machine() -> dict:
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {"cores": os.cpu_count(), "memory_gb": round(memory_kb / 1024 / 1024, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "platform": platform.platform()}


def git_commit() -> dict:
    def git(*args: str) -> str:
        found = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
        return found.stdout.strip() if found.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _get(figures: dict, *path):
    for key in path:
        if not isinstance(figures, dict) or key not in figures:
            return None
        figures = figures[key]
    return figures


def targets(figures: dict) -> list[dict]:
    """Issue 6's targets, each with the measured value and whether it is met (None: not measured)."""
    rows = []

    def add(name: str, value, limit, at_most: bool) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        rows.append({"target": name, "value": value, "limit": limit, "met": met})

    for worker in WORKERS:
        add(f"catch-up {worker}: ratio to in-process >= 0.6",
            _get(figures, "catch_up", worker, "ratio_to_in_process"), 0.6, at_most=False)
    for worker in WORKERS:
        add(f"latency {worker}: p95 <= 10 s", _get(figures, "latency", worker, "p95_seconds"),
            10.0, at_most=True)
    for worker in WORKERS:
        add(f"run overhead {worker}: one-record run <= 3 s",
            _get(figures, "run_overhead", worker, "median_seconds"), 3.0, at_most=True)
    add("largest worker run process <= 400 MB",
        _get(figures, "memory_mb", "largest_run_process"), 400.0, at_most=True)
    add("ClaimX requests/event <= bound", _get(figures, "claimx", "requests_per_event"),
        _get(figures, "claimx", "bound_per_event"), at_most=True)
    return rows


def document(run: BenchRun) -> dict:
    options = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(run.options).items()}
    return {
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": run.passed,
        "error": run.error,
        "error_traceback": run.error_traceback,
        "git": git_commit(),
        "machine": machine(),
        "options": options,
        "figures": run.figures,
        "targets": targets(run.figures),
        "correctness": [asdict(c) for c in run.checks],
    }


def write_json(doc: dict, results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"bench-{stamp}{'-smoke' if doc['options'].get('smoke') else ''}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    else:
        text = f"{value:,}"
    return f"{text}{unit}"


# How the cores were shared until each group got to lag 0 (figures.catch_up.<w>.cpu_seconds).
CPU_ROWS = [
    ("tracking runs", ("tracking_runs",)),
    ("api runs", ("api_runs",)),
    ("other runs", ("other_runs",)),
    ("simulators", ("claimx_simulator", "itel_simulator")),
    ("daemon+code+warm", ("daemon", "code_server", "fork_server")),
    ("broker", ("broker",)),
    ("bench and other", ("bench", "other")),
    ("available (cores x s)", ("available",)),
]


def _cpu(figures: dict, worker: str, *kinds: str) -> float | None:
    shares = _get(figures, "catch_up", worker, "cpu_seconds")
    if not shares or not any(kind in shares for kind in kinds):
        return None
    return round(sum(shares.get(kind, 0.0) for kind in kinds), 1)


def table(doc: dict) -> str:
    f = doc["figures"]
    rows = [
        ("in-process limit (events/s)",
         *(_fmt(_get(f, "in_process", w, "events_per_second")) for w in WORKERS)),
        ("catch-up (events/s)", *(_fmt(_get(f, "catch_up", w, "events_per_second")) for w in WORKERS)),
        ("catch-up time (s)", *(_fmt(_get(f, "catch_up", w, "seconds")) for w in WORKERS)),
        ("catch-up / in-process", *(_fmt(_get(f, "catch_up", w, "ratio_to_in_process"))
                                    for w in WORKERS)),
        ("catch-up runs (failed)", *(
            f"{_fmt(_get(f, 'catch_up', w, 'runs'))} ({_fmt(_get(f, 'catch_up', w, 'failed_runs'))})"
            for w in WORKERS)),
        ("between runs: end->request (s)", *(
            _fmt(_get(f, "catch_up", w, "end_to_next_request_median_seconds")) for w in WORKERS)),
        ("between runs: request->start (s)", *(
            _fmt(_get(f, "catch_up", w, "request_to_start_median_seconds")) for w in WORKERS)),
        *((f"CPU s to lag 0: {label}", *(_fmt(_cpu(f, w, *kinds)) for w in WORKERS))
          for label, kinds in CPU_ROWS),
        ("latency p50 (s)", *(_fmt(_get(f, "latency", w, "p50_seconds")) for w in WORKERS)),
        ("latency p95 (s)", *(_fmt(_get(f, "latency", w, "p95_seconds")) for w in WORKERS)),
        ("latency max (s)", *(_fmt(_get(f, "latency", w, "max_seconds")) for w in WORKERS)),
        ("one-record run, median (s)",
         *(_fmt(_get(f, "run_overhead", w, "median_seconds")) for w in WORKERS)),
        ("one-record run, max (s)",
         *(_fmt(_get(f, "run_overhead", w, "max_seconds")) for w in WORKERS)),
        ("one-record run, requested->end (s)",
         *(_fmt(_get(f, "run_overhead", w, "created_to_end_median_seconds")) for w in WORKERS)),
        ("in-process ClaimX req/event",
         *(_fmt(_get(f, "in_process", w, "claimx_requests_per_event")) for w in WORKERS)),
    ]
    single = [
        ("largest worker run process (MB RSS)", _fmt(_get(f, "memory_mb", "largest_run_process"))
         + f" ({_fmt(_get(f, 'memory_mb', 'largest_run_records'))} records)"),
        *((f"  largest {w} run (MB RSS)",
           f"{_fmt(_get(f, 'memory_mb', f'largest_run_{w}', 'mb'))} "
           f"({_fmt(_get(f, 'memory_mb', f'largest_run_{w}', 'records'))} records)")
          for w in WORKERS),
        *(("  largest other run (MB RSS)", f"{_fmt(o['mb'])} ({o['job']})")
          for o in (_get(f, "memory_mb", "other_runs") or [])[:1]),
        *(("  process of no run (MB RSS)",
           f"{_fmt(u['mb'])} (pid {u['pid']}, seen {u['seen_from_s']}-{u['seen_to_s']} s)")
          for u in (_get(f, "memory_mb", "unattributed_run_processes") or [])[:1]),
        ("daemon / code server / warm (MB RSS)",
         f"{_fmt(_get(f, 'memory_mb', 'daemon'))} / {_fmt(_get(f, 'memory_mb', 'code_server'))}"
         f" / {_fmt(_get(f, 'memory_mb', 'fork_server'))}"),
        ("ClaimX requests/event (bound)", f"{_fmt(_get(f, 'claimx', 'requests_per_event'))} "
                                          f"({_fmt(_get(f, 'claimx', 'bound_per_event'))})"),
    ]
    m, g, o = doc["machine"], doc["git"], doc["options"]
    lines = [
        f"itel-dagster bench: {o['events']:,} events ({o['bad_fraction']:.0%} bad, {o['days']:g} "
        f"days, 3 partitions), simulators +{o['latency_ms']:g} ms, steady {o['steady_rate']:g} ev/s "
        f"for {o['steady_seconds']:g} s, iTel rate limit {o['itel_rate_limit']:g}/s",
        f"machine: {m['cores']} cores, {m['memory_gb']} GB, load {m['load_average']}; "
        f"commit {(g['commit'] or '?')[:12]}{' (dirty)' if g['dirty'] else ''}",
        "",
        f"{'figure':<36}{'tracking':>14}{'api':>14}",
        "-" * 64,
        *(f"{name:<36}{a:>14}{b:>14}" for name, a, b in rows),
        *(f"{name:<36}{value:>28}" for name, value in single),
        "",
        "targets:",
        *(f"  [{'met' if t['met'] else 'MISSED' if t['met'] is False else 'n/a'}] {t['target']}: "
          f"{_fmt(t['value'])}" for t in doc["targets"]),
        "",
        f"correctness: {'PASSED' if doc['passed'] else 'FAILED'}",
        *(f"  [{'ok' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}"
          for c in doc["correctness"]),
    ]
    if doc["error"]:
        lines.append(f"  error: {doc['error']}")
    return "\n".join(lines)
