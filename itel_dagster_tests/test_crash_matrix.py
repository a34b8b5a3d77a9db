"""The crash matrix, with real processes: one stack (its own broker, both simulators, the code
server and `dagster-daemon run` with dagster.yaml) for the module; each case kills something with
SIGKILL while a small batch drains (a run process at each point of both workers' commit
sequences, the daemon, the broker) and then checks what survived against the ground truth:
nothing lost, no duplicate Delta row, no duplicate result record (read_committed), re-POSTs at
most one send round per killed API run, lag 0. The module prints the table at its end.
"""

from __future__ import annotations

import time

import pytest
import yaml

from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster_bench.crash_stack import CrashStack, Invariants
from itel_dagster_bench.seed_workers import API_WORKER, TRACKING_WORKER

pytestmark = pytest.mark.slow  # starts a broker, simulators, a code server and the daemon

ROUND = 32  # send_round_size of the stack's config
EVENTS = 80  # per case, 5% of them invalid
LONGER_RUNS = 150  # where a run must be caught mid-run from outside
# How long run monitoring leaves a run STARTING whose process died (the stack runs dagster.yaml).
START_TIMEOUT_SECONDS = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())[
    "run_monitoring"]["start_timeout_seconds"]
ROWS: list[tuple] = []  # the table, printed when the module's stack stops

POINT_CASES = {
    "after_read": [(TRACKING_WORKER, "after_read"), (API_WORKER, "after_read")],
    "after_delta_write + after_post_round": [(TRACKING_WORKER, "after_delta_write"),
                                             (API_WORKER, "after_post_round")],
    "mid_publish": [(TRACKING_WORKER, "mid_publish"), (API_WORKER, "mid_publish")],
    "before_commit": [(TRACKING_WORKER, "before_commit"), (API_WORKER, "before_commit")],
}


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory, request):
    with CrashStack(tmp_path_factory.mktemp("crash-matrix"), send_round_size=ROUND) as stack:
        yield stack
    _print_table(request.config)


def _print_table(config) -> None:
    header = ("case", "fired", "lost", "dup Delta", "dup results", "re-POSTs", "recovery s")
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    lines += [" | ".join(str(cell) for cell in row) for row in ROWS]
    reporter = config.pluginmanager.getplugin("terminalreporter")
    write = reporter.write_line if reporter else print
    write("")
    write("crash matrix (kill -> lag 0 of both groups):")
    for line in lines:
        write(line)


def _record(case: str, fired: str, found: Invariants, recovery: float) -> None:
    ROWS.append((case, fired, found.lost, found.duplicate_delta_rows, found.duplicate_results,
                 found.re_posts, f"{recovery:.1f}"))
    print(f"{case}: {found}; recovery {recovery:.1f} s")


@pytest.mark.parametrize("case", list(POINT_CASES))
def test_a_run_killed_at_a_commit_point_loses_and_doubles_nothing(crash_stack, case):
    points = POINT_CASES[case]
    for worker, point in points:
        crash_stack.arm(worker, point)
    batch = crash_stack.publish(EVENTS)

    drained = crash_stack.wait_drained(batch)

    fired = crash_stack.fired_since(batch.published_at)
    found = crash_stack.check(batch)
    recovery = drained - min((at for _, at in fired), default=drained)
    _record(case, ", ".join(sorted(line for line, _ in fired)) or "none", found, recovery)
    assert sorted(line for line, _ in fired) == sorted(f"{w}:{p}" for w, p in points)
    assert crash_stack.armed() == []
    killed_api_runs = sum(line.startswith(f"{API_WORKER}:") for line, _ in fired)
    assert found.failures(max_re_posts=ROUND * killed_api_runs) == []


def test_the_daemon_killed_mid_drain_and_restarted_loses_and_doubles_nothing(crash_stack):
    batch = crash_stack.publish(LONGER_RUNS)
    crash_stack.wait_for_started_run(timeout=60)

    killed_at = time.time()
    killed = crash_stack.restart_daemon()
    # A run the daemon launched after the check above was STARTING at the kill: run monitoring
    # fails it only after dagster.yaml's start_timeout_seconds (60), then the sensor re-dispatches.
    drained = crash_stack.wait_drained(batch, timeout=120 + START_TIMEOUT_SECONDS)

    found = crash_stack.check(batch)
    starting = sum(run.status == "STARTING" for run in killed)
    _record("daemon SIGKILL + restart",
            f"{len(killed)} live run(s) killed, {starting} of them STARTING", found,
            drained - killed_at)
    assert killed, "no run was live when the daemon was killed"
    killed_api_runs = sum(run.worker == API_WORKER for run in killed)
    assert found.failures(max_re_posts=ROUND * killed_api_runs) == []


def test_the_broker_killed_mid_run_and_restarted_loses_and_doubles_nothing(crash_stack):
    batch = crash_stack.publish(LONGER_RUNS)
    crash_stack.wait_for_started_run(timeout=60)

    killed_at = time.time()
    crash_stack.restart_broker()
    drained = crash_stack.wait_drained(batch, timeout=180)

    found = crash_stack.check(batch)
    _record("broker SIGKILL + restart", "broker", found, drained - killed_at)
    assert found.failures(max_re_posts=0) == []  # no run process was killed
