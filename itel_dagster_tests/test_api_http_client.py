"""ApiHttpClient against the real ClaimX simulator: what httpx.Client.request did for us (base URL,
default and per-request headers, timeouts, httpx's transport errors) still holds."""

from __future__ import annotations

import json
import ssl
from concurrent.futures import ThreadPoolExecutor

import certifi
import httpx
import pytest

from itel_dagster.devstack.claimx_world import claimx_task
from itel_dagster.resources.api_http_client import ApiHttpClient

# Generous: a loaded 2-core machine can stall a thread for half a second (a 0.5 s read timeout
# once failed the many-threads test). The timeout test sets its own, below the fault's latency.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
SHORT_READ = httpx.Timeout(2.0, connect=5.0)


def test_base_url_and_default_headers_reach_the_server_from_many_threads(claimx):
    headers = {"Authorization": "Bearer claimx-dev-token"}
    with ApiHttpClient(claimx.url, headers, TIMEOUT, max_connections=4) as client:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda a: client.request("GET", f"/api/v1/tasks/{a}"),
                                      range(1_000_100, 1_000_140)))
        assert [r.status_code for r in responses] == [200] * 40
        assert json.loads(responses[0].text) == claimx_task(1_000_100)
        assert responses[0].request.url == httpx.URL(f"{claimx.url}/api/v1/tasks/1000100")


def test_per_request_headers_override_the_defaults(claimx):
    with ApiHttpClient(claimx.url, {"Authorization": "Bearer wrong"}, TIMEOUT, 2) as client:
        assert client.request("GET", "/api/v1/tasks/1000200").status_code == 401
        fixed = client.request("GET", "/api/v1/tasks/1000200",
                               headers={"Authorization": "Bearer claimx-dev-token"})
        assert fixed.status_code == 200


def test_a_slow_answer_times_out_and_the_pool_serves_the_next_request(claimx):
    headers = {"Authorization": "Bearer claimx-dev-token"}
    with ApiHttpClient(claimx.url, headers, SHORT_READ, 1) as client:
        claimx.set_faults(latency_ms=4000)
        with pytest.raises(httpx.ReadTimeout):
            client.request("GET", "/api/v1/tasks/1000300")
        claimx.clear_faults()
        assert client.request("GET", "/api/v1/tasks/1000300").status_code == 200


def test_a_refused_connection_is_httpx_connect_error(claimx):
    claimx.set_faults(refuse_for_seconds=5)
    with ApiHttpClient(claimx.url, {}, TIMEOUT, 1) as client:
        with pytest.raises(httpx.ConnectError):
            client.request("GET", "/api/v1/tasks/1000400")


def test_clients_share_one_verifying_ssl_context_per_ca_setting(claimx, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with ApiHttpClient(claimx.url, {}, TIMEOUT, 1) as one, \
            ApiHttpClient(claimx.url, {}, TIMEOUT, 1) as other:
        assert one.ssl_context is other.ssl_context
        assert one.ssl_context.verify_mode == ssl.CERT_REQUIRED
        assert one.ssl_context.check_hostname
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())  # httpx reads it per client: so do we
    with ApiHttpClient(claimx.url, {}, TIMEOUT, 1) as chosen_ca:
        assert chosen_ca.ssl_context is not one.ssl_context
        assert chosen_ca.ssl_context.verify_mode == ssl.CERT_REQUIRED
