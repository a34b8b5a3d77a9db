"""Crash points: off without the env var; an armed point kills the process that reaches it, once."""

import os
import signal
import subprocess
import sys

import pytest

from itel_dagster.crash_points import CRASH_POINTS_ENV, arm, armed, fired

REACH = ("from itel_dagster.crash_points import crash_point; "
         "crash_point('after_read', 'api'); print('passed')")


def _reach(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != CRASH_POINTS_ENV} | env_extra
    return subprocess.run([sys.executable, "-c", REACH], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
def test_without_the_env_var_a_point_does_nothing(tmp_path):
    arm(tmp_path / "points", "api", "after_read")
    done = _reach({})
    assert done.returncode == 0 and "passed" in done.stdout
    assert armed(tmp_path / "points") == ["api:after_read"]


@pytest.mark.slow
def test_an_armed_point_kills_the_first_process_that_reaches_it_and_only_it(tmp_path):
    points = tmp_path / "points"
    arm(points, "api", "after_read")
    arm(points, "tracking", "after_read")
    first = _reach({CRASH_POINTS_ENV: str(points)})
    assert first.returncode == -signal.SIGKILL and "passed" not in first.stdout
    assert fired(points) == ["api:after_read"]
    assert armed(points) == ["tracking:after_read"]
    second = _reach({CRASH_POINTS_ENV: str(points)})
    assert second.returncode == 0 and "passed" in second.stdout


def test_an_unknown_point_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown crash point"):
        arm(tmp_path / "points", "api", "after_lunch")
