"""The iTel sender against the real simulator over loopback HTTP: outcomes, retries, the shared
circuit breaker, OAuth2 tokens, batches, per-assignment order and the rate limit."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict

import pytest

from itel_dagster.devstack.simulators.itel import token_sha256
from itel_dagster.resources.circuit_breaker import CircuitBreaker
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
    assert first.warning == "circuit breaker open"
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


def test_a_wrong_static_token_is_retried_once_then_rejected(itel, tmp_path):
    settings = itel_settings(itel)
    report = sender_for(settings, tmp_path, auth=BearerAuth("not-the-token")).send(events(2, 2))

    assert outcomes_of(report) == ["rejected", "rejected"]
    assert [(o.status_code, o.attempts) for o in report.outcomes] == [(401, 2), (401, 2)]


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


def test_refused_client_credentials_hold_every_event_back(itel, tmp_path):
    settings = oauth2_settings(itel)
    auth = OAuth2ClientCredentialsAuth(settings.oauth2.token_url, "itel-dev-client", "wrong")

    report = sender_for(settings, tmp_path, auth=auth).send(events(5, 5))

    assert set(outcomes_of(report)) == {"not_sent"}
    assert report.requests_made == 0
    assert report.warning == "token request: HTTP 401 invalid_client"


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
