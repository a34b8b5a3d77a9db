"""The iTel sender against the real simulator over loopback HTTP: outcomes, retries, the shared
circuit breaker, OAuth2 tokens, batches, per-assignment order and the rate limit."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import replace

import pytest

from itel_dagster.devstack.simulators.itel import token_sha256
from itel_dagster.resources.circuit_breaker import CircuitBreaker, until_text
from itel_dagster.resources.itel_auth import BearerAuth, OAuth2ClientCredentialsAuth
from itel_dagster.resources.itel_sender import ItelSender, SendRequest
from itel_dagster.settings.connections import ItelConnectionSettings
from itel_dagster_tests.fixtures.simulator_fixtures import itel_task_payload

FIRST_ASSIGNMENT = 1_000_001


def itel_settings(itel, **changes) -> ItelConnectionSettings:
    """Short backoffs and no effective rate limit, so a test waits milliseconds. Each test builds
    its breaker itself (sender_for); the settings' own breaker section only has to be valid."""
    values = dict(name="itel_cabinet_api", base_url=itel.url, auth_token=itel.token,
                  retry_backoff_base=0.01, retry_backoff_max=0.05, max_retries=3,
                  timeout_seconds=5, connect_timeout_seconds=3, rate_limit_per_second=1000,
                  max_concurrency=8, circuit_breaker={"failure_threshold": 1})
    return ItelConnectionSettings(**{**values, **changes})


def oauth2_settings(itel, **changes) -> ItelConnectionSettings:
    return itel_settings(itel, auth_type="oauth2_client_credentials", auth_token=None, oauth2={
        "token_url": f"{itel.url}/oauth/token", "client_id": itel.client_id,
        "client_secret": itel.client_secret}, **changes)


def sender_for(settings, tmp_path, auth=None, threshold=20, cool_down=60.0, **options):
    breaker = CircuitBreaker(tmp_path / "itel_circuit_breaker.sqlite", failure_threshold=threshold,
                             cool_down_seconds=cool_down)
    if auth is None:
        o = settings.oauth2
        auth = (OAuth2ClientCredentialsAuth(o.token_url, o.client_id, o.client_secret, o.scope)
                if settings.auth_type == "oauth2_client_credentials"
                else BearerAuth(settings.auth_token))
    return ItelSender(settings, breaker, auth, **options)


def payload(event: int, assignment_id: int) -> dict:
    body = itel_task_payload(assignment_id)
    body["repair_details"]["technician_notes"] = f"event {event}"
    return body


def events(count: int, assignments: int, first: int = 0) -> list[SendRequest]:
    """`count` events spread round-robin over `assignments`, their offsets ascending."""
    return [
        SendRequest(f"evt-{n}", FIRST_ASSIGNMENT + n % assignments, order=100 + n,
                    payload=json.dumps(payload(n, FIRST_ASSIGNMENT + n % assignments)).encode())
        for n in range(first, first + count)
    ]


def outcomes_of(report) -> list[str]:
    return [o.outcome for o in report.outcomes]


def assert_accepted_once_in_order(itel, requests: list[SendRequest]) -> list[dict]:
    records = itel.accepted_requests()
    by_key = {r.event_id: r for r in requests}
    assert sorted(r["idempotency_key"] for r in records) == sorted(by_key)
    sent_orders = defaultdict(list)
    for record in sorted(records, key=lambda r: r["received_at"]):
        request = by_key[record["idempotency_key"]]
        assert record["body"] == json.loads(request.payload)
        sent_orders[request.assignment_id].append(request.order)
    assert all(orders == sorted(orders) for orders in sent_orders.values())
    return records


def test_sixty_events_over_twenty_assignments_are_accepted_once_in_order(itel, tmp_path):
    requests = events(60, 20)

    report = sender_for(itel_settings(itel), tmp_path).send(requests)

    assert outcomes_of(report) == ["accepted"] * 60
    assert [o.event_id for o in report.outcomes] == [r.event_id for r in requests]
    # A retry is possible on a loaded machine (a connect over the listen backlog); a resend is
    # still recorded once, as the Idempotency-Key is the same.
    assert report.requests_made == 60 + report.retried
    assert report.skipped_by_breaker == 0 and report.breaker_state == "closed"
    assert report.latency_p50_ms <= report.latency_p95_ms
    records = assert_accepted_once_in_order(itel, requests)
    by_key = {r["idempotency_key"]: r for r in records}
    for outcome in report.outcomes:
        record = by_key[outcome.event_id]
        assert outcome.itel_id == record["itel_id"]
        assert outcome.status_code == 201
        assert outcome.attempt_log[-1].startswith("HTTP 201 in ")
        assert outcome.sent_at is not None and outcome.latency_ms > 0
        assert record["headers"]["idempotency-key"] == outcome.event_id
        assert record["headers"]["content-type"] == "application/json"
        assert record["headers"]["user-agent"] != ""
        assert record["auth_token_sha256"] == token_sha256(itel.token)


def test_a_burst_of_503s_shorter_than_the_retries_is_ridden_out(itel, tmp_path):
    itel.set_faults(burst_5xx=6)
    requests = events(12, 4)

    report = sender_for(itel_settings(itel, max_retries=4), tmp_path).send(requests)

    assert outcomes_of(report) == ["accepted"] * 12
    assert report.retried >= 2
    assert report.requests_made == 12 + report.retried
    retried = [o for o in report.outcomes if o.attempts > 1]
    assert sum(line.startswith("HTTP 503") for o in retried for line in o.attempt_log) == 6
    assert all(o.attempt_log[-1].startswith("HTTP 201") for o in retried)
    assert_accepted_once_in_order(itel, requests)


@pytest.mark.slow  # waits out a 2 s Retry-After
def test_a_429_waits_at_least_its_retry_after_even_past_the_longest_backoff(itel, tmp_path):
    itel.set_faults(rate_limited=1, retry_after_seconds=2)

    report = sender_for(itel_settings(itel), tmp_path).send(events(1, 1))

    [outcome] = report.outcomes
    assert outcome.outcome == "accepted"
    assert outcome.attempt_log[0].startswith("HTTP 429 Retry-After 2 in ")
    assert outcome.latency_ms >= 2000


def test_an_invalid_body_is_rejected_at_once_and_the_others_flow(itel, tmp_path):
    requests = events(10, 5)
    broken = payload(3, requests[3].assignment_id)
    del broken["task_status"]
    requests[3] = SendRequest(requests[3].event_id, requests[3].assignment_id, requests[3].order,
                              json.dumps(broken).encode())

    report = sender_for(itel_settings(itel), tmp_path, threshold=1).send(requests)

    rejected = report.outcomes[3]
    assert (rejected.outcome, rejected.status_code, rejected.attempts) == ("rejected", 422, 1)
    assert "task_status" in rejected.response_body and "is required" in rejected.response_body
    assert rejected.itel_id is None and rejected.sent_at is not None
    assert outcomes_of(report).count("accepted") == 9
    # the assignment's later event still went, after the rejected one
    later = report.outcomes[8]
    assert later.assignment_id == rejected.assignment_id and later.outcome == "accepted"


def test_rejections_say_nothing_of_itels_health_and_never_open_the_breaker(itel, tmp_path):
    requests = [SendRequest(f"bad-{n}", FIRST_ASSIGNMENT + n, n, b'{"task_id": "x"}')
                for n in range(6)]
    sender = sender_for(itel_settings(itel), tmp_path, threshold=2)

    report = sender.send(requests)

    assert outcomes_of(report) == ["rejected"] * 6
    state = sender.breaker.state()
    assert (state.state, state.consecutive_failures, state.opened_count) == ("closed", 0, 0)


def test_a_long_response_body_is_cut_to_max_response_chars(itel, tmp_path):
    request = SendRequest("tiny", FIRST_ASSIGNMENT, 1, b"[]")

    report = sender_for(itel_settings(itel), tmp_path, max_response_chars=20).send([request])

    assert report.outcomes[0].outcome == "rejected"
    assert len(report.outcomes[0].response_body) == 20


@pytest.mark.parametrize("outage", [{"error_rate": 1.0, "error_status": 503},
                                    {"refuse_for_seconds": 30}], ids=["503s", "refused"])
def test_itel_down_opens_the_breaker_and_holds_events_back_without_requests(
        itel, tmp_path, outage):
    itel.set_faults(**outage)
    sender = sender_for(itel_settings(itel, max_retries=5), tmp_path, threshold=3, cool_down=60)

    first = sender.send(events(40, 10))
    answered_during_outage = itel.stats()["total"]
    second = sender.send(events(40, 10, first=40))

    assert set(outcomes_of(first)) == {"not_sent"}
    assert first.breaker_state == "open" and first.skipped_by_breaker == 40
    assert first.requests_made <= 8 + 2  # the first wave in flight, then nothing
    assert any(o.attempts for o in first.outcomes)
    assert first.warning.startswith("circuit breaker open (iTel ")  # and what failed
    assert all(o.sent_at is None for o in first.outcomes)
    assert set(outcomes_of(second)) == {"not_sent"}
    assert second.requests_made == 0 and second.retried == 0
    assert itel.stats()["total"] == answered_during_outage
    assert sender.breaker.is_open_now()
    assert itel.accepted_requests() == []


def test_after_the_cool_down_one_probe_closes_the_breaker_and_sending_resumes(itel, tmp_path):
    itel.set_faults(burst_5xx=3)
    sender = sender_for(itel_settings(itel, max_concurrency=1), tmp_path, threshold=3,
                        cool_down=0.3)
    held = sender.send(events(4, 2))
    assert set(outcomes_of(held)) == {"not_sent"} and held.breaker_state == "open"

    time.sleep(0.35)
    resumed = sender.send(events(4, 2))

    assert outcomes_of(resumed) == ["accepted"] * 4
    assert resumed.breaker_state == "closed"
    assert sender.breaker.state().opened_count == 1


def test_exhausted_retries_dead_letter_the_event_with_every_attempt_logged(itel, tmp_path):
    itel.set_faults(error_rate=1.0)

    report = sender_for(itel_settings(itel, max_retries=2), tmp_path, threshold=10).send(
        events(1, 1))

    [outcome] = report.outcomes
    assert (outcome.outcome, outcome.status_code, outcome.attempts) == ("dead_lettered", 500, 3)
    assert len(outcome.attempt_log) == 3
    assert all(line.startswith("HTTP 500 in ") for line in outcome.attempt_log)
    assert "injected_fault" in outcome.response_body
    assert report.retried == 2 and report.breaker_state == "closed"


def test_connection_resets_are_retried_and_logged_by_exception_name(itel, tmp_path):
    itel.set_faults(reset_connections=2)

    report = sender_for(itel_settings(itel), tmp_path).send(events(1, 1))

    [outcome] = report.outcomes
    assert outcome.outcome == "accepted" and outcome.attempts == 3
    assert all(" in " in line and not line.startswith("HTTP") for line in outcome.attempt_log[:2])


@pytest.mark.parametrize("refusal", [401, 403])
def test_refused_requests_open_the_breaker_and_hold_every_event_back(itel, tmp_path, refusal):
    # 401: a wrong token (each attempt once more after the 401, as for an expired one);
    # 403: iTel forbids every request. The events are fine: they wait in Kafka.
    auth = BearerAuth("not-the-token") if refusal == 401 else None
    if refusal == 403:
        itel.set_faults(error_rate=1.0, error_status=403)
    sender = sender_for(itel_settings(itel, max_concurrency=1), tmp_path, auth=auth,
                        threshold=3)

    report = sender.send(events(4, 2))

    assert set(outcomes_of(report)) == {"not_sent"}
    state = sender.breaker.state()
    assert state.state == "open"
    assert state.cause.startswith(f"iTel answers {refusal} to every request")
    assert report.warning == f"circuit breaker open ({state.cause})"
    first = report.outcomes[0]
    assert first.attempts >= 1 and all(f"HTTP {refusal}" in line for line in first.attempt_log)
    assert itel.accepted_requests() == []


def test_oauth2_token_is_fetched_once_reused_and_refreshed_once_after_expiry(itel, tmp_path):
    sender = sender_for(oauth2_settings(itel), tmp_path)

    first = sender.send(events(10, 5))
    second = sender.send(events(10, 5, first=10))
    token_requests = itel.stats()["routes"]["POST /oauth/token"]["total"]
    itel.expire_tokens()
    third = sender.send(events(10, 5, first=20))

    assert token_requests == 1
    assert outcomes_of(first) + outcomes_of(second) + outcomes_of(third) == ["accepted"] * 30
    assert itel.stats()["routes"]["POST /oauth/token"]["total"] == 2
    assert any(o.attempt_log[0].startswith("HTTP 401") for o in third.outcomes)
    records = itel.accepted_requests()
    assert {r["auth_via"] for r in records} == {"oauth2_access_token"}
    tokens = [r["auth_token_sha256"] for r in records]
    assert len(set(tokens[:20])) == 1 and len(set(tokens[20:])) == 1 and tokens[0] != tokens[-1]


def test_refused_client_credentials_open_the_breaker_and_hold_every_event_back(itel, tmp_path):
    settings = oauth2_settings(itel)
    auth = OAuth2ClientCredentialsAuth(settings.oauth2.token_url, "itel-dev-client", "wrong")
    sender = sender_for(settings, tmp_path, auth=auth, threshold=3)

    report = sender.send(events(5, 5))

    assert set(outcomes_of(report)) == {"not_sent"}
    assert report.requests_made == 0
    cause = "iTel token endpoint refused the client credentials (HTTP 401)"
    assert report.warning == f"circuit breaker open ({cause})"
    state = sender.breaker.state()
    assert (state.state, state.cause) == ("open", cause)
    # Retried like an outage until the breaker opened, then no more token requests.
    assert 3 <= itel.stats()["routes"]["POST /oauth/token"]["total"] <= 3 + 5


def test_batch_mode_sends_far_fewer_requests_each_event_once_in_order(itel, tmp_path):
    requests = events(120, 30)

    report = sender_for(itel_settings(itel), tmp_path, batch_endpoint="/api/v1/tasks/batch",
                        batch_size=50).send(requests)

    assert outcomes_of(report) == ["accepted"] * 120
    assert report.requests_made == 4  # 4 rounds of 30 assignments, one batch each
    assert itel.stats()["routes"]["POST /api/v1/tasks/batch"]["total"] == 4
    records = assert_accepted_once_in_order(itel, requests)
    assert {r["via"] for r in records} == {"batch"}
    by_key = {r["idempotency_key"]: r["itel_id"] for r in records}
    assert all(o.itel_id == by_key[o.event_id] for o in report.outcomes)
    assert all(o.attempt_log == [o.attempt_log[0]] and "item 201" in o.attempt_log[0]
               for o in report.outcomes)


def test_batch_mode_retries_a_failed_batch_and_rejects_only_invalid_items(itel, tmp_path):
    itel.set_faults(burst_5xx=1)
    requests = events(20, 10)
    requests[0] = SendRequest("bad", requests[0].assignment_id, requests[0].order,
                              json.dumps({"task_id": 1}).encode())

    report = sender_for(itel_settings(itel), tmp_path, batch_endpoint="/api/v1/tasks/batch",
                        batch_size=4).send(requests)

    bad = report.outcomes[0]
    assert (bad.outcome, bad.status_code) == ("rejected", 422)
    assert "task.task_status" in bad.response_body
    assert outcomes_of(report)[1:] == ["accepted"] * 19
    assert report.retried >= 1
    assert any("HTTP 503" in line for o in report.outcomes for line in o.attempt_log)
    assert_accepted_once_in_order(itel, requests[1:])


def test_batch_mode_holds_everything_back_while_the_breaker_is_open(itel, tmp_path):
    itel.set_faults(error_rate=1.0, error_status=502)
    sender = sender_for(itel_settings(itel, max_retries=5), tmp_path, threshold=2,
                        batch_endpoint="/api/v1/tasks/batch", batch_size=5)

    report = sender.send(events(30, 10))

    assert set(outcomes_of(report)) == {"not_sent"}
    assert report.breaker_state == "open"
    assert report.requests_made <= 2 + 1  # the two concurrent batches of the first round


@pytest.mark.slow  # paces requests in real time
def test_the_rate_limit_paces_requests(itel, tmp_path):
    settings = itel_settings(itel, rate_limit_per_second=10)
    began = time.perf_counter()

    report = sender_for(settings, tmp_path).send(events(20, 20))

    assert outcomes_of(report) == ["accepted"] * 20
    assert time.perf_counter() - began >= 1.85


def test_no_secret_reaches_logs_or_reprs(itel, tmp_path, caplog):
    settings = oauth2_settings(itel)
    sender = sender_for(settings, tmp_path, threshold=1)
    itel.set_faults(error_rate=1.0)
    with caplog.at_level(logging.DEBUG):
        sender.send(events(3, 3))
    text = caplog.text + repr(sender.auth) + repr(settings) + repr(BearerAuth(itel.token))
    assert itel.client_secret not in text
    assert itel.token not in text


def test_a_retry_after_past_the_limit_opens_the_breaker_until_then_instead_of_sleeping(
        itel, tmp_path):
    itel.set_faults(rate_limited=1, retry_after_seconds=3600)
    sender = sender_for(itel_settings(itel, max_concurrency=1, max_retry_after_seconds=60),
                        tmp_path, threshold=3)
    began = time.time()

    report = sender.send(events(4, 2))

    assert time.time() - began < 5  # not 3600 s in a sender thread
    assert set(outcomes_of(report)) == {"not_sent"}
    assert report.outcomes[0].attempt_log[0].startswith("HTTP 429 Retry-After 3600 in ")
    assert itel.stats()["total"] == 1
    state = sender.breaker.state()
    assert state.state == "open" and began + 3600 <= state.reopens_at <= time.time() + 3600
    assert "Retry-After 3600" in state.cause
    assert report.warning == (f"{state.cause}; circuit breaker open until "
                              f"{until_text(state.reopens_at)}")
    assert report.warning.endswith(" UTC")
    later = sender.send(events(2, 2, first=4))
    assert later.requests_made == 0 and set(outcomes_of(later)) == {"not_sent"}


@pytest.mark.parametrize("batch", [False, True], ids=["one_by_one", "batch"])
def test_a_non_ascii_event_id_is_sent_with_a_percent_encoded_idempotency_key(
        itel, tmp_path, batch):
    requests = events(4, 2)
    requests[1] = replace(requests[1], event_id="évt-ü-1")
    options = {"batch_endpoint": "/api/v1/tasks/batch"} if batch else {}
    sender = sender_for(itel_settings(itel), tmp_path, **options)

    first = sender.send(requests)
    again = sender.send(requests)

    assert outcomes_of(first) == outcomes_of(again) == ["accepted"] * 4
    keys = sorted(r["idempotency_key"] for r in itel.accepted_requests())
    assert keys == sorted(["evt-0", "%C3%A9vt-%C3%BC-1", "evt-2", "evt-3"])
    # The same key each time: iTel answers the resend with the first itel_id.
    assert [o.itel_id for o in again.outcomes] == [o.itel_id for o in first.outcomes]


def test_an_event_that_cannot_be_sent_is_dead_lettered_with_the_reason_and_its_lane_goes_on(
        itel, tmp_path):
    requests = events(4, 2)
    requests[0] = replace(requests[0], payload=12345)  # not bytes: httpx raises TypeError

    report = sender_for(itel_settings(itel), tmp_path).send(requests)

    bad = report.outcomes[0]
    assert bad.outcome == "dead_lettered" and bad.status_code is None
    assert "TypeError: Unexpected type for 'content'" in bad.response_body
    assert outcomes_of(report)[1:] == ["accepted"] * 3  # requests[2] is the same assignment


_SEND_UNTIL_INTERRUPTED = """
import sys
from pathlib import Path

from itel_dagster.resources.circuit_breaker import CircuitBreaker
from itel_dagster.resources.itel_auth import BearerAuth
from itel_dagster.resources.itel_sender import ItelSender, SendRequest
from itel_dagster.settings.connections import ItelConnectionSettings

url, token, state, body = sys.argv[1:]
settings = ItelConnectionSettings(name="itel", base_url=url, auth_token=token, max_concurrency=2,
                                  rate_limit_per_second=1000, max_retries=5)
sender = ItelSender(settings, CircuitBreaker(Path(state)), BearerAuth(token))
sender.send([SendRequest(f"evt-{n}", 1_000_001 + n % 2, n, body.encode()) for n in range(60)])
"""


@pytest.mark.slow
def test_an_interrupted_send_starts_no_further_request(itel, tmp_path):
    """Dagster terminating a run raises in the run's main thread (SIGINT, as here): the sender's
    threads must not go on sending their lanes after it."""
    itel.set_faults(latency_ms=100)  # 60 events on 2 lanes: 3 s if nothing stopped them
    process = subprocess.Popen(
        [sys.executable, "-c", _SEND_UNTIL_INTERRUPTED, itel.url, itel.token,
         str(tmp_path / "breaker.sqlite"), json.dumps(payload(0, FIRST_ASSIGNMENT))],
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while len(itel.accepted_requests()) < 4:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)

    process.send_signal(signal.SIGINT)
    interrupted_at = time.monotonic()
    seen_then = len(itel.accepted_requests())
    _, stderr = process.communicate(timeout=30)
    exited_after = time.monotonic() - interrupted_at
    time.sleep(0.3)

    assert b"KeyboardInterrupt" in stderr
    assert exited_after < 1.0
    # At most the request each lane had on the wire finishes; no new one starts.
    assert len(itel.accepted_requests()) <= seen_then + 2


def test_an_event_whose_last_retry_opened_the_breaker_waits_in_kafka(itel, tmp_path):
    # failure_threshold = max_retries + 1 (the most the settings allow): the last failure both
    # opens the breaker and uses up the retries. The outage is to blame, not the event.
    itel.set_faults(error_rate=1.0, error_status=503)
    sender = sender_for(itel_settings(itel, max_retries=2), tmp_path, threshold=3)

    [outcome] = sender.send(events(1, 1)).outcomes

    assert (outcome.outcome, outcome.attempts) == ("not_sent", 3)
    assert sender.breaker.is_open_now()
