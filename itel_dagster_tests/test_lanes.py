"""The test lanes of fixtures/lanes.py: what marks a test gets, and a unit test never starts a
process (so `-m unit` never starts a broker)."""

from __future__ import annotations

import multiprocessing
import subprocess

import pytest

from itel_dagster_tests.fixtures.lanes import heaviest_files_first, lane_marks


def test_the_broker_fixture_makes_a_test_kafka_and_the_browser_browser():
    pipeline_test = {"pipeline", "kafka_bootstrap", "claimx_simulator", "tmp_path"}
    assert lane_marks(pipeline_test, set()) == {"kafka"}
    assert lane_marks({"ui_page", "dagster_ui_stack", "kafka_bootstrap"}, set()) == {
        "kafka", "browser"}
    assert lane_marks({"kafka_bootstrap"}, {"kafka", "slow"}) == set()


def test_a_test_with_neither_is_unit_unless_marked_slow():
    assert lane_marks({"itel", "itel_simulator", "tmp_path"}, set()) == {"unit"}
    assert lane_marks({"tmp_path"}, {"slow"}) == set()
    assert lane_marks({"tmp_path"}, {"parametrize"}) == {"unit"}


def test_this_test_is_in_the_unit_lane(request):
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("kafka") is None


def test_a_unit_test_that_starts_a_process_fails_saying_how_to_mark_it():
    with pytest.raises(AssertionError, match=r"in the unit lane but starts a process .*"
                                             r"mark it @pytest\.mark\.slow"):
        subprocess.run(["true"], check=True)
    with pytest.raises(AssertionError, match="in the unit lane but starts a process"):
        multiprocessing.get_context("spawn").Process(target=print).start()


@pytest.mark.slow
def test_a_slow_test_may_start_a_process(request):
    assert request.node.get_closest_marker("unit") is None
    assert subprocess.run(["true"], check=True).returncode == 0


def test_files_with_browser_and_slow_tests_are_handed_out_first_and_stay_whole():
    files = ["a.py", "a.py", "b.py", "c.py", "c.py", "d.py", "d.py", "e.py"]
    lanes = [{"unit"}, {"unit"}, {"kafka"}, {"slow"}, {"unit"}, {"kafka"}, {"kafka"},
             {"kafka", "browser"}]
    order = heaviest_files_first(files, lanes)
    assert [files[i] for i in order] == ["e.py", "c.py", "c.py", "d.py", "d.py", "b.py",
                                         "a.py", "a.py"]
    assert order[1:3] == [3, 4]  # a file's tests keep their order (module fixtures)


def test_the_session_runs_the_heaviest_files_first(request):
    """The hook applies the order to this very session: each file whole, and no file with a slow
    or browser test after one without."""
    heavy: dict[str, bool] = {}
    runs: list[str] = []
    for item in request.session.items:
        file = item.nodeid.split("::")[0]
        if not runs or runs[-1] != file:
            assert file not in runs, f"{file} is split"
            runs.append(file)
        slow = any(item.get_closest_marker(lane) for lane in ("slow", "browser"))
        heavy[file] = heavy.get(file, False) or slow
    flags = [heavy[file] for file in runs]
    assert flags == sorted(flags, reverse=True), runs
