"""The iTel Cabinet simulator over real loopback HTTP: validation, recorded sends, Idempotency-Key,
OAuth2 client credentials and token expiry."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone

import httpx
import pytest

from itel_dagster.devstack.simulators.itel import ItelSimulator, token_sha256
from itel_dagster_tests.fixtures.simulator_fixtures import itel_task_payload

STATIC_TOKEN = "itel-dev-token"
CLIENT = ("itel-dev-client", "itel-dev-secret")


def post_task(simulator, body, token=STATIC_TOKEN, idempotency_key=None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return httpx.post(f"{simulator.url}/api/v1/tasks", json=body, headers=headers)


def issue_token(simulator, **kwargs) -> httpx.Response:
    return httpx.post(f"{simulator.url}/oauth/token", **kwargs)


def test_accepted_task_is_answered_201_and_recorded_as_sent(itel):
    body = itel_task_payload(1_000_042)

    response = post_task(itel, body, idempotency_key="send-42")

    assert response.status_code == 201
    assert response.json()["status"] == "accepted"
    itel_id = response.json()["itel_id"]
    assert itel_id.startswith("ITEL-")
    [record] = httpx.get(f"{itel.url}/_admin/requests").json()
    assert record["itel_id"] == itel_id
    assert record["body"] == body
    assert record["idempotency_key"] == "send-42"
    assert record["auth_via"] == "static_token"
    assert record["auth_token_sha256"] == hashlib.sha256(STATIC_TOKEN.encode()).hexdigest()
    assert record["headers"]["idempotency-key"] == "send-42"
    assert record["headers"]["content-type"] == "application/json"
    assert record["headers"]["authorization"] == "Bearer ****oken"
    received = datetime.fromisoformat(record["received_at"])
    assert received.tzinfo == timezone.utc
    assert abs((datetime.now(timezone.utc) - received).total_seconds()) < 60
    assert len(record["received_at"].split(".")[1]) == len("123456+00:00")
    assert itel.accepted_requests() == [record]


def test_records_keep_arrival_order_and_unique_ids(itel):
    ids = [post_task(itel, itel_task_payload(1_000_000 + n)).json()["itel_id"] for n in range(5)]

    records = itel.accepted_requests()

    assert [r["body"]["assignment_id"] for r in records] == [1_000_000 + n for n in range(5)]
    assert [r["itel_id"] for r in records] == ids
    assert len(set(ids)) == 5
    assert [r["idempotency_key"] for r in records] == [None] * 5


def test_repeated_idempotency_key_is_replayed_not_recorded_again(itel):
    first = post_task(itel, itel_task_payload(), idempotency_key="once")
    again = post_task(itel, itel_task_payload(), idempotency_key="once")
    other = post_task(itel, itel_task_payload(), idempotency_key="another")

    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert other.status_code == 201
    assert [r["idempotency_key"] for r in itel.accepted_requests()] == ["once", "another"]


def test_each_record_counts_the_posts_of_its_idempotency_key(itel):
    for key in ("twice", "once", "twice", "thrice", "thrice", "thrice"):
        post_task(itel, itel_task_payload(), idempotency_key=key)

    counts = {r["idempotency_key"]: r["requests"]
              for r in httpx.get(f"{itel.url}/_admin/requests").json()}

    assert counts == {"twice": 2, "once": 1, "thrice": 3}


def test_a_rejected_send_does_not_use_up_its_idempotency_key(itel):
    assert post_task(itel, {"task_id": 1}, idempotency_key="retry-me").status_code == 422
    assert post_task(itel, itel_task_payload(), idempotency_key="retry-me").status_code == 201
    assert len(itel.accepted_requests()) == 1


def test_null_cabinet_id_and_notes_are_accepted(itel):
    body = itel_task_payload()
    body["repair_details"] = {"cabinet_id": None, "technician_notes": None}

    assert post_task(itel, body).status_code == 201
    assert itel.accepted_requests()[0]["body"]["repair_details"]["cabinet_id"] is None


MISSING = object()


def changed_payload(field: str, value) -> dict:
    """A valid payload with `field` ("a" or "a.b") set to `value`, or deleted for MISSING."""
    body = itel_task_payload()
    *parents, name = field.split(".")
    target = body
    for parent in parents:
        target = target[parent]
    if value is MISSING:
        del target[name]
    else:
        target[name] = value
    return body


@pytest.mark.parametrize("field, value, problem", [
    *[(name, MISSING, "is required") for name in (
        "task_id", "assignment_id", "project_id", "task_status", "repair_details",
        "source_system", "repair_details.cabinet_id", "repair_details.technician_notes")],
    ("task_id", "32513", "must be an integer"),
    ("task_id", True, "must be an integer"),
    ("assignment_id", 1000001.5, "must be an integer"),
    ("project_id", 123456, "must be a string"),
    ("task_status", None, "must be a string"),
    ("source_system", ["claimx"], "must be a string"),
    ("repair_details", "CAB-1", "must be an object"),
    ("repair_details.cabinet_id", 17, "must be a string or null"),
    ("repair_details.technician_notes", {"text": "x"}, "must be a string or null"),
])
def test_each_kind_of_invalid_body_is_422_naming_the_field(itel, field, value, problem):
    response = post_task(itel, changed_payload(field, value))

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_payload"
    assert response.json()["detail"] == [{"field": field, "problem": problem}]
    assert itel.accepted_requests() == []


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "is not valid JSON"),
    (b'[{"task_id": 32513}]', "must be a JSON object"),
    (b'"a string"', "must be a JSON object"),
])
def test_a_body_that_is_not_a_json_object_is_422(itel, content, problem):
    response = httpx.post(f"{itel.url}/api/v1/tasks", content=content, headers={
        "Authorization": f"Bearer {STATIC_TOKEN}", "Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"] == [{"field": "(body)", "problem": problem}]


def test_every_problem_is_listed_at_once(itel):
    response = post_task(itel, {"task_id": "x", "repair_details": {}})

    fields = {problem["field"] for problem in response.json()["detail"]}
    assert fields == {"task_id", "assignment_id", "project_id", "task_status", "source_system",
                      "repair_details.cabinet_id", "repair_details.technician_notes"}


@pytest.mark.parametrize("token", [None, "claimx-dev-token"], ids=["missing", "wrong"])
def test_missing_or_wrong_token_is_401_and_not_recorded(itel, token):
    response = post_task(itel, itel_task_payload(), token=token)

    assert response.status_code == 401
    assert itel.accepted_requests() == []


def test_auth_is_checked_before_the_body(itel):
    assert post_task(itel, {"bad": "body"}, token="wrong").status_code == 401


def test_clear_requests_over_http_and_in_python(itel):
    post_task(itel, itel_task_payload(), idempotency_key="k")
    post_task(itel, itel_task_payload())

    assert httpx.delete(f"{itel.url}/_admin/requests").json() == {"cleared": 2}
    assert httpx.get(f"{itel.url}/_admin/requests").json() == []
    # The key was forgotten with its record: the same send is a new one.
    assert post_task(itel, itel_task_payload(), idempotency_key="k").status_code == 201
    assert itel.clear_requests() == 1
    assert itel.accepted_requests() == []


# -- OAuth2 client credentials ---------------------------------------------------------------

def test_token_for_form_credentials_is_accepted_as_bearer(itel):
    issued = issue_token(itel, data={"grant_type": "client_credentials",
                                     "client_id": CLIENT[0], "client_secret": CLIENT[1]})

    assert issued.status_code == 200
    answer = issued.json()
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 3600
    assert answer["access_token"] not in (STATIC_TOKEN, "")
    assert issued.headers["cache-control"] == "no-store"
    assert post_task(itel, itel_task_payload(), token=answer["access_token"]).status_code == 201
    [record] = itel.accepted_requests()
    assert record["auth_via"] == "oauth2_access_token"
    assert record["auth_token_sha256"] == token_sha256(answer["access_token"])


def test_token_for_basic_auth_echoes_the_scope(itel):
    issued = issue_token(itel, data={"grant_type": "client_credentials", "scope": "tasks:write"},
                         auth=CLIENT)

    assert issued.status_code == 200
    assert issued.json()["scope"] == "tasks:write"
    assert post_task(itel, itel_task_payload(), token=issued.json()["access_token"]).is_success


@pytest.mark.parametrize("kwargs", [
    {"data": {"grant_type": "client_credentials", "client_id": CLIENT[0],
              "client_secret": "wrong"}},
    {"data": {"grant_type": "client_credentials"}, "auth": ("someone-else", CLIENT[1])},
    {"data": {"grant_type": "client_credentials"}},
    {"data": {"grant_type": "client_credentials"}, "headers": {"Authorization": "Basic !!!"}},
], ids=["wrong-secret", "wrong-client", "no-credentials", "garbled-basic"])
def test_bad_client_credentials_are_401_invalid_client(itel, kwargs):
    response = issue_token(itel, **kwargs)

    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client"}


@pytest.mark.parametrize("grant_type, error", [
    ("password", "unsupported_grant_type"), (None, "invalid_request"),
])
def test_other_grant_types_are_400(itel, grant_type, error):
    data = {"grant_type": grant_type} if grant_type else {}

    response = issue_token(itel, data=data, auth=CLIENT)

    assert response.status_code == 400
    assert response.json() == {"error": error}


def test_expired_tokens_are_401_and_a_fresh_token_works(itel):
    old = issue_token(itel, data={"grant_type": "client_credentials"}, auth=CLIENT)
    old_token = old.json()["access_token"]

    expired = httpx.post(f"{itel.url}/_admin/expire_tokens")
    refused = post_task(itel, itel_task_payload(), token=old_token)
    fresh = issue_token(itel, data={"grant_type": "client_credentials"}, auth=CLIENT)

    assert expired.json() == {"expired": 1}
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert post_task(itel, itel_task_payload(), token=fresh.json()["access_token"]).is_success
    assert post_task(itel, itel_task_payload()).is_success  # the static token never expires
    assert itel.expire_tokens() == 1
    assert post_task(itel, itel_task_payload(), token=fresh.json()["access_token"]).is_error


def test_tokens_expire_after_the_configured_lifetime():
    with ItelSimulator(token_ttl_seconds=1) as simulator:
        issued = issue_token(simulator, data={"grant_type": "client_credentials"}, auth=CLIENT)
        token = issued.json()["access_token"]

        assert issued.json()["expires_in"] == 1
        assert post_task(simulator, itel_task_payload(), token=token).status_code == 201
        time.sleep(1.05)
        assert post_task(simulator, itel_task_payload(), token=token).status_code == 401
