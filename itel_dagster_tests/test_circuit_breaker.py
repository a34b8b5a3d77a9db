"""The shared circuit breaker on its SQLite file: opening, cool-down, exactly one probe (across
breaker objects as run processes would hold them, and racing threads), closing and re-opening.
An injected clock stands for time, so nothing sleeps."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest

from itel_dagster.resources.circuit_breaker import FOREVER, CircuitBreaker, until_text


class Clock:
    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker_file(tmp_path):
    return tmp_path / "state" / "itel_circuit_breaker.sqlite"


def breaker(path, clock, threshold=3, cool_down=30.0) -> CircuitBreaker:
    return CircuitBreaker(path, failure_threshold=threshold, cool_down_seconds=cool_down,
                          clock=clock)


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        b.record_failure()


def test_a_new_breaker_is_closed_and_lets_requests_through(breaker_file, clock):
    b = breaker(breaker_file, clock)

    state = b.state()
    assert (state.state, state.consecutive_failures, state.opened_at, state.reopens_at,
            state.opened_count) == ("closed", 0, None, None, 0)
    assert b.allow_request()
    assert not b.is_open_now()


def test_it_opens_after_threshold_failures_in_a_row_and_stays_open_during_the_cool_down(
        breaker_file, clock):
    b = breaker(breaker_file, clock, threshold=3, cool_down=30)
    fail(b, 2)
    b.record_success()  # a success in between: the count starts again
    fail(b, 2)
    assert b.state().state == "closed"
    assert b.allow_request()

    b.record_failure()

    state = b.state()
    assert (state.state, state.consecutive_failures, state.opened_count) == ("open", 3, 1)
    assert state.opened_at == 1_000.0
    assert state.reopens_at == 1_030.0
    assert b.is_open_now()
    for seconds_later in (0, 10, 29.9):
        clock.now = 1_000.0 + seconds_later
        assert not b.allow_request()
    b.record_failure()  # a late failure of a request already in flight
    assert b.state().reopens_at == 1_030.0, "a late failure must not extend the cool-down"


def test_after_the_cool_down_exactly_one_probe_goes(breaker_file, clock):
    b = breaker(breaker_file, clock, cool_down=30)
    fail(b, 3)
    clock.now = 1_030.0

    assert not b.is_open_now()
    assert b.allow_request()
    assert b.state().state == "half_open"
    assert [b.allow_request() for _ in range(5)] == [False] * 5


def test_a_successful_probe_closes_it(breaker_file, clock):
    b = breaker(breaker_file, clock)
    fail(b, 3)
    clock.now += 31
    assert b.allow_request()

    b.record_success()

    state = b.state()
    assert (state.state, state.consecutive_failures, state.opened_at) == ("closed", 0, None)
    assert state.opened_count == 1
    assert all(b.allow_request() for _ in range(3))


def test_a_failed_probe_reopens_it_at_once_with_a_fresh_cool_down(breaker_file, clock):
    b = breaker(breaker_file, clock, threshold=3, cool_down=30)
    fail(b, 3)
    clock.now = 1_040.0
    assert b.allow_request()

    b.record_failure()

    state = b.state()
    assert (state.state, state.opened_at, state.reopens_at, state.opened_count) == (
        "open", 1_040.0, 1_070.0, 2)
    assert b.is_open_now()
    clock.now = 1_069.0
    assert not b.allow_request()
    clock.now = 1_070.0
    assert b.allow_request()


def test_a_probe_lost_for_twice_the_cool_down_lets_a_new_one_go(breaker_file, clock):
    b = breaker(breaker_file, clock, cool_down=30)
    fail(b, 3)
    clock.now = 1_030.0
    assert b.allow_request()  # this probe's process dies: no result is ever recorded

    clock.now = 1_089.0
    assert not b.allow_request()
    assert b.state().reopens_at == 1_090.0
    clock.now = 1_090.0
    assert b.allow_request()
    assert not b.allow_request()


def test_two_breakers_on_one_file_share_state_and_only_one_gets_the_probe(breaker_file, clock):
    run_a = breaker(breaker_file, clock)
    run_b = breaker(breaker_file, clock)
    fail(run_a, 2)
    run_b.record_failure()

    assert run_a.state().state == run_b.state().state == "open"
    assert run_b.is_open_now()
    clock.now += 30
    assert [run_a.allow_request(), run_b.allow_request(), run_a.allow_request()] == [
        True, False, False]
    run_a.record_success()
    assert run_b.state().state == "closed"
    assert run_b.allow_request()


def test_racing_threads_with_their_own_breakers_let_exactly_one_probe_through(
        breaker_file, clock):
    callers = 16
    breakers = [breaker(breaker_file, clock) for _ in range(callers)]
    fail(breakers[0], 3)
    clock.now += 30
    start = threading.Barrier(callers)

    def ask(b: CircuitBreaker) -> bool:
        start.wait()
        return b.allow_request()

    with ThreadPoolExecutor(callers) as pool:
        answers = list(pool.map(ask, breakers))

    assert sum(answers) == 1
    assert breakers[0].state().state == "half_open"


def test_threshold_one_and_zero_cool_down(breaker_file, clock):
    b = breaker(breaker_file, clock, threshold=1, cool_down=0)
    b.record_failure()
    assert b.state().state == "open"
    assert not b.is_open_now()
    assert b.allow_request()


def test_a_hold_keeps_it_open_until_its_time_whatever_late_answers_say(breaker_file, clock):
    b = breaker(breaker_file, clock, threshold=3, cool_down=30)
    b.hold_open(clock.now + 3600, "iTel answered HTTP 429 with Retry-After 3600")

    state = b.state()
    assert (state.state, state.reopens_at, state.opened_count) == ("open", clock.now + 3600, 1)
    assert state.cause == "iTel answered HTTP 429 with Retry-After 3600"
    b.record_success()  # a request sent before the hold, answered late
    clock.now += 3599
    assert b.is_open_now() and not b.allow_request()
    b.hold_open(clock.now + 0.5, "shorter")  # never shortened
    assert b.state().reopens_at == 1_000.0 + 3600 and b.state().cause.startswith("iTel")
    clock.now += 1
    assert not b.is_open_now() and b.allow_request()  # the probe
    b.record_success()
    state = b.state()
    assert (state.state, state.cause, state.reopens_at) == ("closed", None, None)


def test_it_opens_with_the_cause_of_the_last_failure(breaker_file, clock):
    b = breaker(breaker_file, clock, threshold=2, cool_down=30)
    b.record_failure("iTel answered HTTP 503")
    b.record_failure("iTel token endpoint refused the client credentials (HTTP 401)")
    b.record_failure("late: does not replace the cause of an open breaker")

    state = b.state()
    assert state.state == "open"
    assert state.cause == "iTel token endpoint refused the client credentials (HTTP 401)"


def test_held_forever_until_closed_by_hand(breaker_file, clock):
    b = breaker(breaker_file, clock, threshold=3, cool_down=30)
    b.hold_open(FOREVER, "opened by hand: iTel maintenance")
    clock.now += 10 * 365 * 86400
    assert b.is_open_now() and not b.allow_request()
    assert until_text(b.state().reopens_at).startswith("it is closed by hand")

    b.close()
    state = b.state()
    assert (state.state, state.consecutive_failures, state.cause) == ("closed", 0, None)
    assert b.allow_request()


def test_a_state_file_of_the_earlier_schema_is_upgraded_in_place(breaker_file, clock):
    breaker_file.parent.mkdir(parents=True)
    with closing(sqlite3.connect(breaker_file)) as connection:
        connection.execute(
            "CREATE TABLE circuit_breaker (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT "
            "NULL, consecutive_failures INTEGER NOT NULL, opened_at REAL, probe_started_at REAL, "
            "opened_count INTEGER NOT NULL)")
        connection.execute("INSERT INTO circuit_breaker VALUES (1, 'open', 5, 990.0, NULL, 2)")
        connection.commit()

    b = breaker(breaker_file, clock, cool_down=30)

    state = b.state()
    assert (state.state, state.reopens_at, state.opened_count, state.cause) == (
        "open", 1_020.0, 2, None)
    b.hold_open(clock.now + 60, "held")
    assert breaker(breaker_file, clock).state().reopens_at == clock.now + 60
