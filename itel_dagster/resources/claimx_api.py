"""ClaimX task lookups for a batch: one GET per distinct assignment_id not in the shared cache,
async with bounded concurrency and retries.

It never raises for ClaimX being down: once a lookup has failed after its retries, the batch's
remaining lookups are skipped (enrichment_status = skipped) and one warning says why.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import httpx
from pydantic import PrivateAttr

from itel_dagster.resources.http_retry import RETRY_EXCEPTIONS, RetryRule, is_retryable_status
from itel_dagster.resources.task_cache import TaskCache
from itel_dagster.settings.connections import ClaimxConnectionSettings, load_claimx_connection
from itel_dagster.settings.paths import state_dir

ENRICHED, NOT_FOUND, SKIPPED = "enriched", "not_found", "skipped"


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
        cached = self.cache.get_many(distinct) if self.cache else {}
        for assignment_id, (status, body) in cached.items():
            batch.results[assignment_id] = TaskLookup(status, body)
        batch.cache_hits = len(cached)
        missing = [a for a in distinct if a not in cached]
        if missing:
            asyncio.run(self._fetch_all(missing, batch))
        if self.cache:
            self.cache.put_many({
                a: (r.status, r.body) for a, r in batch.results.items()
                if r.status != SKIPPED and a in missing
            })
        return batch

    async def _fetch_all(self, assignment_ids: list[int], batch: LookupBatch) -> None:
        s = self.settings
        headers = dict(s.headers)
        if s.auth_token is not None:
            headers["Authorization"] = f"Bearer {s.auth_token.get_secret_value()}"
        timeout = httpx.Timeout(s.timeout_seconds, connect=s.connect_timeout_seconds)
        limits = httpx.Limits(max_connections=s.max_concurrency)
        gate = asyncio.Semaphore(s.max_concurrency)
        unavailable: list[str] = []

        async with httpx.AsyncClient(base_url=s.base, headers=headers, timeout=timeout,
                                     limits=limits) as client:

            async def one(assignment_id: int) -> None:
                async with gate:
                    if unavailable:
                        batch.results[assignment_id] = TaskLookup(SKIPPED)
                        return
                    try:
                        batch.results[assignment_id] = await self._fetch(client, assignment_id, batch)
                    except _ClaimxUnavailable as exc:
                        unavailable.append(str(exc))
                        batch.results[assignment_id] = TaskLookup(SKIPPED)

            await asyncio.gather(*(one(a) for a in assignment_ids))
        skipped = sum(1 for a in assignment_ids if batch.results[a].status == SKIPPED)
        if skipped:
            batch.warning = (
                f"ClaimX unavailable ({unavailable[0]}); {skipped} of {len(assignment_ids)} "
                "lookups skipped, rows go on without enrichment"
            )

    async def _fetch(self, client: httpx.AsyncClient, assignment_id: int, batch: LookupBatch):
        path = self.settings.task_path.format(assignment_id=assignment_id)
        last_problem = ""
        for attempt in range(self.settings.max_retries + 1):
            retry_after = None
            try:
                batch.requests_made += 1
                response = await client.get(path)
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
                await asyncio.sleep(self.retry.delay(attempt + 1, retry_after))
        raise _ClaimxUnavailable(f"{last_problem} after {self.settings.max_retries} retries")


class ClaimxApiResource(dg.ConfigurableResource):
    """The ClaimX connection of config/plugins/shared/connections/claimx.yaml and the shared
    lookup cache. Settings are read when a run starts, so the code location loads without them."""

    cache_path: str | None = None  # default: <ITEL_STATE_DIR>/cache/claimx_tasks.sqlite

    _client: ClaimxLookupClient | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        settings = load_claimx_connection()
        path = Path(self.cache_path) if self.cache_path else state_dir() / "cache" / "claimx_tasks.sqlite"
        cache = TaskCache(path, settings.cache_ttl_seconds)
        self._client = ClaimxLookupClient(settings, cache)

    def lookup(self, assignment_ids: list[int]) -> LookupBatch:
        assert self._client is not None, "resource used outside a run"
        return self._client.lookup(assignment_ids)
