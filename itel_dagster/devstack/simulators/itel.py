"""The iTel Cabinet API simulator: POST /api/v1/tasks validates a task payload and records each
accepted one, honouring Idempotency-Key; POST /api/v1/tasks/batch does the same for up to 500
`{"idempotency_key", "task"}` items, answering 207 with one result per item; POST /oauth/token
issues OAuth2 client-credentials tokens.

It never stores a bearer token in clear: a record keeps the token's SHA-256 (compare with
`token_sha256(token)`) and an Authorization header masked to its last 4 characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from itel_dagster.devstack.simulators.http_server import (
    Request,
    Response,
    SimulatorServer,
    error_response,
    same_secret,
    unauthorized,
)

TASKS_ROUTE = "/api/v1/tasks"
BATCH_ROUTE = "/api/v1/tasks/batch"
MAX_BATCH_ITEMS = 500
TOKEN_ROUTE = "/oauth/token"


def token_sha256(token: str) -> str:
    """How a record names the bearer token it was sent with."""
    return hashlib.sha256(token.encode()).hexdigest()


def masked_authorization(token: str) -> str:
    shown = token[-4:] if len(token) > 8 else ""
    return f"Bearer ****{shown}"


# -- the task payload ------------------------------------------------------------------------

_FIELD_TYPES: dict[str, tuple[type, str]] = {
    "task_id": (int, "an integer"),
    "assignment_id": (int, "an integer"),
    "project_id": (str, "a string"),
    "task_status": (str, "a string"),
    "source_system": (str, "a string"),
}
_REPAIR_DETAIL_FIELDS = ("cabinet_id", "technician_notes")


def _is_a(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)  # JSON true is not a number


def payload_problems(body: Any) -> list[dict[str, str]]:
    """Everything wrong with a task payload, one {"field", "problem"} each; [] when valid."""
    if not isinstance(body, dict):
        return [{"field": "(body)", "problem": "must be a JSON object"}]
    problems = []
    for name, (kind, described) in _FIELD_TYPES.items():
        if name not in body:
            problems.append({"field": name, "problem": "is required"})
        elif not _is_a(body[name], kind):
            problems.append({"field": name, "problem": f"must be {described}"})
    details = body.get("repair_details")
    if "repair_details" not in body:
        problems.append({"field": "repair_details", "problem": "is required"})
    elif not isinstance(details, dict):
        problems.append({"field": "repair_details", "problem": "must be an object"})
    else:
        for name in _REPAIR_DETAIL_FIELDS:
            if name not in details:
                problems.append({"field": f"repair_details.{name}", "problem": "is required"})
            elif details[name] is not None and not isinstance(details[name], str):
                problems.append({"field": f"repair_details.{name}",
                                 "problem": "must be a string or null"})
    return problems


# -- OAuth2 access tokens ----------------------------------------------------------------------

class AccessTokens:
    """Tokens issued by /oauth/token, each valid until its expiry (monotonic clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}

    def issue(self, ttl_seconds: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[token] = time.monotonic() + ttl_seconds
        return token

    def is_valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._expiry.get(token)
        return expiry is not None and time.monotonic() < expiry

    def expire_all(self) -> int:
        """Expire every token still valid; how many that was."""
        now = time.monotonic()
        with self._lock:
            live = [t for t, expiry in self._expiry.items() if expiry > now]
            for token in live:
                self._expiry[token] = now
        return len(live)

    def forget_all(self) -> None:
        with self._lock:
            self._expiry.clear()


def client_credentials(request: Request, form: dict[str, list[str]]) -> tuple[str, str] | None:
    """(client_id, client_secret) from HTTP Basic auth, else from the form; None if absent."""
    scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        client_id, colon, secret = decoded.partition(":")
        return (client_id, secret) if colon else None
    if "client_id" in form and "client_secret" in form:
        return form["client_id"][0], form["client_secret"][0]
    return None


# -- accepted requests ---------------------------------------------------------------------------

class AcceptedRequests:
    """The record of accepted sends, in arrival order, with one record per Idempotency-Key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[dict] = []
        self._by_idempotency_key: dict[str, dict] = {}
        self._issued = 0  # never reset, so an itel_id is unique for the server's life

    def accept(self, make_record, idempotency_key: str | None) -> tuple[dict, bool]:
        """(record, replayed): the earlier record of `idempotency_key`, or a new one. A record's
        `requests` counts the valid POSTs of its key (1 + replays): the re-sends a crash cost."""
        with self._lock:
            earlier = self._by_idempotency_key.get(idempotency_key) if idempotency_key else None
            if earlier is not None:
                earlier["requests"] += 1
                return earlier, True
            self._issued += 1
            record = {**make_record(f"ITEL-{self._issued}"), "requests": 1}
            self._records.append(record)
            if idempotency_key:
                self._by_idempotency_key[idempotency_key] = record
            return record, False

    def all(self) -> list[dict]:
        with self._lock:
            return list(self._records)

    def clear(self) -> int:
        with self._lock:
            cleared = len(self._records)
            self._records.clear()
            self._by_idempotency_key.clear()
            return cleared


class ItelSimulator(SimulatorServer):
    name = "itel"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str = "itel-dev-token",
                 client_id: str = "itel-dev-client", client_secret: str = "itel-dev-secret",
                 seed: int = 0, token_ttl_seconds: int = 3600) -> None:
        super().__init__(host, port, seed)
        self.token = token
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl_seconds = token_ttl_seconds
        self._access_tokens = AccessTokens()
        self._accepted = AcceptedRequests()
        self.add_route("POST", TASKS_ROUTE, self._post_task)
        self.add_route("POST", BATCH_ROUTE, self._post_batch)
        self.add_route("POST", TOKEN_ROUTE, self._issue_token)
        self.add_route("GET", "/_admin/requests",
                       lambda _: Response(200, self.accepted_requests()), admin=True)
        self.add_route("DELETE", "/_admin/requests",
                       lambda _: Response(200, {"cleared": self.clear_requests()}), admin=True)
        self.add_route("POST", "/_admin/expire_tokens",
                       lambda _: Response(200, {"expired": self.expire_tokens()}), admin=True)

    # -- Python side of the admin endpoints --------------------------------------------------

    def accepted_requests(self) -> list[dict]:
        return self._accepted.all()

    def clear_requests(self) -> int:
        """Forget the accepted requests and their Idempotency-Keys; how many were forgotten."""
        return self._accepted.clear()

    def expire_tokens(self) -> int:
        """Expire every issued access token (the static token stays valid)."""
        return self._access_tokens.expire_all()

    def reset_state(self) -> None:
        super().reset_state()
        self.clear_requests()
        self._access_tokens.forget_all()

    # -- the API -----------------------------------------------------------------------------

    def _is_static_token(self, token: str) -> bool:
        return same_secret(token, self.token)

    def _is_accepted_token(self, token: str) -> bool:
        return self._is_static_token(token) or self._access_tokens.is_valid(token)

    def _token_and_body(self, request: Request, error: str) -> tuple[str, Any] | Response:
        """The accepted bearer token and the parsed JSON body, or the 401 / 422 answer."""
        token = self.accepted_bearer_token(request, self._is_accepted_token)
        if token is None:
            return unauthorized("missing, wrong or expired bearer token",
                                challenge='Bearer error="invalid_token"')
        try:
            return token, request.json()
        except ValueError:
            return error_response(422, error,
                                  [{"field": "(body)", "problem": "is not valid JSON"}])

    def _post_task(self, request: Request) -> Response:
        checked = self._token_and_body(request, "invalid_payload")
        if isinstance(checked, Response):
            return checked
        token, body = checked
        problems = payload_problems(body)
        if problems:
            return error_response(422, "invalid_payload", problems)
        idempotency_key = request.headers.get("Idempotency-Key")
        record, replayed = self._accepted.accept(
            lambda itel_id: self._record(itel_id, request, token, body, idempotency_key),
            idempotency_key)
        answer = {"itel_id": record["itel_id"], "status": "accepted"}
        if replayed:
            return Response(200, answer, {"Idempotent-Replayed": "true"})
        return Response(201, answer)

    def _post_batch(self, request: Request) -> Response:
        """207 with one result per item, in order; each item as if POSTed alone."""
        checked = self._token_and_body(request, "invalid_batch")
        if isinstance(checked, Response):
            return checked
        token, items = checked
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
            return error_response(422, "invalid_batch", [{
                "field": "(body)",
                "problem": f"must be a JSON array of 1 to {MAX_BATCH_ITEMS} items"}])
        return Response(207, [self._batch_item(index, item, request, token)
                              for index, item in enumerate(items)])

    def _batch_item(self, index: int, item: Any, request: Request, token: str) -> dict:
        if not isinstance(item, dict):
            return {"index": index, "idempotency_key": None, "status": 422,
                    "errors": [{"field": "(item)", "problem": "must be a JSON object"}]}
        key = item.get("idempotency_key")
        problems = [{"field": f"task.{p['field']}" if p["field"] != "(body)" else "task",
                     "problem": p["problem"]} for p in payload_problems(item.get("task"))]
        if not isinstance(key, str) or not key:
            problems.insert(0, {"field": "idempotency_key",
                                "problem": "must be a non-empty string"})
        if problems:
            return {"index": index, "idempotency_key": key, "status": 422, "errors": problems}
        record, replayed = self._accepted.accept(
            lambda itel_id: {**self._record(itel_id, request, token, item["task"], key),
                             "via": "batch"}, key)
        result = {"index": index, "idempotency_key": key, "status": 200 if replayed else 201,
                  "itel_id": record["itel_id"]}
        if replayed:
            result["idempotent_replayed"] = True
        return result

    def _record(self, itel_id: str, request: Request, token: str, body: dict,
                idempotency_key: str | None) -> dict:
        headers = {name.lower(): value for name, value in request.headers.items()}
        headers["authorization"] = masked_authorization(token)
        return {
            "itel_id": itel_id,
            "received_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "idempotency_key": idempotency_key,
            "auth_via": "static_token" if self._is_static_token(token) else "oauth2_access_token",
            "auth_token_sha256": token_sha256(token),
            "headers": headers,
            "body": body,
        }

    def _issue_token(self, request: Request) -> Response:
        try:
            form = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return Response(400, {"error": "invalid_request"})
        grant_type = form.get("grant_type", [""])[0]
        if grant_type != "client_credentials":
            error = "invalid_request" if not grant_type else "unsupported_grant_type"
            return Response(400, {"error": error})
        credentials = client_credentials(request, form)
        valid = (
            credentials is not None
            and not self.fault_injector.wrong_auth()
            and same_secret(credentials[0], self.client_id)
            and same_secret(credentials[1], self.client_secret)
        )
        if not valid:
            return Response(401, {"error": "invalid_client"},
                            {"WWW-Authenticate": 'Basic realm="itel"'})
        answer = {
            "access_token": self._access_tokens.issue(self.token_ttl_seconds),
            "token_type": "Bearer",
            "expires_in": self.token_ttl_seconds,
        }
        if form.get("scope"):
            answer["scope"] = form["scope"][0]
        return Response(200, answer, {"Cache-Control": "no-store"})
