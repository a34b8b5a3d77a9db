"""The test lanes of fixtures/lanes.py: what marks a test gets, and a unit test never starts a
process (so `-m unit` never starts a broker)."""

from __future__ import annotations

import multiprocessing
import re
import subprocess

import pytest

from itel_dagster.settings.paths import PROJECT_ROOT
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


def _xdist_options_of_the_test_command() -> list[str]:
    """The scheduling options scripts/test.sh gives pytest-xdist (--dist, --no-loadscope-reorder)."""
    script = (PROJECT_ROOT / "scripts/test.sh").read_text()
    command = re.search(r"^exec .*?\"\$@\"", script, re.MULTILINE | re.DOTALL).group(0)
    dist = re.search(r"--dist[ =](\S+)", command)
    assert dist, "scripts/test.sh passes no --dist"
    return ["--dist", dist.group(1), *re.findall(r"--no-loadscope-reorder", command)]


@pytest.mark.slow  # a pytest-xdist session of its own
def test_xdist_hands_out_the_files_in_the_lanes_order_under_the_test_commands_options(pytester):
    """xdist's loadfile scheduler re-sorts files by test count unless told not to: then a file of
    many quick tests went before a one-test bench, and the benches ran last."""
    pytester.makeconftest("pytest_plugins = ['itel_dagster_tests.fixtures.lanes']\n")
    pytester.makeini("[pytest]\nmarkers =\n    unit\n    kafka\n    slow\n    browser\n")
    pytester.makepyfile(
        test_a_many_quick="\n".join(f"def test_quick_{n}(): pass" for n in range(6)),
        test_b_one_slow="import pytest\n\n@pytest.mark.slow\ndef test_long(): pass\n")

    result = pytester.runpytest_subprocess("-n", "1", *_xdist_options_of_the_test_command(),
                                           "-v", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=7)
    ran = [line for line in result.outlines if "PASSED" in line]
    assert "test_b_one_slow.py::test_long" in ran[0], ran
