"""The Authorization header of iTel requests: a static bearer token, or an OAuth2
client-credentials token fetched once and reused until shortly before it expires.

Tokens and client secrets stay in SecretStr or private attributes: never logged, never in a repr.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import httpx
from pydantic import SecretStr

from itel_dagster.resources.http_retry import RETRY_EXCEPTIONS, is_retryable_status


class TokenRequestError(Exception):
    """The token endpoint gave no token. `retryable`: it may give one later (connection error,
    timeout, 5xx, 429); otherwise the client credentials were refused."""

    def __init__(self, detail: str, retryable: bool, status_code: int | None = None):
        super().__init__(detail)
        self.retryable = retryable
        self.status_code = status_code


def _secret(value: SecretStr | str | None) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""


class BearerAuth:
    """A static token: nothing to refresh; a 401 with it is final."""

    def __init__(self, token: SecretStr | str | None):
        self._header = f"Bearer {_secret(token)}"

    def __repr__(self) -> str:
        return "BearerAuth(token='**********')"

    def headers(self, client: httpx.Client) -> dict[str, str]:
        return {"Authorization": self._header}

    def refresh(self, client: httpx.Client) -> None:
        return None

    def invalidate(self, rejected: dict[str, str] | None = None) -> None:
        return None


class OAuth2ClientCredentialsAuth:
    """grant_type=client_credentials with the client id and secret as HTTP Basic; the token is
    cached until `expires_in` minus `margin_seconds`."""

    def __init__(self, token_url: str, client_id: str, client_secret: SecretStr | str,
                 scope: str | None = None, margin_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = SecretStr(_secret(client_secret))
        self.scope = scope
        self.margin_seconds = margin_seconds
        self.clock = clock
        self._token: SecretStr | None = None
        self._valid_until = 0.0
        self.tokens_fetched = 0
        self._lock = threading.Lock()  # the sender's threads share one token

    def __repr__(self) -> str:
        return (f"OAuth2ClientCredentialsAuth(token_url={self.token_url!r}, "
                f"client_id={self.client_id!r}, client_secret='**********')")

    def _current_header(self) -> dict[str, str] | None:
        if self._token is None or self.clock() >= self._valid_until:
            return None
        return {"Authorization": f"Bearer {self._token.get_secret_value()}"}

    def headers(self, client: httpx.Client) -> dict[str, str]:
        header = self._current_header()
        if header is None:
            with self._lock:
                # Concurrent callers wait here for the one fetch instead of fetching again.
                if self._current_header() is None:
                    self._fetch(client)
                header = self._current_header()
        assert header is not None
        return header

    def refresh(self, client: httpx.Client) -> None:
        """Fetch a new token now."""
        with self._lock:
            self._fetch(client)

    def invalidate(self, rejected: dict[str, str] | None = None) -> None:
        """Forget the token, so the next request fetches one. With `rejected` (the headers a 401
        came back for), only if that is still the current token: concurrent 401s refresh once."""
        if rejected is not None and rejected != self._current_header():
            return
        self._token, self._valid_until = None, 0.0

    def _fetch(self, client: httpx.Client) -> None:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        started = self.clock()
        try:
            response = client.post(
                self.token_url, data=form,
                auth=httpx.BasicAuth(self.client_id, self._client_secret.get_secret_value()))
        except RETRY_EXCEPTIONS as exc:
            raise TokenRequestError(f"token request: {type(exc).__name__}",
                                    retryable=True) from None
        if response.status_code != 200:
            try:
                reason = response.json().get("error", "")
            except ValueError:
                reason = ""
            raise TokenRequestError(
                f"token request: HTTP {response.status_code} {reason}".rstrip(),
                retryable=is_retryable_status(response.status_code),
                status_code=response.status_code)
        try:
            answer = response.json()
            token = answer["access_token"]
            expires_in = float(answer.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TokenRequestError("token request: answer without access_token",
                                    retryable=False, status_code=200) from None
        self._token = SecretStr(token)
        # A short-lived token keeps at least half its life.
        self._valid_until = started + expires_in - min(self.margin_seconds, expires_in / 2)
        self.tokens_fetched += 1
