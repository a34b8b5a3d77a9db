"""The pooled HTTP client of the ClaimX lookups and the iTel sends: httpx's Client builds each
request (base URL, default headers, timeouts) and its transport sends it, bypassing Client.send.

Client.send wraps every request in an auth flow, redirect handling, cookie jars and event hooks,
none of which these APIs use (auth is a header we set; a redirect is an answer, never followed).
That machinery cost about 0.25 ms of CPU per request here, 1.5 ms against 1.25 ms
(`python -m itel_dagster_bench.http_client_cpu`), and both workers' runs share the cores.

Every client verifies TLS with one SSL context per process: building one loads the CA bundle,
about 40 ms of CPU, and a run builds a ClaimX and an iTel client.
"""

from __future__ import annotations

import functools
import os
import ssl
import threading

import httpx


def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR as httpx
    reads them), built once per process and those variables; an SSLContext may be shared by
    connections and threads."""
    return _ssl_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _ssl_context(_cert_file: str | None, _cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()


class ApiHttpClient:
    """Use as a context manager; safe to share between threads, as httpx.Client is."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: httpx.Timeout,
                 max_connections: int):
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        self.ssl_context = shared_ssl_context()
        self._transport = httpx.HTTPTransport(verify=self.ssl_context, limits=limits)
        self.client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout,
                                   transport=self._transport)
        # At most max_connections requests reach the pool at once, so none ever waits in it:
        # httpcore's pool can close an idle connection it has just assigned to a waiting request
        # (encode/httpcore#1110), and the request then fails reading a closed socket
        # ("[Errno 9] Bad file descriptor") or hangs until its read timeout.
        self._slots = threading.BoundedSemaphore(max_connections)

    def request(self, method: str, path: str, *, content: bytes | None = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
        """The whole response, read; httpx.TransportError (connect, timeout, reset) as raised by
        httpx.Client.request."""
        request = self.client.build_request(method, path, content=content, headers=headers)
        with self._slots:
            response = self._transport.handle_request(request)
            response.request = request
            try:
                response.read()
            finally:
                response.close()
        return response

    def __enter__(self) -> ApiHttpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
