"""When an operations alert is due: episodes of an open circuit breaker and of high consumer lag,
tracked from one sensor tick to the next in a small JSON cursor.

Pure: the caller reads the breaker and Kafka, passes the clock, and posts what is due. An episode
alerts once when it begins and (optionally) once when it ends, however many ticks it lasts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

OPENED, CLOSED = "opened", "closed"
HIGH, RECOVERED = "high", "recovered"


@dataclass
class LagEpisode:
    above_since: float | None = None  # epoch seconds of the first tick above the threshold
    alerted: bool = False


@dataclass
class AlertCursor:
    # The breaker's opened_count at the last tick; None before the first look.
    breaker_openings: int | None = None
    # An "opened" alert went out and the breaker has not been seen closed since.
    breaker_alerted: bool = False
    lag: dict[str, LagEpisode] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> AlertCursor:
        """A missing or unreadable cursor starts afresh (at worst one repeated alert)."""
        try:
            data = json.loads(text) if text else {}
            return cls(
                breaker_openings=data.get("breaker_openings"),
                breaker_alerted=bool(data.get("breaker_alerted", False)),
                lag={name: LagEpisode(**episode) for name, episode in data.get("lag", {}).items()},
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


def breaker_events(cursor: AlertCursor, is_closed: bool, opened_count: int) -> list[str]:
    """OPENED once per episode (the breaker opened since the last tick, or is open on the first
    look), CLOSED when an alerted episode is over. Re-openings after failed probes are the same
    episode. Updates `cursor`."""
    seen = cursor.breaker_openings
    if seen is not None and opened_count < seen:
        seen = None  # the breaker's state file was recreated
    opened_since = seen is not None and opened_count > seen
    events = []
    if not cursor.breaker_alerted and (opened_since or not is_closed):
        events.append(OPENED)
        cursor.breaker_alerted = True
    if cursor.breaker_alerted and is_closed:
        # Also right after OPENED, when it opened and closed again between two ticks.
        events.append(CLOSED)
        cursor.breaker_alerted = False
    cursor.breaker_openings = opened_count
    return events


def lag_event(cursor: AlertCursor, worker: str, lag: int, threshold: int, for_seconds: float,
              now: float) -> str | None:
    """HIGH when the lag has been above `threshold` at every tick for `for_seconds`, RECOVERED
    when an alerted episode drops back to the threshold or below. Updates `cursor`."""
    episode = cursor.lag.setdefault(worker, LagEpisode())
    if lag > threshold:
        if episode.above_since is None:
            episode.above_since = now
        if not episode.alerted and now - episode.above_since >= for_seconds:
            episode.alerted = True
            return HIGH
        return None
    was_alerted = episode.alerted
    cursor.lag[worker] = LagEpisode()
    return RECOVERED if was_alerted else None
