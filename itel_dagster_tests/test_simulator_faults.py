"""Fault injection of the simulators, seen by a real HTTP client: latency, seeded error rate,
5xx bursts, 429 + Retry-After, timeouts, resets, refused connections, wrong auth, /_admin/faults."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from itel_dagster.devstack.claimx_world import FIRST_ASSIGNMENT_ID
from itel_dagster.devstack.simulators.faults import FaultPlanError
from itel_dagster_tests.fixtures.simulator_fixtures import itel_task_payload

TASK_PATH = f"/api/v1/tasks/{FIRST_ASSIGNMENT_ID}"
CLAIMX_AUTH = {"Authorization": "Bearer claimx-dev-token"}
ITEL_AUTH = {"Authorization": "Bearer itel-dev-token"}


@pytest.fixture
def client(claimx):
    """A keep-alive client of the ClaimX simulator with its token."""
    with httpx.Client(base_url=claimx.url, headers=CLAIMX_AUTH, timeout=5) as http:
        yield http


def statuses(client, count: int) -> list[int]:
    return [client.get(TASK_PATH).status_code for _ in range(count)]


def wait_until_answering(client, within: float) -> None:
    """Returns once the simulator answers 200 again; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            assert client.get(TASK_PATH).status_code == 200
            return
        except httpx.ConnectError:
            time.sleep(0.05)
    pytest.fail(f"not answering again within {within} s")


# -- the plan itself ---------------------------------------------------------------------------

def test_plan_is_set_merged_read_and_cleared_over_http(claimx, client):
    assert client.get("/_admin/faults").json()["latency_ms"] == 0

    set_first = client.post("/_admin/faults", json={"latency_ms": 5, "error_status": 502})
    merged = client.post("/_admin/faults", json={"burst_5xx": 4})

    assert set_first.status_code == 200
    assert merged.json()["latency_ms"] == 5
    assert merged.json()["burst_5xx"] == 4
    assert client.get("/_admin/faults").json() == merged.json() == claimx.faults()
    cleared = client.delete("/_admin/faults").json()
    assert (cleared["latency_ms"], cleared["burst_5xx"], cleared["error_status"]) == (0, 0, 500)
    assert statuses(client, 2) == [200, 200]


@pytest.mark.parametrize("body, named", [
    ({"latency": 5}, "latency"),
    ({"error_rate": 1.5}, "error_rate"),
    ({"burst_5xx": -1}, "burst_5xx"),
    ({"wrong_auth": "maybe"}, "wrong_auth"),
    ([{"burst_5xx": 1}], "JSON object"),
])
def test_unknown_keys_and_bad_values_are_400_and_change_nothing(claimx, client, body, named):
    response = client.post("/_admin/faults", json=body)

    assert response.status_code == 400
    assert named in response.json()["detail"]
    assert claimx.faults()["burst_5xx"] == 0


def test_set_faults_in_python_rejects_unknown_keys(claimx):
    with pytest.raises(FaultPlanError, match="retries"):
        claimx.set_faults(retries=3)


# -- each fault --------------------------------------------------------------------------------

def test_latency_delays_every_api_request_but_not_admin(claimx, client):
    claimx.set_faults(latency_ms=400)

    began = time.monotonic()
    assert statuses(client, 2) == [200, 200]
    api_seconds = time.monotonic() - began
    began = time.monotonic()
    client.get("/_admin/health")
    admin_seconds = time.monotonic() - began

    assert api_seconds >= 0.8
    assert admin_seconds < 0.4


def test_error_rate_with_a_seed_repeats_the_same_statuses(claimx, client):
    claimx.set_faults(error_rate=0.3, error_status=502, seed=7)
    first = statuses(client, 100)
    claimx.set_faults(seed=7)
    second = statuses(client, 100)
    claimx.set_faults(seed=8)
    other_seed = statuses(client, 100)

    assert first == second
    assert other_seed != first
    assert set(first) == {200, 502}
    assert 15 <= first.count(502) <= 45


def test_burst_5xx_answers_exactly_n_503s_then_200s(claimx, client):
    client.post("/_admin/faults", json={"burst_5xx": 3})

    responses = [client.get(TASK_PATH) for _ in range(5)]

    assert [r.status_code for r in responses] == [503, 503, 503, 200, 200]
    assert responses[0].json()["error"] == "injected_fault"
    assert claimx.faults()["burst_5xx"] == 0


def test_rate_limited_answers_429_with_retry_after(claimx, client):
    claimx.set_faults(rate_limited=2, retry_after_seconds=7)

    responses = [client.get(TASK_PATH) for _ in range(3)]

    assert [r.status_code for r in responses] == [429, 429, 200]
    assert [r.headers.get("retry-after") for r in responses] == ["7", "7", None]
    claimx.set_faults(rate_limited=1, retry_after_seconds=0.25)
    assert client.get(TASK_PATH).headers["retry-after"] == "0.25"


def test_timeout_hangs_past_the_clients_timeout(claimx, client):
    claimx.set_faults(timeouts=1, timeout_seconds=2)

    began = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.get(TASK_PATH, timeout=0.5)
    waited = time.monotonic() - began

    assert 0.5 <= waited < 2
    assert client.get(TASK_PATH).status_code == 200
    by_status = claimx.stats()["routes"][f"GET /api/v1/tasks/{{assignment_id}}"]["by_status"]
    assert by_status == {"200": 1, "timeout": 1}


def test_reset_closes_the_connection_without_an_answer(claimx, client):
    claimx.set_faults(reset_connections=2)

    for _ in range(2):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.get(TASK_PATH)

    assert client.get(TASK_PATH).status_code == 200


@pytest.mark.slow  # the port stays closed for 1 s
def test_refuse_closes_the_port_then_listens_again_on_it(claimx, client):
    port = claimx.port
    assert client.get(TASK_PATH).status_code == 200  # a kept-alive connection, dropped below

    answer = client.post("/_admin/faults", json={"refuse_for_seconds": 1})
    began = time.monotonic()

    assert answer.status_code == 200
    assert answer.json()["refuse_for_seconds"] == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(httpx.ConnectError):
        client.get(TASK_PATH)
    wait_until_answering(client, within=5)
    assert time.monotonic() - began >= 0.9
    assert claimx.port == port


def test_clear_faults_ends_a_refusal_at_once(claimx, client):
    claimx.set_faults(refuse_for_seconds=30)
    with pytest.raises(httpx.ConnectError):
        client.get(TASK_PATH)

    claimx.clear_faults()

    assert client.get(TASK_PATH).status_code == 200


def test_wrong_auth_rejects_the_right_token_everywhere(claimx, itel, client):
    claimx.set_faults(wrong_auth=True)
    httpx.post(f"{itel.url}/_admin/faults", json={"wrong_auth": True})

    token_request = httpx.post(f"{itel.url}/oauth/token", data={"grant_type": "client_credentials"},
                               auth=("itel-dev-client", "itel-dev-secret"))
    send = httpx.post(f"{itel.url}/api/v1/tasks", json=itel_task_payload(), headers=ITEL_AUTH)

    assert client.get(TASK_PATH).status_code == 401
    assert token_request.status_code == 401
    assert send.status_code == 401
    assert itel.accepted_requests() == []
    claimx.set_faults(wrong_auth=False)
    assert client.get(TASK_PATH).status_code == 200


def test_admin_endpoints_are_never_faulted(claimx, client):
    claimx.set_faults(error_rate=1.0, wrong_auth=True, burst_5xx=5, reset_connections=5)

    assert client.get("/_admin/health").status_code == 200
    assert client.get("/_admin/stats").status_code == 200
    assert client.get("/_admin/faults").json()["reset_connections"] == 5


def test_a_faulted_send_is_not_recorded(itel):
    itel.set_faults(burst_5xx=1)

    failed = httpx.post(f"{itel.url}/api/v1/tasks", json=itel_task_payload(), headers={
        **ITEL_AUTH, "Idempotency-Key": "k"})
    retried = httpx.post(f"{itel.url}/api/v1/tasks", json=itel_task_payload(), headers={
        **ITEL_AUTH, "Idempotency-Key": "k"})

    assert (failed.status_code, retried.status_code) == (503, 201)
    assert [r["idempotency_key"] for r in itel.accepted_requests()] == ["k"]
    assert itel.stats()["routes"]["POST /api/v1/tasks"]["by_status"] == {"201": 1, "503": 1}


def test_faults_are_counted_in_the_stats(claimx, client):
    claimx.set_faults(rate_limited=1, burst_5xx=1, reset_connections=1)
    for _ in range(4):
        try:
            client.get(TASK_PATH)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            pass

    route = client.get("/_admin/stats").json()["routes"]["GET /api/v1/tasks/{assignment_id}"]

    assert route == {"total": 4, "by_status": {"200": 1, "429": 1, "503": 1, "reset": 1}}


def test_a_request_in_its_latency_at_a_stats_clear_is_not_counted_after_it(claimx):
    """A client that timed out before the latency ran out leaves a request the next test would
    count: stats hold the requests that arrived since the last clear."""
    claimx.set_faults(latency_ms=1500)
    with httpx.Client(base_url=claimx.url, headers=CLAIMX_AUTH, timeout=0.3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.get(TASK_PATH)
    claimx.clear_stats()
    claimx.clear_faults()
    with httpx.Client(base_url=claimx.url, headers=CLAIMX_AUTH, timeout=5) as http:
        assert http.get(TASK_PATH).status_code == 200
    time.sleep(1.5)  # the first request's latency runs out; its answer finds the client gone

    assert claimx.stats()["routes"]["GET /api/v1/tasks/{assignment_id}"]["total"] == 1
