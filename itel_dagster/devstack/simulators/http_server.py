"""The loopback HTTP server both simulators stand on: routing, fault injection, request counts and
the /_admin endpoints (faults, stats, health). Admin endpoints are never faulted nor
authenticated; only a refusal, which closes the whole listening socket, reaches them.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import socketserver
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from itel_dagster.devstack.simulators.faults import FaultInjector, FaultPlanError, InjectedFault

logger = logging.getLogger(__name__)

ADMIN_PREFIX = "/_admin/"
# How long a reopening waits for its port while the kernel still holds it.
_REBIND_SECONDS = 5.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    # The client's socket, so a refusal asked for on this connection can still answer on it.
    connection: socket.socket | None = field(default=None, repr=False, compare=False)

    def json(self) -> Any:
        """The body parsed as JSON; ValueError when it is not JSON."""
        return json.loads(self.body.decode("utf-8"))

    def bearer_token(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None


@dataclass(frozen=True)
class Response:
    status: int
    body: Any = None  # serialised as JSON; None sends an empty body
    headers: dict[str, str] = field(default_factory=dict)
    close_connection: bool = False


def error_response(status: int, error: str, detail: Any = None, **headers: str) -> Response:
    body = {"error": error} if detail is None else {"error": error, "detail": detail}
    return Response(status, body, dict(headers))


def unauthorized(detail: str, challenge: str = "Bearer") -> Response:
    return error_response(401, "unauthorized", detail, **{"WWW-Authenticate": challenge})


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison, so a simulator never teaches a timing attack that works."""
    return hmac.compare_digest(given.encode(), expected.encode())


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # e.g. /api/v1/tasks/{assignment_id}; also the route's name in the stats
    pattern: re.Pattern
    handler: Handler
    admin: bool


@dataclass(frozen=True)
class _RouteMatch:
    route: Route | None  # None: no route has this method and path
    params: dict[str, str]
    allowed: list[str]  # without a route: the methods this path has (answer 405), or none (404)
    template: str  # the path's route template, or "(no route)"; the request's name in the stats


def _path_pattern(template: str) -> re.Pattern:
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return re.compile(f"^{regex}$")


class RequestStats:
    """Counts of answered API requests by route and outcome (a status, "reset" or "timeout"),
    of the requests that arrived since the last clear: one still in its injected latency at a
    clear (its client may have timed out long before) is not counted after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter] = {}
        self._generation = 0

    def arrived(self) -> int:
        """A request's ticket, taken when it arrives; pass it to record()."""
        return self._generation

    def record(self, route: str, outcome: int | str, ticket: int) -> None:
        with self._lock:
            if ticket == self._generation:
                self._counts.setdefault(route, Counter())[str(outcome)] += 1

    def snapshot(self) -> dict:
        with self._lock:
            routes = {
                route: {"total": sum(counts.values()), "by_status": dict(sorted(counts.items()))}
                for route, counts in sorted(self._counts.items())
            }
        return {"total": sum(r["total"] for r in routes.values()), "routes": routes}

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._generation += 1


class SimulatorServer:
    """A loopback HTTP server on a background thread; subclasses add their API routes.

    port=0 takes a free port, kept across refusals so a client sees the same address come back.
    """

    name = "simulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, seed: int = 0) -> None:
        self.host = host
        self._port = port
        self.fault_injector = FaultInjector(seed)
        self._stats = RequestStats()
        self._routes: list[Route] = []
        self._lifecycle = threading.RLock()
        self._listener: _Listener | None = None
        self._reopen_timer: threading.Timer | None = None
        self._refusals = 0  # numbers each refusal, so a late reopen cannot end a newer one
        self._started = False
        # Set by stop(); wakes requests sleeping through latency or a timeout fault.
        self._stopping = threading.Event()
        self._connections_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._add_admin_routes()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    def start(self) -> SimulatorServer:
        with self._lifecycle:
            if not self._started:
                self._stopping.clear()
                self._open_listener()
                self._started = True
        return self

    def stop(self) -> None:
        with self._lifecycle:
            self._started = False
            self._stopping.set()
            self._cancel_reopen()
            self._close_listener()
            self._drop_connections(keep=None)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _open_listener(self) -> None:
        listener = _Listener(self, (self.host, self._port))
        self._port = listener.server_address[1]
        thread = threading.Thread(
            target=listener.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"{self.name}-simulator-{self._port}", daemon=True,
        )
        thread.start()
        self._listener = listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.shutdown()
            self._listener.server_close()
            self._listener = None

    def _cancel_reopen(self) -> None:
        if self._reopen_timer is not None:
            self._reopen_timer.cancel()
            self._reopen_timer = None

    def _refuse_for(self, seconds: float, keep: socket.socket | None) -> None:
        """Close the listening socket (new connections get ECONNREFUSED) and every open
        connection but `keep`, then listen again on the same port after `seconds`."""
        with self._lifecycle:
            if not self._started:
                return
            self._cancel_reopen()
            self._close_listener()
            self._drop_connections(keep)
            self._refusals += 1
            self._reopen_timer = threading.Timer(seconds, self._reopen, args=(self._refusals,))
            self._reopen_timer.daemon = True
            self._reopen_timer.start()

    def _refused(self) -> bool:
        return self._started and self._listener is None

    def _reopen(self, refusal: int) -> None:
        for _ in range(int(_REBIND_SECONDS / 0.05)):
            with self._lifecycle:
                if refusal != self._refusals or not self._refused():
                    return  # stopped, reopened by clear_faults(), or a newer refusal runs
                try:
                    self._open_listener()
                    self._reopen_timer = None
                    return
                except OSError:
                    pass  # the kernel still holds the port; the lock is released while waiting
            if self._stopping.wait(0.05):
                return
        logger.error("%s simulator could not listen on port %s again", self.name, self._port)

    def _track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def _drop_connections(self, keep: socket.socket | None) -> None:
        with self._connections_lock:
            doomed = [c for c in self._connections if c is not keep]
        for connection in doomed:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client

    # -- faults and stats, as Python methods (the admin endpoints call these) -----------------

    def faults(self) -> dict:
        return self.fault_injector.plan().model_dump()

    def set_faults(self, **changes: Any) -> dict:
        """Merge `changes` into the fault plan; raises FaultPlanError for unknown keys or bad
        values. refuse_for_seconds > 0 closes the listening socket for that long."""
        return self._apply_faults(changes, keep=None)

    def _apply_faults(self, changes: dict, keep: socket.socket | None) -> dict:
        plan = self.fault_injector.update(**changes)
        if plan.refuse_for_seconds > 0:
            self._refuse_for(plan.refuse_for_seconds, keep)
        return plan.model_dump()

    def clear_faults(self) -> dict:
        """No faults any more; a refusal in progress ends now."""
        plan = self.fault_injector.clear()
        with self._lifecycle:
            if self._refused():
                self._cancel_reopen()
                self._open_listener()
        return plan.model_dump()

    def stats(self) -> dict:
        return self._stats.snapshot()

    def clear_stats(self) -> None:
        self._stats.clear()

    def accepted_bearer_token(self, request: Request,
                              accepts: Callable[[str], bool]) -> str | None:
        """The request's bearer token if `accepts` it, else None; always None under the
        wrong_auth fault, where the server behaves as if it expected another token."""
        token = request.bearer_token()
        if token is None or self.fault_injector.wrong_auth() or not accepts(token):
            return None
        return token

    def reset_state(self) -> None:
        """Back to a fresh simulator on the same port: no faults, no counts."""
        self.clear_faults()
        self.clear_stats()

    # -- routing -------------------------------------------------------------------------------

    def add_route(self, method: str, template: str, handler: Handler, admin: bool = False) -> None:
        self._routes.append(Route(method, template, _path_pattern(template), handler, admin))

    def _add_admin_routes(self) -> None:
        self.add_route("GET", "/_admin/health", self._health, admin=True)
        self.add_route("GET", "/_admin/faults", lambda _: Response(200, self.faults()), admin=True)
        self.add_route("POST", "/_admin/faults", self._post_faults, admin=True)
        self.add_route("DELETE", "/_admin/faults",
                       lambda _: Response(200, self.clear_faults()), admin=True)
        self.add_route("GET", "/_admin/stats", lambda _: Response(200, self.stats()), admin=True)
        self.add_route("DELETE", "/_admin/stats", self._delete_stats, admin=True)

    def _health(self, _: Request) -> Response:
        return Response(200, {"status": "ok", "simulator": self.name, "url": self.url})

    def _post_faults(self, request: Request) -> Response:
        try:
            changes = request.json()
        except ValueError:
            return error_response(400, "invalid_json", "the body must be a JSON object")
        if not isinstance(changes, dict):
            return error_response(400, "invalid_fault_plan", "the body must be a JSON object")
        try:
            plan = self._apply_faults(changes, keep=request.connection)
        except FaultPlanError as exc:
            return error_response(400, "invalid_fault_plan", str(exc))
        # After a refusal this connection, spared to carry the answer, must not outlive it.
        return Response(200, plan, close_connection=plan["refuse_for_seconds"] > 0)

    def _delete_stats(self, _: Request) -> Response:
        self.clear_stats()
        return Response(200, self.stats())

    def _match(self, method: str, path: str) -> _RouteMatch:
        path_routes = [(r, found) for r in self._routes if (found := r.pattern.match(path))]
        for route, found in path_routes:
            if route.method == method:
                return _RouteMatch(route, found.groupdict(), [], route.template)
        allowed = sorted({route.method for route, _ in path_routes})
        template = path_routes[0][0].template if path_routes else "(no route)"
        return _RouteMatch(None, {}, allowed, template)

    def handle(self, request: Request) -> Response | InjectedFault:
        match = self._match(request.method, request.path)
        if request.path.startswith(ADMIN_PREFIX):
            return self._answer(match, request)
        ticket = self._stats.arrived()
        decision = self.fault_injector.decide()
        if decision.latency_seconds:
            self._stopping.wait(decision.latency_seconds)
        stats_key = f"{request.method} {match.template}"
        fault = decision.fault
        if fault is not None and fault.kind != "status":
            self._stats.record(stats_key, fault.kind, ticket)
            return fault
        if fault is not None:
            response = error_response(fault.status, "injected_fault", f"status {fault.status}",
                                      **dict(fault.headers))
        else:
            response = self._answer(match, request)
        self._stats.record(stats_key, response.status, ticket)
        return response

    def _answer(self, match: _RouteMatch, request: Request) -> Response:
        route = match.route
        if route is None and match.allowed:
            return error_response(405, "method_not_allowed", f"{request.method} {request.path}",
                                  Allow=", ".join(match.allowed))
        if route is None:
            return error_response(404, "not_found", f"no route {request.method} {request.path}")
        try:
            return route.handler(_with_params(request, match.params))
        except Exception:  # a simulator bug answers 500 instead of killing the connection
            logger.exception("%s simulator failed on %s %s", self.name, request.method,
                             request.path)
            return error_response(500, "simulator_error")

    def hang(self, seconds: float) -> None:
        """Sleep through a timeout fault; stop() cuts it short."""
        self._stopping.wait(seconds)


def _with_params(request: Request, params: dict[str, str]) -> Request:
    return Request(request.method, request.path, request.query, request.headers, request.body,
                   params, request.connection)


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a client opening 16 connections at once has
    # some of its SYNs dropped and retried a second later, which looked like a slow API.
    request_queue_size = 128

    def __init__(self, simulator: SimulatorServer, address: tuple[str, int]) -> None:
        self.simulator = simulator
        self._aborts: set[socket.socket] = set()
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up in DNS; loopback needs no name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        self.simulator._track(request)
        super().process_request(request, client_address)

    def abort(self, connection: socket.socket) -> None:
        """Close `connection` with a TCP reset (no FIN, no answer) when its handler ends."""
        self._aborts.add(connection)

    def shutdown_request(self, request) -> None:
        self.simulator._untrack(request)
        if request in self._aborts:
            self._aborts.discard(request)
            request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_request(request)
            return
        super().shutdown_request(request)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real APIs
    # Headers and body go out as two writes; with Nagle on, each keep-alive request waits ~40 ms
    # for the client's delayed ACK.
    disable_nagle_algorithm = True
    server_version = "itel-dagster-simulator"
    server: _Listener

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._send(error_response(400, "bad_request", "invalid Content-Length"))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length > 0 else b""
        url = urlsplit(self.path)
        request = Request(self.command, url.path, parse_qs(url.query), self.headers, body,
                          connection=self.connection)
        outcome = self.server.simulator.handle(request)
        if isinstance(outcome, Response):
            self._send(outcome)
            return
        self.close_connection = True
        if outcome.kind == "timeout":
            self.server.simulator.hang(outcome.hang_seconds)
        else:
            self.server.abort(self.connection)

    def _send(self, response: Response) -> None:
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(response.status)
        if response.close_connection:
            self.close_connection = True
            self.send_header("Connection", "close")
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its own timeout); nothing to do

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        logger.debug("%s simulator: " + format, self.server.simulator.name, *args)
