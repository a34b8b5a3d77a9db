"""ClaimX lookups against the real simulator: enrichment, 404, retries, outage, the shared cache."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from itel_dagster.devstack.claimx_world import claimx_task
from itel_dagster.resources.claimx_api import ClaimxLookupClient
from itel_dagster.resources.task_cache import TaskCache
from itel_dagster.settings.connections import ClaimxConnectionSettings


def settings_for(simulator, **overrides) -> ClaimxConnectionSettings:
    values = dict(name="claimx_api", base_url=simulator.url, auth_token="claimx-dev-token",
                  timeout_seconds=2, connect_timeout_seconds=1, max_retries=2,
                  retry_backoff_base=0.05, retry_backoff_max=0.2, max_concurrency=4)
    values.update(overrides)
    return ClaimxConnectionSettings(**values)


@pytest.fixture
def cache(tmp_path):
    return TaskCache(tmp_path / "claimx.sqlite", ttl_seconds=60)


def test_enriches_known_and_marks_unknown_ids(claimx, cache):
    client = ClaimxLookupClient(settings_for(claimx), cache)
    batch = client.lookup([1_000_001, 1_000_002, 1_000_001, 9_000_001])
    assert batch.results[1_000_001].status == "enriched"
    assert json.loads(batch.results[1_000_001].body) == claimx_task(1_000_001)
    assert batch.results[9_000_001].status == "not_found"
    assert batch.requests_made == 3  # one per distinct assignment_id
    assert batch.warning is None


def test_cache_is_shared_across_clients_and_expires(claimx, tmp_path):
    path = tmp_path / "shared.sqlite"
    first = ClaimxLookupClient(settings_for(claimx), TaskCache(path, 60))
    second = ClaimxLookupClient(settings_for(claimx), TaskCache(path, 60))  # another process
    first.lookup([1_000_010, 1_000_011])
    again = second.lookup([1_000_010, 1_000_011, 1_000_012])
    assert (again.cache_hits, again.requests_made) == (2, 1)
    short = ClaimxLookupClient(settings_for(claimx), TaskCache(path, ttl_seconds=0.2))
    time.sleep(0.3)
    assert short.lookup([1_000_010]).requests_made == 1


def test_retries_through_a_burst_of_5xx_and_429(claimx, cache):
    claimx.set_faults(burst_5xx=2)
    batch = ClaimxLookupClient(settings_for(claimx), cache).lookup([1_000_020])
    assert batch.results[1_000_020].status == "enriched"
    assert batch.requests_made == 3
    claimx.clear_faults()
    claimx.set_faults(rate_limited=1, retry_after_seconds=0.1)
    batch = ClaimxLookupClient(settings_for(claimx), cache).lookup([1_000_021])
    assert batch.results[1_000_021].status == "enriched"


def test_outage_skips_the_batch_with_one_warning_and_caches_nothing(claimx, cache):
    claimx.set_faults(error_rate=1.0, error_status=503)
    batch = ClaimxLookupClient(settings_for(claimx), cache).lookup(list(range(1_000_030, 1_000_050)))
    assert {r.status for r in batch.results.values()} == {"skipped"}
    assert "ClaimX unavailable" in batch.warning and "20 of 20" in batch.warning
    assert batch.requests_made < 20 * 3  # fail-fast: the batch does not retry every id
    claimx.clear_faults()
    assert cache.get_many(list(range(1_000_030, 1_000_050))) == {}


def test_refused_connections_and_wrong_token_skip(claimx, cache):
    batch = ClaimxLookupClient(settings_for(claimx, auth_token="wrong"), cache).lookup([1_000_060])
    assert batch.results[1_000_060].status == "skipped"
    assert "401" in batch.warning
    claimx.set_faults(refuse_for_seconds=5)
    batch = ClaimxLookupClient(settings_for(claimx), cache).lookup([1_000_061])
    assert batch.results[1_000_061].status == "skipped"
    assert "ConnectError" in batch.warning


def test_two_runs_missing_the_same_ids_at_once_fetch_each_id_once(claimx, tmp_path):
    """Both workers read the same events at the same moment: the second waits for the first's
    answers (a claim in the shared cache) instead of asking ClaimX again."""
    claimx.set_faults(latency_ms=100)  # both lookups overlap for sure
    claimx.clear_stats()
    path = tmp_path / "shared.sqlite"
    ids = list(range(1_000_100, 1_000_140))
    # The simulator counts only requests that arrived after clear_stats (a request of an earlier
    # test still in its latency once made it 41); a 10 s timeout keeps a loaded CI from retrying.
    settings = settings_for(claimx, timeout_seconds=10)
    clients = [ClaimxLookupClient(settings, TaskCache(path, 60)) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        batches = list(pool.map(lambda c: c.lookup(ids), clients))
    for batch in batches:
        assert {a: r.status for a, r in batch.results.items()} == dict.fromkeys(ids, "enriched")
    assert sum(b.requests_made for b in batches) == len(ids)
    assert claimx.stats()["routes"]["GET /api/v1/tasks/{assignment_id}"]["total"] == len(ids)
    assert sorted(b.cache_hits for b in batches)[1] > 0  # one of them waited for the other
    assert TaskCache(path, 60).claimed(ids, 30) == set()  # every claim released


def test_a_claim_released_without_answers_is_fetched_by_the_waiting_run(claimx, tmp_path):
    """The claimant's fetch failed (nothing cached): the waiting run does not wait for its lease
    to lapse, it asks ClaimX itself."""
    path = tmp_path / "shared.sqlite"
    cache = TaskCache(path, 60)
    assert cache.claim([1_000_200], "crashed-run", lease_seconds=30) == {1_000_200}
    client = ClaimxLookupClient(settings_for(claimx), TaskCache(path, 60))
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.lookup, [1_000_200])
        time.sleep(0.3)
        assert not waiting.done()  # held by the other run: it waits
        cache.release([1_000_200], "crashed-run")
        batch = waiting.result(timeout=10)
    assert batch.results[1_000_200].status == "enriched"
    assert batch.requests_made == 1


def test_a_lapsed_claim_does_not_block(claimx, tmp_path):
    path = tmp_path / "shared.sqlite"
    cache = TaskCache(path, 60)
    cache.claim([1_000_300], "dead-run", lease_seconds=30, now=time.time() - 31)
    assert cache.claimed([1_000_300], lease_seconds=30) == set()  # lapsed: nobody holds it
    assert cache.claim([1_000_300], "live-run", lease_seconds=30) == {1_000_300}
    cache.release([1_000_300], "live-run")
    batch = ClaimxLookupClient(settings_for(claimx), TaskCache(path, 60)).lookup([1_000_300])
    assert batch.results[1_000_300].status == "enriched"
    assert batch.requests_made == 1
