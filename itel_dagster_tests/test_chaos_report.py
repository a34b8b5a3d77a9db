"""The chaos soak's verdict and report, from its figures (the soak itself runs on a real stack:
`itel-dagster chaos`; the crash matrix covers the same kills in CI)."""

from __future__ import annotations

import json

from itel_dagster_bench.chaos import SCHEDULE, Kill, SoakResult, as_json, report
from itel_dagster_bench.crash_stack import Invariants


def _invariants(**broken) -> Invariants:
    figures = dict(events=100, lost_delta_rows=0, duplicate_delta_rows=0, lost_itel_sends=0,
                   lost_results=0, duplicate_results=0, re_posts=0, lag=0)
    return Invariants(**{**figures, **broken})


def _result(invariants: Invariants, max_re_posts: int = 128) -> SoakResult:
    result = SoakResult(events=100, kills=[Kill(1, "run", 3.0, "api run", 12.5),
                                           Kill(2, "daemon", 20.0, "daemon", None)],
                        drain_seconds=40.0, invariants=invariants, max_re_posts=max_re_posts)
    result.failures += invariants.failures(max_re_posts)
    return result


def test_the_schedule_kills_runs_the_daemon_and_the_broker():
    assert set(SCHEDULE) == {"run", "daemon", "broker"}
    assert SCHEDULE[0] == "run"


def test_a_clean_soak_passes_and_reports_each_kill_and_the_invariants():
    result = _result(_invariants())
    assert result.passed
    text = report(result)
    assert text.splitlines()[-1] == "PASSED"
    assert "12.5" in text and " - " in text  # a recovery, and one never seen
    document = json.loads(json.dumps(as_json(result)))
    assert document["passed"] and document["recovery_seconds_max"] == 12.5
    assert [k["action"] for k in document["kills"]] == ["run", "daemon"]


def test_a_duplicate_a_loss_or_too_many_re_posts_fails_the_soak_saying_which():
    for broken, words in (({"duplicate_results": 2}, "duplicate result records"),
                          ({"lost_delta_rows": 1}, "lost: 1"),
                          ({"lag": 5}, "lag: 5"),
                          ({"re_posts": 129}, "re-POSTs: 129")):
        result = _result(_invariants(**broken))
        assert not result.passed
        assert words in report(result).splitlines()[-1]
        assert as_json(result)["passed"] is False
