"""How many requests the iTel circuit breaker saves during an outage: the same 500 events sent to
a simulator answering 503 to everything, with the breaker (threshold 5) and without one.
Prints figures; asserts nothing.

    python -m itel_dagster_bench.breaker_outage
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import httpx

from itel_dagster.resources.circuit_breaker import CircuitBreaker
from itel_dagster.resources.itel_auth import BearerAuth
from itel_dagster.resources.itel_sender import ItelSender, SendRequest
from itel_dagster.settings.connections import ItelConnectionSettings

EVENTS = 500
TOKEN = "itel-dev-token"


def start_simulator() -> tuple[subprocess.Popen, str]:
    """The simulators in their own process; returns it and the iTel URL it prints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "itel_dagster.cli", "simulators", "run", "--claimx-port", "0",
         "--itel-port", "0"], stdout=subprocess.PIPE, text=True)
    while True:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the simulators exited before printing their URLs")
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if found and "itel" in line.lower():
            return process, found.group(1)


def requests_during_outage(url: str, threshold: int) -> tuple[int, Counter]:
    httpx.post(f"{url}/_admin/faults", json={"error_rate": 1.0, "error_status": 503}).raise_for_status()
    httpx.delete(f"{url}/_admin/stats").raise_for_status()
    settings = ItelConnectionSettings(
        name="itel", base_url=url, auth_token=TOKEN, max_retries=5, retry_backoff_base=0.01,
        retry_backoff_max=0.05, rate_limit_per_second=1000,
        circuit_breaker={"failure_threshold": min(threshold, 6)},
    )
    breaker = CircuitBreaker(Path(tempfile.mkdtemp()) / "breaker.sqlite",
                             failure_threshold=threshold, cool_down_seconds=30)
    sender = ItelSender(settings, breaker, BearerAuth(TOKEN))
    requests = [SendRequest(f"event-{i}", 1_000_000 + i % 100, i, b'{"task_id": 32513}')
                for i in range(EVENTS)]
    report = sender.send(requests)
    total = httpx.get(f"{url}/_admin/stats").json()["total"]
    return total, Counter(o.outcome for o in report.outcomes)


def main() -> None:
    process, url = start_simulator()
    try:
        with_breaker = requests_during_outage(url, threshold=5)
        without = requests_during_outage(url, threshold=10**9)
    finally:
        process.terminate()
        process.wait(10)
    print(f"{EVENTS} events, iTel answering 503 to everything, max_retries 5:")
    print(f"  breaker (threshold 5): {with_breaker[0]:>5} requests, {dict(with_breaker[1])}")
    print(f"  no breaker:            {without[0]:>5} requests, {dict(without[1])}")
    print(f"  requests saved:        {without[0] - with_breaker[0]:>5}")


if __name__ == "__main__":
    main()
