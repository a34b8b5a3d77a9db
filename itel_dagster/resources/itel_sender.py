"""The API worker's final stage: sends built iTel payloads, one POST per event or batches of them,
each assignment's events strictly in Kafka order, paced, retried, behind the shared breaker.

It never raises for iTel being down or refusing, nor for one event it cannot send: every event
ends with an outcome. An event the breaker held back is `not_sent` (it stays in Kafka), never
dead-lettered; no secret is logged. Interrupted (a run terminated), it sends nothing more.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import quote

import httpx

from itel_dagster.metrics.pipeline_metrics import ApiCallMetrics
from itel_dagster.resources.api_http_client import ApiHttpClient
from itel_dagster.resources.circuit_breaker import CircuitBreaker, until_text
from itel_dagster.resources.http_retry import (
    RETRY_EXCEPTIONS,
    RetryRule,
    is_retryable_status,
    retry_after_seconds,
)
from itel_dagster.resources.itel_auth import TokenRequestError
from itel_dagster.settings.connections import ItelConnectionSettings

logger = logging.getLogger(__name__)

ACCEPTED, REJECTED, DEAD_LETTERED, NOT_SENT = "accepted", "rejected", "dead_lettered", "not_sent"
FINAL_OUTCOMES = (ACCEPTED, REJECTED, DEAD_LETTERED)
# Our credentials refused: a breaker failure like an outage (the events are fine), never a
# rejection of the event. A 401 counts once a fresh token got one too.
AUTH_REFUSED = frozenset({401, 403})


def idempotency_key(event_id: str) -> str:
    """The Idempotency-Key of an event: its event_id, percent-encoded (UTF-8) when it is not
    printable ASCII, as an HTTP header must be. ASCII ids keep their key unchanged."""
    if event_id.isascii() and event_id.isprintable():
        return event_id
    return quote(event_id, safe="")


def refused_cause(status_code: int) -> str:
    return f"iTel answers {status_code} to every request (credentials or permissions refused)"


def _token_failure_cause(exc: TokenRequestError) -> str:
    if exc.status_code in (400, 401, 403):  # invalid_client is 401 (or 400) in RFC 6749
        return f"iTel token endpoint refused the client credentials (HTTP {exc.status_code})"
    return f"iTel token endpoint failed: {exc}"


@dataclass(frozen=True)
class SendRequest:
    event_id: str  # the Idempotency-Key, see idempotency_key()
    assignment_id: int
    order: int  # the Kafka offset: an assignment's events go in ascending order
    payload: bytes  # the JSON body


@dataclass(frozen=True)
class SendOutcome:
    event_id: str
    assignment_id: int
    order: int
    outcome: str  # accepted | rejected | dead_lettered | not_sent
    status_code: int | None  # the last HTTP status (the item's own in batch mode)
    attempts: int
    attempt_log: list[str]  # one line per attempt, e.g. "HTTP 503 in 21 ms"
    latency_ms: float  # first attempt to final answer, backoff included
    response_body: str | None
    itel_id: str | None
    sent_at: datetime | None  # when the final answer came; None when not sent


@dataclass(frozen=True)
class SendReport:
    outcomes: list[SendOutcome]  # in the order of the requests
    requests_made: int
    retried: int  # attempts beyond each event's first
    breaker_state: str
    skipped_by_breaker: int  # events not sent because the breaker was open
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    warning: str | None = None  # why sending stopped early, when it did


@dataclass
class _Track:
    """One event on its way: its attempts so far and, once decided, its outcome."""

    request: SendRequest
    attempts: int = 0
    log: list[str] = field(default_factory=list)
    first_attempt_at: float | None = None
    retries: int = 0  # backoff retries used (the one retry after a 401 is not one)
    not_before: float = 0.0  # batch mode: monotonic time its retry may go
    status_code: int | None = None
    body: str | None = None
    outcome: SendOutcome | None = None

    def note(self, started: float, line: str, status_code: int | None, body: str | None) -> None:
        if self.first_attempt_at is None:
            self.first_attempt_at = started
        self.attempts += 1
        self.log.append(line)
        self.status_code, self.body = status_code, body

    def finish(self, outcome: str, itel_id: str | None = None) -> None:
        began = self.first_attempt_at
        r = self.request
        self.outcome = SendOutcome(
            r.event_id, r.assignment_id, r.order, outcome, self.status_code, self.attempts,
            list(self.log), (time.perf_counter() - began) * 1000 if began is not None else 0.0,
            self.body, itel_id,
            datetime.now(timezone.utc) if outcome in FINAL_OUTCOMES else None)


@dataclass
class _Answer:
    """One HTTP attempt that went out (or whose token could not be had)."""

    started: float
    line: str  # its attempt_log line
    retryable: bool
    response: httpx.Response | None = None
    retry_after: str | None = None
    auth_headers: dict[str, str] | None = None


@dataclass
class _Call:
    """The state of one send(): its client, counts, and why it stopped, once it has."""

    client: ApiHttpClient
    metrics: ApiCallMetrics
    requests_made: int = 0
    stopped: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    halt: threading.Event = field(default_factory=threading.Event)  # set once stopped

    def count_request(self) -> None:
        with self.lock:
            self.requests_made += 1

    def stop(self, reason: str) -> None:
        """No request starts after this; waits (pacing, backoff) end at once."""
        with self.lock:
            self.stopped = self.stopped or reason
        self.halt.set()


class _Pacer:
    """At most `rate` requests a second: each takes the next slot 1/rate after the previous one
    and sleeps until it (no busy loop, no burst)."""

    def __init__(self, rate_per_second: float):
        self.interval = 1.0 / rate_per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, halt: threading.Event) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            halt.wait(slot - now)


def _ms(since: float) -> int:
    return round((time.perf_counter() - since) * 1000)


def _json_field(response: httpx.Response, name: str):
    try:
        document = response.json()
    except ValueError:
        return None
    return document.get(name) if isinstance(document, dict) else None


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)], 3)


class ItelSender:
    def __init__(self, settings: ItelConnectionSettings, breaker: CircuitBreaker, auth,
                 batch_endpoint: str | None = None, batch_size: int = 50,
                 max_response_chars: int = 2000):
        self.settings = settings
        self.breaker = breaker
        self.auth = auth
        self.batch_endpoint = batch_endpoint
        self.batch_size = batch_size
        self.max_response_chars = max_response_chars
        self.retry = RetryRule(settings.max_retries, settings.retry_backoff_base,
                               settings.retry_backoff_max)
        self._pacer = _Pacer(settings.rate_limit_per_second)

    def send(self, requests: list[SendRequest]) -> SendReport:
        tracks = [_Track(r) for r in requests]
        metrics = ApiCallMetrics()  # each request's status and latency, stored once per send()
        try:
            call = self._send_all(tracks, metrics) if tracks else None
        finally:
            metrics.flush()  # never raises
        outcomes = [t.outcome for t in tracks]
        latencies = [o.latency_ms for o in outcomes if o.outcome in FINAL_OUTCOMES]
        skipped = sum(1 for o in outcomes if o.outcome == NOT_SENT)
        if skipped:
            logger.warning("iTel sends stopped (%s): %d of %d events not sent, they stay in Kafka",
                           call.stopped, skipped, len(outcomes))
        return SendReport(
            outcomes=outcomes,
            requests_made=call.requests_made if call else 0,
            retried=sum(max(0, o.attempts - 1) for o in outcomes),
            breaker_state=self.breaker.state().state,
            skipped_by_breaker=skipped,
            latency_p50_ms=_percentile(latencies, 0.50),
            latency_p95_ms=_percentile(latencies, 0.95),
            warning=call.stopped if call and skipped else None,
        )

    # -- the shared step: one paced, breaker-guarded, authenticated request ---------------------

    def _send_all(self, tracks: list[_Track], metrics: ApiCallMetrics) -> _Call:
        # Threads with httpx's sync client: its async pool (anyio) cost about 6 ms of CPU per
        # request here, the sync one about a third of that, and several runs share 2 cores.
        s = self.settings
        timeout = httpx.Timeout(s.timeout_seconds, connect=s.connect_timeout_seconds)
        with ApiHttpClient(s.base, dict(s.headers), timeout, s.max_concurrency) as client:
            call = _Call(client, metrics)
            by_assignment: dict[int, list[_Track]] = {}
            for track in sorted(tracks, key=lambda t: t.request.order):
                by_assignment.setdefault(track.request.assignment_id, []).append(track)
            if self.batch_endpoint:
                self._send_in_batches(call, by_assignment)
            else:
                self._send_one_by_one(call, by_assignment)
        for track in tracks:
            if track.outcome is None:  # held back once sending stopped
                track.finish(NOT_SENT)
        return call

    def _attempt(self, call: _Call, method: str, path: str, content: bytes,
                       headers: dict[str, str]) -> _Answer | None:
        """One request; None when sending has stopped (breaker open, interrupted)."""
        self._pacer.wait(call.halt)
        if call.stopped:
            return None
        if not self.breaker.allow_request():
            state = self.breaker.state()
            call.stop(f"circuit breaker {state.state}" + (f" ({state.cause})" if state.cause
                                                          else ""))
            return None
        started = time.perf_counter()
        try:
            auth_headers = self.auth.headers(call.client.client)
        except TokenRequestError as exc:
            # Refused credentials fail like an outage: retried, and the breaker opens (the
            # events stay in Kafka) instead of a run that sends nothing being dispatched again.
            self.breaker.record_failure(_token_failure_cause(exc))
            return _Answer(started, f"{exc} in {_ms(started)} ms", retryable=True)
        call.count_request()
        sent = time.perf_counter()
        try:
            response = call.client.request(method, path, content=content,
                                                 headers={**headers, **auth_headers})
        except RETRY_EXCEPTIONS as exc:
            call.metrics.request_done(None, time.perf_counter() - sent)
            self.breaker.record_failure(f"iTel unreachable ({type(exc).__name__})")
            return _Answer(started, f"{type(exc).__name__} in {_ms(started)} ms", True,
                           auth_headers=auth_headers)
        status = response.status_code
        call.metrics.request_done(status, time.perf_counter() - sent)
        retryable = is_retryable_status(status) or status in AUTH_REFUSED
        if status == 403:
            self.breaker.record_failure(refused_cause(status))
        elif retryable and status != 401:  # a 401 counts once a fresh token got one too
            self.breaker.record_failure(f"iTel answered HTTP {status}")
        elif not retryable:
            self.breaker.record_success()  # an answer, even a 4xx, says iTel is up
        retry_after = response.headers.get("Retry-After") if is_retryable_status(status) else None
        waited = f" Retry-After {retry_after}" if retry_after else ""
        self._hold_for_long_retry_after(call, status, retry_after)
        return _Answer(started, f"HTTP {status}{waited} in {_ms(started)} ms",
                       retryable, response, retry_after, auth_headers)

    def _hold_for_long_retry_after(self, call: _Call, status: int, retry_after: str | None) -> None:
        """A Retry-After beyond max_retry_after_seconds is not slept in a sender thread: the
        breaker opens until then (runs pause, events wait in Kafka) and sending stops."""
        asked = retry_after_seconds(retry_after)
        limit = self.settings.max_retry_after_seconds
        if asked is None or asked <= limit:
            return
        until = time.time() + asked
        cause = (f"iTel answered HTTP {status} with Retry-After {retry_after} "
                 f"(over max_retry_after_seconds {limit:g})")
        self.breaker.hold_open(until, cause)
        call.stop(f"{cause}; circuit breaker open until {until_text(until)}")

    def _attempt_reauthorized(self, call: _Call, method: str, path: str, content: bytes,
                                    headers: dict[str, str], note_401) -> _Answer | None:
        """An attempt, and once more after a 401 with a refreshed token (an expired one)."""
        answer = self._attempt(call, method, path, content, headers)
        response = answer.response if answer is not None else None
        if response is not None and response.status_code == 401:
            note_401(answer)
            self.auth.invalidate(answer.auth_headers)
            answer = self._attempt(call, method, path, content, headers)
            if answer is not None and answer.response is not None and (
                    answer.response.status_code == 401):
                self.breaker.record_failure(refused_cause(401))
        return answer

    def _backoff(self, track: _Track, retry_after: str | None) -> float | None:
        """Seconds until the track's next retry, or None when out of them: dead-lettered, unless
        its last failure opened the breaker (an outage, not the event: it stays in Kafka)."""
        if track.retries >= self.settings.max_retries:
            if not self.breaker.is_open_now():
                track.finish(DEAD_LETTERED)
            return None
        track.retries += 1
        return self.retry.delay(track.retries, retry_after, cap_retry_after=False)

    def _note(self, track: _Track, answer: _Answer, line: str) -> None:
        response = answer.response
        if response is None:
            track.note(answer.started, line, None, None)
        else:
            track.note(answer.started, line, response.status_code,
                       response.text[:self.max_response_chars])

    # -- one request per event -----------------------------------------------------------------

    def _send_one_by_one(self, call: _Call, by_assignment: dict[int, list[_Track]]) -> None:
        def in_order(group: list[_Track]) -> None:
            for track in group:
                if call.stopped:
                    return
                try:
                    self._send_one(call, track)
                except Exception as exc:  # noqa: BLE001 - one event's problem is its outcome
                    self._dead_letter_unexpected(track, exc)

        self._on_threads(call, in_order, list(by_assignment.values()))

    def _dead_letter_unexpected(self, track: _Track, exc: Exception) -> None:
        """An exception nothing above expects (a bug, an unsendable value) ends this event, not
        the whole send: dead-lettered with the reason, and its lane goes on."""
        if track.outcome is not None:
            return
        reason = f"not sent: {type(exc).__name__}: {exc}"
        logger.warning("iTel send of event %r failed unexpectedly: %s", track.request.event_id,
                       reason)
        track.note(time.perf_counter(), reason, None, reason[:self.max_response_chars])
        track.finish(DEAD_LETTERED)

    def _on_threads(self, call: _Call, work, items: list) -> None:
        """work(item) for every item, at most max_concurrency at a time. Interrupted (Dagster
        terminating the run raises in this thread), the threads start no further request and
        wake from their waits; only requests already on the wire finish."""
        if not items:
            return
        workers = max(1, min(self.settings.max_concurrency, len(items)))
        with ThreadPoolExecutor(workers, thread_name_prefix="itel-send") as pool:
            try:
                list(pool.map(work, items))
            except BaseException:
                call.stop("interrupted")
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    def _send_one(self, call: _Call, track: _Track) -> None:
        headers = {"Idempotency-Key": idempotency_key(track.request.event_id),
                   "Content-Type": "application/json"}
        while True:
            answer = self._attempt_reauthorized(
                call, self.settings.method, self.settings.endpoint, track.request.payload,
                headers, lambda first: self._note(track, first, first.line))
            if answer is None:
                return  # not sent: finished with everything held back
            response = answer.response
            self._note(track, answer, answer.line)
            if response is not None and not answer.retryable:
                if response.is_success:
                    return track.finish(ACCEPTED, _json_field(response, "itel_id"))
                return track.finish(REJECTED)
            if call.stopped:
                return  # e.g. a Retry-After past max_retry_after_seconds: not sent
            wait = self._backoff(track, answer.retry_after)
            if wait is None:
                return
            call.halt.wait(wait)

    # -- batches: round after round of each assignment's next event ------------------------------

    def _send_in_batches(self, call: _Call, by_assignment: dict[int, list[_Track]]) -> None:
        tasks: dict[str, object] = {}
        for group in by_assignment.values():
            for track in group:
                try:
                    tasks[track.request.event_id] = json.loads(track.request.payload)
                except ValueError as exc:
                    track.body = f"payload is not valid JSON: {exc}"
                    track.finish(REJECTED)
        queues = {a: deque(t for t in group if t.outcome is None)
                  for a, group in by_assignment.items()}
        queues = {a: q for a, q in queues.items() if q}

        # A batch holds at most one event per assignment, its earliest pending one, so a later
        # event never goes before an earlier one is accepted or finally failed.
        while queues and not call.stopped:
            now = time.monotonic()
            heads = [q[0] for q in queues.values() if q[0].not_before <= now]
            if not heads:
                call.halt.wait(max(0.0, min(q[0].not_before for q in queues.values()) - now))
                continue
            chunks = [heads[i:i + self.batch_size] for i in range(0, len(heads), self.batch_size)]
            self._on_threads(call, lambda chunk: self._send_batch_or_dead_letter(
                call, chunk, tasks), chunks)
            for assignment_id in list(queues):
                queue = queues[assignment_id]
                if queue[0].outcome is not None:
                    queue.popleft()
                if not queue:
                    del queues[assignment_id]

    def _send_batch_or_dead_letter(self, call: _Call, chunk: list[_Track], tasks: dict) -> None:
        try:
            self._send_batch(call, chunk, tasks)
        except Exception as exc:  # noqa: BLE001 - the chunk's problem is its events' outcome
            for track in chunk:
                self._dead_letter_unexpected(track, exc)

    def _send_batch(self, call: _Call, chunk: list[_Track], tasks: dict) -> None:
        body = json.dumps([
            {"idempotency_key": idempotency_key(t.request.event_id),
             "task": tasks[t.request.event_id]}
            for t in chunk]).encode()
        prefix = f"batch of {len(chunk)}: "
        answer = self._attempt_reauthorized(
            call, "POST", self.batch_endpoint, body, {"Content-Type": "application/json"},
            lambda first: self._note_all(chunk, first, prefix))
        if answer is None:
            return
        response = answer.response
        if response is not None and response.is_success:
            self._map_results(chunk, answer, prefix + answer.line)
            return
        self._note_all(chunk, answer, prefix)
        if answer.retryable and call.stopped:
            return  # e.g. a Retry-After past max_retry_after_seconds: the chunk is not sent
        for track in chunk:
            if answer.retryable:
                wait = self._backoff(track, answer.retry_after)
                if wait is not None:
                    track.not_before = time.monotonic() + wait
            else:  # the whole batch refused (4xx): every item with that answer
                track.finish(REJECTED)

    def _note_all(self, chunk: list[_Track], answer: _Answer, prefix: str) -> None:
        for track in chunk:
            self._note(track, answer, prefix + answer.line)

    def _map_results(self, chunk: list[_Track], answer: _Answer, line: str) -> None:
        """Each item's result (matched by index) decides its event, as a single answer would."""
        try:
            results = answer.response.json()
        except ValueError:
            results = None
        by_index = {}
        if isinstance(results, list):
            for position, result in enumerate(results):
                if isinstance(result, dict):
                    by_index[result.get("index", position)] = result
        for index, track in enumerate(chunk):
            result = by_index.get(index)
            status = result.get("status") if result else None
            if not isinstance(status, int):
                track.note(answer.started, f"{line}, no result for the item", None, None)
                status, result = 503, None  # unknown: the Idempotency-Key makes a resend safe
            else:
                text = json.dumps(result)[:self.max_response_chars]
                track.note(answer.started, f"{line}, item {status}", status, text)
            if 200 <= status < 300:
                track.finish(ACCEPTED, result.get("itel_id"))
            elif is_retryable_status(status):
                wait = self._backoff(track, None)
                if wait is not None:
                    track.not_before = time.monotonic() + wait
            else:
                track.finish(REJECTED)
