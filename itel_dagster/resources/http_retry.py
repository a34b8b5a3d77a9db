"""Retry rules shared by the ClaimX and iTel clients, declared once as data.

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff and full jitter,
honouring Retry-After; other answers are final.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_EXCEPTIONS = (httpx.TransportError,)  # connect errors, timeouts, resets


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
        if retry_after:
            try:
                asked = float(retry_after)
            except ValueError:
                return jittered  # an HTTP-date Retry-After: fall back to our own backoff
            wanted = max(jittered, asked)
            if cap_retry_after:
                return min(self.backoff_max, wanted)
            return wanted if math.isfinite(wanted) else jittered
        return jittered


def is_retryable_status(status_code: int) -> bool:
    return status_code in RETRY_STATUSES
