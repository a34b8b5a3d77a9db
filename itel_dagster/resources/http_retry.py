"""Retry rules shared by the ClaimX and iTel clients, declared once as data.

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff and full jitter,
honouring Retry-After; other answers are final.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_EXCEPTIONS = (httpx.TransportError,)  # connect errors, timeouts, resets


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After asks for: delta-seconds or an HTTP-date (RFC 9110); None when
    absent or unreadable."""
    if not value:
        return None
    try:
        asked = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            return None
        asked = moment.timestamp() - (time.time() if now is None else now)
    return max(0.0, asked) if math.isfinite(asked) else None


@dataclass(frozen=True)
class RetryRule:
    max_retries: int = 3
    backoff_base: float = 2.0  # the first delay in seconds; it doubles each retry
    backoff_max: float = 60.0

    def delay(self, retry_number: int, retry_after: str | None = None, rng=random,
              cap_retry_after: bool = True) -> float:
        """Seconds to wait before retry `retry_number` (1-based). Retry-After (seconds) is a
        minimum, itself capped at backoff_max unless `cap_retry_after` is False (a server that
        asks for more than our longest backoff then gets it)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (retry_number - 1))
        jittered = rng.uniform(0, ceiling) if ceiling > 0 else 0.0
        asked = retry_after_seconds(retry_after)
        if asked is None:
            return jittered
        wanted = max(jittered, asked)
        return min(self.backoff_max, wanted) if cap_retry_after else wanted


def is_retryable_status(status_code: int) -> bool:
    return status_code in RETRY_STATUSES
