"""iTel sends per second: N events (default 1,000) through ItelSender with the settings of
app.itel.yaml (rate limit lifted), one POST each and then in batches, against the iTel simulator in
its own process with 20 ms added latency. Prints figures; asserts nothing.

    python -m itel_dagster_bench.itel_sends [--events 1000] [--latency-ms 20] [--assignments 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from itel_dagster.devstack.claimx_world import (
    FIRST_ASSIGNMENT_ID,
    ITEL_TASK_ID,
    cabinet_id_for,
    project_id_for,
    technician_notes_for,
)
from itel_dagster.devstack.stack import ITEL_DEV_TOKEN
from itel_dagster.resources.circuit_breaker import CircuitBreaker
from itel_dagster.resources.itel_auth import BearerAuth
from itel_dagster.resources.itel_sender import ItelSender, SendRequest
from itel_dagster.settings.connections import load_itel_connection


def start_itel(latency_ms: float) -> tuple[subprocess.Popen, str]:
    """`itel-dagster simulators run` in its own process: in this one it would share the GIL with
    the sender and measure itself. Its iTel URL is read from what it prints once it is up."""
    process = subprocess.Popen(
        [sys.executable, "-m", "itel_dagster.cli", "simulators", "run", "--claimx-port", "0",
         "--itel-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = None
    for line in process.stdout:
        if line.startswith("itel "):
            url = line.split()[1]
        if line.startswith("simulators are up"):
            break
    if url is None:
        raise SystemExit("the simulators did not start")
    httpx.post(f"{url}/_admin/faults", json={"latency_ms": latency_ms}).raise_for_status()
    return process, url


def bench_events(count: int, assignments: int, prefix: str) -> list[SendRequest]:
    requests = []
    for n in range(count):
        assignment_id = FIRST_ASSIGNMENT_ID + n % assignments
        body = {
            "task_id": ITEL_TASK_ID, "assignment_id": assignment_id,
            "project_id": project_id_for(assignment_id), "task_status": "completed",
            "repair_details": {"cabinet_id": cabinet_id_for(assignment_id),
                               "technician_notes": technician_notes_for(assignment_id)},
            "source_system": "claimx",
        }
        requests.append(SendRequest(f"{prefix}-{n}", assignment_id, n, json.dumps(body).encode()))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description="Time ItelSender against the iTel simulator.")
    parser.add_argument("--events", type=int, default=1_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--assignments", type=int, default=200,
                        help="events are spread round-robin over this many assignments")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="max_concurrency (default: app.itel.yaml's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size (default: app.itel.yaml's)")
    parser.add_argument("--rate-limit", type=float, default=100_000.0,
                        help="requests per second (app.itel.yaml has 20; lifted here so the "
                             "sender, not the limit, is measured)")
    args = parser.parse_args()

    process, url = start_itel(args.latency_ms)
    work = Path(tempfile.mkdtemp(prefix="itel-sends-bench-"))
    configured = load_itel_connection(
        {"ITEL_CABINET_API_BASE_URL": url, "ITEL_CABINET_API_TOKEN": ITEL_DEV_TOKEN})
    settings = configured.model_copy(update={
        "rate_limit_per_second": args.rate_limit,
        "max_concurrency": args.concurrency or configured.max_concurrency})
    batch_size = args.batch_size or settings.batch.size
    print(f"\n{args.events} events over {args.assignments} assignments, simulator latency "
          f"{args.latency_ms:g} ms, max_concurrency {settings.max_concurrency}, rate limit "
          f"{args.rate_limit:g}/s (configured: {configured.rate_limit_per_second:g}/s)")
    try:
        for mode, batch_endpoint in (("single", None), ("batch", settings.batch.endpoint)):
            httpx.delete(f"{url}/_admin/requests").raise_for_status()
            breaker = CircuitBreaker(work / f"{mode}_breaker.sqlite",
                                     settings.circuit_breaker.failure_threshold,
                                     settings.circuit_breaker.cool_down_seconds)
            sender = ItelSender(settings, breaker, BearerAuth(settings.auth_token),
                                batch_endpoint=batch_endpoint, batch_size=batch_size)
            requests = bench_events(args.events, args.assignments, mode)
            began = time.perf_counter()
            report = sender.send(requests)
            wall = time.perf_counter() - began
            recorded = len(httpx.get(f"{url}/_admin/requests").json())
            accepted = sum(o.outcome == "accepted" for o in report.outcomes)
            label = mode if mode == "single" else f"batch of {batch_size}"
            print(f"  {label:<14}{args.events / wall:>8.0f} sends/s  {wall:>6.2f} s  "
                  f"{report.requests_made:>5} requests  p50 {report.latency_p50_ms:.0f} ms  "
                  f"p95 {report.latency_p95_ms:.0f} ms  accepted {accepted}, recorded {recorded}")
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
