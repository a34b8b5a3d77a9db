"""The bench's CPU shares: CPU seconds of real processes over a window (what a process used before
the window does not count), and their grouping by worker and role."""

import os
import signal
import subprocess
import sys
import time

import pytest

from itel_dagster_bench.cpu_shares import CpuSampler, cpu_shares
from itel_dagster_bench.memory import RUN

# Burns about `seconds` of CPU, prints "done", then sleeps until killed.
BURN = """
import sys, time
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
print("done", flush=True)
time.sleep(600)
"""
# Starts a burning child of its own (the tree the sampler follows), then sleeps.
ROOT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                         stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_counts_cpu_used_in_the_window_by_the_tree_and_the_named_processes():
    before = _spawn(BURN, "0.6")  # burns before the window opens, then idles through it
    root, child_pid = None, None
    try:
        assert before.stdout.readline().strip() == "done"
        time.sleep(1.2)  # the window starts after `before` began (its start time is 1 s coarse)
        sampler = CpuSampler(since=time.time(), daemon_pid=0, named={before.pid: "before"},
                             interval_seconds=0.1)
        root = _spawn(ROOT, BURN, "0.6")  # its child burns inside the window
        sampler.daemon_pid = root.pid
        child_pid = int(root.stdout.readline())
        sampler.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            used = sampler.used()
            if used.get(child_pid, ("", 0.0))[1] >= 0.5:
                break
            time.sleep(0.1)
        sampler.stop()

        assert used[child_pid][1] >= 0.5
        assert used[before.pid] == ("before", used[before.pid][1])
        assert used[before.pid][1] < 0.2  # its 0.6 s were spent before the window
    finally:
        if child_pid is not None:
            os.kill(child_pid, signal.SIGKILL)
        for process in (before, root):
            if process is not None:
                process.kill()
                process.wait()


def test_shares_group_runs_by_worker_and_the_rest_by_role():
    used = {
        10: (RUN, 30.0), 11: (RUN, 20.0),  # tracking runs
        12: (RUN, 25.0),  # an api run
        13: (RUN, 4.0),  # a run no worker run names (asset checks, a spare)
        20: ("daemon", 6.0), 21: ("code_server", 5.0),
        30: ("claimx_simulator", 8.0), 31: ("itel_simulator", 2.0),
    }

    shares = cpu_shares(used, {10: "tracking", 11: "tracking", 12: "api"}, seconds=50.0, cores=2)

    assert shares == {"tracking_runs": 50.0, "api_runs": 25.0, "other_runs": 4.0, "daemon": 6.0,
                      "code_server": 5.0, "claimx_simulator": 8.0, "itel_simulator": 2.0,
                      "available": 100.0}
