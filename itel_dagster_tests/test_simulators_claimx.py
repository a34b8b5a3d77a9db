"""The ClaimX simulator over real loopback HTTP: task documents, 404s, auth, admin endpoints."""

from __future__ import annotations

import httpx
import pytest

from itel_dagster.devstack.claimx_world import (
    FIRST_ASSIGNMENT_ID,
    UNKNOWN_ASSIGNMENT_FLOOR,
    claimx_task,
)
from itel_dagster.devstack.simulators.claimx import ClaimxSimulator

KNOWN_ID = FIRST_ASSIGNMENT_ID + 17
AUTH = {"Authorization": "Bearer claimx-dev-token"}
TASK_ROUTE = "GET /api/v1/tasks/{assignment_id}"


def get_task(simulator, assignment_id, headers=AUTH) -> httpx.Response:
    return httpx.get(f"{simulator.url}/api/v1/tasks/{assignment_id}", headers=headers)


def test_known_assignment_gets_the_world_task_document_every_time(claimx):
    first, second = get_task(claimx, KNOWN_ID), get_task(claimx, KNOWN_ID)

    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.json() == claimx_task(KNOWN_ID)
    assert second.json() == first.json()
    assert get_task(claimx, KNOWN_ID + 1).json() == claimx_task(KNOWN_ID + 1)


@pytest.mark.parametrize("assignment_id", [
    UNKNOWN_ASSIGNMENT_FLOOR, UNKNOWN_ASSIGNMENT_FLOOR + 5, FIRST_ASSIGNMENT_ID - 1,
    "abc", "1000001.5", "-1000001", "+1000001",
])
def test_unknown_or_non_integer_assignment_is_404_with_a_json_error(claimx, assignment_id):
    response = get_task(claimx, assignment_id)

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert str(assignment_id) in response.json()["detail"]


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer itel-dev-token"},
    {"Authorization": "claimx-dev-token"},
    {"Authorization": "Basic Y2xhaW14LWRldi10b2tlbg=="},
], ids=["missing", "wrong-token", "no-scheme", "basic"])
def test_missing_or_wrong_token_is_401(claimx, headers):
    response = get_task(claimx, KNOWN_ID, headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"


def test_auth_is_checked_before_the_lookup(claimx):
    assert get_task(claimx, UNKNOWN_ASSIGNMENT_FLOOR, headers={}).status_code == 401


def test_other_paths_are_404_and_other_methods_405(claimx):
    assert httpx.get(f"{claimx.url}/api/v1/tasks", headers=AUTH).status_code == 404
    assert httpx.get(f"{claimx.url}/api/v2/tasks/{KNOWN_ID}", headers=AUTH).status_code == 404
    assert httpx.get(f"{claimx.url}/_admin/nothing").status_code == 404
    posted = httpx.post(f"{claimx.url}/api/v1/tasks/{KNOWN_ID}", headers=AUTH, json={})
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET"
    assert httpx.delete(f"{claimx.url}/api/v1/tasks/{KNOWN_ID}", headers=AUTH).status_code == 405


def test_stats_count_lookups_per_status_and_clear(claimx):
    for _ in range(3):
        get_task(claimx, KNOWN_ID)
    get_task(claimx, UNKNOWN_ASSIGNMENT_FLOOR)
    get_task(claimx, KNOWN_ID, headers={})
    httpx.get(f"{claimx.url}/_admin/health")  # admin requests are not counted

    over_http = httpx.get(f"{claimx.url}/_admin/stats").json()

    assert over_http == claimx.stats()
    assert over_http["total"] == 5
    assert over_http["routes"][TASK_ROUTE] == {
        "total": 5, "by_status": {"200": 3, "401": 1, "404": 1},
    }
    assert httpx.delete(f"{claimx.url}/_admin/stats").json() == {"total": 0, "routes": {}}
    assert claimx.stats()["total"] == 0


def test_health_names_the_simulator(claimx):
    health = httpx.get(f"{claimx.url}/_admin/health")

    assert health.status_code == 200
    assert health.json() == {"status": "ok", "simulator": "claimx", "url": claimx.url}


def test_own_instance_takes_a_free_port_its_token_and_stops():
    with ClaimxSimulator(port=0, token="another-token") as simulator:
        assert simulator.port > 0
        assert simulator.url == f"http://127.0.0.1:{simulator.port}"
        ok = get_task(simulator, KNOWN_ID, headers={"Authorization": "Bearer another-token"})
        assert ok.status_code == 200
        assert get_task(simulator, KNOWN_ID).status_code == 401
    with pytest.raises(httpx.ConnectError):
        get_task(simulator, KNOWN_ID)
