"""The iTel simulator's batch endpoint over loopback HTTP: 207 with a result per item, records as
single sends make them, Idempotency-Keys across both routes, whole-batch faults, auth."""

from __future__ import annotations

import httpx

from itel_dagster.devstack.simulators.itel import token_sha256
from itel_dagster_tests.fixtures.simulator_fixtures import itel_task_payload

STATIC_TOKEN = "itel-dev-token"


def post_batch(simulator, body, token=STATIC_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{simulator.url}/api/v1/tasks/batch", json=body, headers=headers)


def items(*keys_and_ids) -> list[dict]:
    return [{"idempotency_key": key, "task": itel_task_payload(assignment_id)}
            for key, assignment_id in keys_and_ids]


def test_batch_answers_207_with_a_result_per_item_and_records_each(itel):
    response = post_batch(itel, items(("e-1", 1_000_001), ("e-2", 1_000_002), ("e-3", 1_000_003)))

    assert response.status_code == 207
    results = response.json()
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["idempotency_key"] for r in results] == ["e-1", "e-2", "e-3"]
    assert [r["status"] for r in results] == [201, 201, 201]
    records = itel.accepted_requests()
    assert [r["itel_id"] for r in records] == [r["itel_id"] for r in results]
    assert [r["idempotency_key"] for r in records] == ["e-1", "e-2", "e-3"]
    assert [r["body"] for r in records] == [itel_task_payload(1_000_000 + n) for n in (1, 2, 3)]
    for record in records:
        assert record["via"] == "batch"
        assert record["auth_via"] == "static_token"
        assert record["auth_token_sha256"] == token_sha256(STATIC_TOKEN)
        assert record["headers"]["authorization"] == "Bearer ****oken"
    assert itel.stats()["routes"]["POST /api/v1/tasks/batch"] == {
        "total": 1, "by_status": {"207": 1}}


def test_invalid_items_get_422_with_errors_and_the_rest_are_accepted(itel):
    broken = itel_task_payload(1_000_002)
    del broken["task_status"]
    body = [*items(("ok-1", 1_000_001)), {"idempotency_key": "bad-1", "task": broken},
            {"task": itel_task_payload(1_000_003)}, "not an object",
            *items(("ok-2", 1_000_004))]

    results = post_batch(itel, body).json()

    assert [r["status"] for r in results] == [201, 422, 422, 422, 201]
    assert results[1]["errors"] == [{"field": "task.task_status", "problem": "is required"}]
    assert results[2]["errors"][0]["field"] == "idempotency_key"
    assert "itel_id" not in results[1]
    assert [r["idempotency_key"] for r in itel.accepted_requests()] == ["ok-1", "ok-2"]


def test_a_repeated_key_is_replayed_not_recorded_twice_across_batch_and_single(itel):
    single = httpx.post(f"{itel.url}/api/v1/tasks", json=itel_task_payload(1_000_001),
                        headers={"Authorization": f"Bearer {STATIC_TOKEN}",
                                 "Idempotency-Key": "k-1"})
    first = post_batch(itel, items(("k-1", 1_000_001), ("k-2", 1_000_002), ("k-2", 1_000_002)))
    again = post_batch(itel, items(("k-2", 1_000_002)))

    results = first.json()
    assert [r["status"] for r in results] == [200, 201, 200]
    assert results[0]["itel_id"] == single.json()["itel_id"]
    assert results[0]["idempotent_replayed"] is True
    assert "idempotent_replayed" not in results[1]
    assert results[2]["itel_id"] == results[1]["itel_id"]
    assert again.json()[0] == {"index": 0, "idempotency_key": "k-2", "status": 200,
                               "itel_id": results[1]["itel_id"], "idempotent_replayed": True}
    assert [r["idempotency_key"] for r in itel.accepted_requests()] == ["k-1", "k-2"]


def test_a_body_that_is_not_a_non_empty_array_of_at_most_500_is_422(itel):
    for body in ({"idempotency_key": "x", "task": itel_task_payload()}, [],
                 items(*[(f"k-{n}", 1_000_001) for n in range(501)])):
        response = post_batch(itel, body)
        assert response.status_code == 422
        assert response.json()["error"] == "invalid_batch"
    not_json = httpx.post(f"{itel.url}/api/v1/tasks/batch", content=b"{nope",
                          headers={"Authorization": f"Bearer {STATIC_TOKEN}"})
    assert not_json.status_code == 422
    assert itel.accepted_requests() == []


def test_batch_needs_a_valid_bearer_token_static_or_oauth2(itel):
    assert post_batch(itel, items(("a", 1_000_001)), token=None).status_code == 401
    assert post_batch(itel, items(("a", 1_000_001)), token="wrong").status_code == 401
    token = httpx.post(f"{itel.url}/oauth/token", data={"grant_type": "client_credentials"},
                       auth=(itel.client_id, itel.client_secret)).json()["access_token"]
    assert post_batch(itel, items(("a", 1_000_001)), token=token).status_code == 207
    [record] = itel.accepted_requests()
    assert record["auth_via"] == "oauth2_access_token"
    assert record["auth_token_sha256"] == token_sha256(token)
    itel.expire_tokens()
    assert post_batch(itel, items(("b", 1_000_002)), token=token).status_code == 401


def test_faults_hit_the_batch_as_a_whole(itel):
    itel.set_faults(burst_5xx=1)

    failed = post_batch(itel, items(("a", 1_000_001), ("b", 1_000_002)))
    retried = post_batch(itel, items(("a", 1_000_001), ("b", 1_000_002)))

    assert failed.status_code == 503
    assert retried.status_code == 207
    assert [r["status"] for r in retried.json()] == [201, 201]
    assert len(itel.accepted_requests()) == 2
