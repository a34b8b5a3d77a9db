"""ClaimX task lookups for a batch: one GET per distinct assignment_id not in the shared cache,
on a bounded thread pool, with retries. Ids another run is fetching at that moment (the other
worker reads the same events) are waited for through the cache's claims, not fetched twice.

It never raises for ClaimX being down: once a lookup has failed after its retries, the batch's
remaining lookups are skipped (enrichment_status = skipped) and one warning says why.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import dagster as dg
import httpx
from pydantic import PrivateAttr

from itel_dagster.resources.api_http_client import ApiHttpClient
from itel_dagster.resources.http_connection import HttpConnectionResource
from itel_dagster.resources.http_retry import RETRY_EXCEPTIONS, RetryRule, is_retryable_status
from itel_dagster.resources.task_cache import TaskCache
from itel_dagster.settings.connections import CLAIMX_FILE, ClaimxConnectionSettings
from itel_dagster.state import open_task_cache

ENRICHED, NOT_FOUND, SKIPPED = "enriched", "not_found", "skipped"
# A claim outlives any healthy fetch of one batch; after it, a waiting run fetches for itself.
CLAIM_LEASE_SECONDS = 30.0
CLAIM_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class TaskLookup:
    status: str  # enriched | not_found | skipped
    body: str | None = None  # the ClaimX task JSON when enriched


@dataclass
class LookupBatch:
    results: dict[int, TaskLookup] = field(default_factory=dict)
    requests_made: int = 0
    cache_hits: int = 0
    warning: str | None = None  # set when some lookups were skipped, with the reason


class _ClaimxUnavailable(Exception):
    pass


class ClaimxLookupClient:
    def __init__(self, settings: ClaimxConnectionSettings, cache: TaskCache | None):
        self.settings = settings
        self.cache = cache
        self.retry = RetryRule(settings.max_retries, settings.retry_backoff_base,
                               settings.retry_backoff_max)

    def lookup(self, assignment_ids: list[int]) -> LookupBatch:
        distinct = sorted(set(assignment_ids))
        batch = LookupBatch()
        missing = self._take_cached(distinct, batch)
        if not missing:
            return batch
        if self.cache is None:
            self._fetch_all(missing, batch)
            return batch
        # Ids another run is fetching right now are waited for, not fetched twice.
        owner = uuid.uuid4().hex
        mine = sorted(self.cache.claim(missing, owner, CLAIM_LEASE_SECONDS))
        try:
            self._fetch_and_cache(mine, batch)
        finally:
            self.cache.release(mine, owner)
        theirs = [a for a in missing if a not in set(mine)]
        if theirs:
            unanswered = self._wait_for_others(theirs, batch)
            if batch.warning:  # ClaimX failed us already: do not try again in this batch
                batch.results.update({a: TaskLookup(SKIPPED) for a in unanswered})
            else:
                self._fetch_and_cache(unanswered, batch)
        return batch

    def _take_cached(self, assignment_ids: list[int], batch: LookupBatch) -> list[int]:
        """Fills batch.results from the cache; returns the ids it did not hold."""
        cached = self.cache.get_many(assignment_ids) if self.cache and assignment_ids else {}
        for assignment_id, (status, body) in cached.items():
            batch.results[assignment_id] = TaskLookup(status, body)
        batch.cache_hits += len(cached)
        return [a for a in assignment_ids if a not in cached]

    def _fetch_and_cache(self, assignment_ids: list[int], batch: LookupBatch) -> None:
        if not assignment_ids:
            return
        self._fetch_all(assignment_ids, batch)
        if self.cache:
            self.cache.put_many({
                a: (batch.results[a].status, batch.results[a].body) for a in assignment_ids
                if batch.results[a].status != SKIPPED
            })

    def _wait_for_others(self, assignment_ids: list[int], batch: LookupBatch) -> list[int]:
        """Waits for answers to ids claimed by other runs; returns those nobody will answer (the
        claim was released without an answer, or lapsed)."""
        assert self.cache is not None
        deadline = time.monotonic() + CLAIM_LEASE_SECONDS
        waiting = assignment_ids
        unanswered: list[int] = []
        while waiting:
            waiting = self._take_cached(waiting, batch)
            held = self.cache.claimed(waiting, CLAIM_LEASE_SECONDS)
            unanswered += [a for a in waiting if a not in held]
            waiting = [a for a in waiting if a in held]
            if waiting and time.monotonic() > deadline:
                return unanswered + waiting
            if waiting:
                time.sleep(CLAIM_POLL_SECONDS)
        return unanswered

    def _fetch_all(self, assignment_ids: list[int], batch: LookupBatch) -> None:
        """Threads with httpx's sync client: its async pool (anyio) cost about 6 ms of CPU per
        request here, the sync one about a third of that, and several runs share 2 cores."""
        s = self.settings
        headers = dict(s.headers)
        if s.auth_token is not None:
            headers["Authorization"] = f"Bearer {s.auth_token.get_secret_value()}"
        timeout = httpx.Timeout(s.timeout_seconds, connect=s.connect_timeout_seconds)
        unavailable: list[str] = []
        counted = threading.Lock()

        with ApiHttpClient(s.base, headers, timeout, s.max_concurrency) as client:

            def one(assignment_id: int) -> None:
                if unavailable:
                    batch.results[assignment_id] = TaskLookup(SKIPPED)
                    return
                try:
                    batch.results[assignment_id] = self._fetch(client, assignment_id, batch,
                                                               counted)
                except _ClaimxUnavailable as exc:
                    unavailable.append(str(exc))
                    batch.results[assignment_id] = TaskLookup(SKIPPED)

            workers = max(1, min(s.max_concurrency, len(assignment_ids)))
            with ThreadPoolExecutor(workers, thread_name_prefix="claimx-lookup") as pool:
                list(pool.map(one, assignment_ids))
        skipped = sum(1 for a in assignment_ids if batch.results[a].status == SKIPPED)
        if skipped:
            batch.warning = (
                f"ClaimX unavailable ({unavailable[0]}); {skipped} of {len(assignment_ids)} "
                "lookups skipped, rows go on without enrichment"
            )

    def _fetch(self, client: ApiHttpClient, assignment_id: int, batch: LookupBatch,
               counted: threading.Lock) -> TaskLookup:
        path = self.settings.task_path.format(assignment_id=assignment_id)
        last_problem = ""
        for attempt in range(self.settings.max_retries + 1):
            retry_after = None
            try:
                with counted:
                    batch.requests_made += 1
                response = client.request("GET", path)
            except RETRY_EXCEPTIONS as exc:
                last_problem = f"{type(exc).__name__} on GET {path}"
            else:
                if response.status_code == 200:
                    return TaskLookup(ENRICHED, response.text)
                if response.status_code == 404:
                    return TaskLookup(NOT_FOUND)
                last_problem = f"HTTP {response.status_code} on GET {path}"
                if not is_retryable_status(response.status_code):
                    raise _ClaimxUnavailable(last_problem)  # e.g. 401: retrying cannot help
                retry_after = response.headers.get("Retry-After")
            if attempt < self.settings.max_retries:
                time.sleep(self.retry.delay(attempt + 1, retry_after))
        raise _ClaimxUnavailable(f"{last_problem} after {self.settings.max_retries} retries")


class ClaimxApiResource(HttpConnectionResource):
    """The ClaimX connection of config/plugins/shared/connections/claimx.yaml as fields (built once
    per process, resources/from_yaml.py; the token a dg.EnvVar) and the shared lookup cache."""

    task_path: str | None = None
    cache_ttl_seconds: float | None = None
    cache_path: str | None = None  # default: <ITEL_STATE_DIR>/cache/claimx_tasks.sqlite

    SETTINGS_FILE: ClassVar[str] = CLAIMX_FILE
    ROOT_KEY: ClassVar[str] = "claimx_api"
    SETTINGS_MODEL: ClassVar[type] = ClaimxConnectionSettings
    OWN_FIELDS: ClassVar[frozenset[str]] = HttpConnectionResource.OWN_FIELDS | {"cache_path"}

    _client: ClaimxLookupClient | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        settings = self.settings()  # a connection not configured fails the run here, saying why
        # SQLite under ITEL_STATE_DIR, or PostgreSQL when ITEL_STATE_URL is set (state/).
        cache = open_task_cache(settings.cache_ttl_seconds,
                                Path(self.cache_path) if self.cache_path else None)
        self._client = ClaimxLookupClient(settings, cache)

    def lookup(self, assignment_ids: list[int]) -> LookupBatch:
        assert self._client is not None, "resource used outside a run"
        return self._client.lookup(assignment_ids)
