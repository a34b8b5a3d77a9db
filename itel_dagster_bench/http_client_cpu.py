"""CPU per request of the ClaimX lookup's HTTP client against the ClaimX simulator (in its own
process, 20 ms added latency): httpx.Client.get against ApiHttpClient, same pool size and
threads, in turns. Prints figures; asserts nothing.

    python -m itel_dagster_bench.http_client_cpu [--requests 3000] [--threads 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from itel_dagster_bench.process_cpu import cpu_seconds
from itel_dagster_bench.tracking_run import start_claimx
from itel_dagster.devstack.claimx_world import FIRST_ASSIGNMENT_ID
from itel_dagster.devstack.stack import CLAIMX_DEV_TOKEN
from itel_dagster.resources.api_http_client import ApiHttpClient

TASK_PATH = "/api/v1/tasks/{}"


def _measure(get, ids: list[int], threads: int, server_pid: int) -> dict:
    server, client, began = cpu_seconds(server_pid), cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(get, ids))
    wall = time.perf_counter() - began
    if any(status != 200 for status in statuses):
        raise RuntimeError(f"unexpected answers: {sorted(set(statuses))}")
    return {"client_ms": (cpu_seconds() - client) / len(ids) * 1000,
            "server_ms": (cpu_seconds(server_pid) - server) / len(ids) * 1000,
            "per_second": len(ids) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    process, url = start_claimx(20.0)
    headers = {"Authorization": f"Bearer {CLAIMX_DEV_TOKEN}", "Accept": "application/json"}
    timeout = httpx.Timeout(30.0, connect=5.0)
    limits = httpx.Limits(max_connections=args.threads, max_keepalive_connections=args.threads)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout, limits=limits) as plain, \
                ApiHttpClient(url, headers, timeout, args.threads) as lean:
            clients = {
                "httpx.Client.get": lambda a: plain.get(TASK_PATH.format(a)).status_code,
                "ApiHttpClient.request": lambda a: lean.request("GET", TASK_PATH.format(a)).status_code,
            }
            next_id = FIRST_ASSIGNMENT_ID
            print(f"{'client':24} {'client CPU ms/req':>18} {'server CPU ms/req':>18} {'req/s':>8}")
            for _ in range(args.rounds):
                for name, get in clients.items():
                    ids = list(range(next_id, next_id + args.requests))
                    next_id += args.requests
                    figures = _measure(get, ids, args.threads, process.pid)
                    print(f"{name:24} {figures['client_ms']:18.2f} {figures['server_ms']:18.2f} "
                          f"{figures['per_second']:8.0f}")
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
