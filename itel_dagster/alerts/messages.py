"""The alerts as data, and their two wire formats (Slack incoming-webhook JSON, generic JSON).

Pure functions: no I/O, no clock, no Dagster. Every text is cut to the length Slack accepts, so a
long stack trace can never make the webhook refuse the alert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import re
from typing import Any
from urllib.parse import quote

ERROR_LIMIT = 500
# Slack limits: header text 150, a section field 2000, a section text 3000, 10 fields a section.
_HEADER_LIMIT, _FIELD_LIMIT, _FIELDS_PER_SECTION = 150, 2000, 10

RUN_FAILURE, BREAKER_OPEN, BREAKER_CLOSED = "run_failure", "circuit_breaker_open", "circuit_breaker_closed"
LAG_HIGH, LAG_RECOVERED = "lag_high", "lag_recovered"
RETENTION_LOSS = "records_lost_to_retention"
_ICON = {"error": ":red_circle:", "warning": ":warning:", "ok": ":large_green_circle:"}


@dataclass(frozen=True)
class Alert:
    # run_failure | circuit_breaker_open | circuit_breaker_closed | lag_high | lag_recovered |
    # records_lost_to_retention
    kind: str
    severity: str  # error | warning | ok
    title: str
    facts: dict[str, Any] = field(default_factory=dict)  # shown in order; None values are left out
    error: str | None = None
    link: str | None = None
    link_text: str = "Open in Dagster"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# "package.module.Failure: ..." (an exception's module path, as Dagster prints it) reads as
# "Failure: ...".
_MODULE_PATH = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*: )")


def _first_line(message: str | None) -> str:
    lines = (message or "").strip().splitlines()
    return _MODULE_PATH.sub("", lines[0]) if lines else "failed"


def user_error(error):
    """The error user code raised, out of Dagster's wrappers (a SerializableErrorInfo): an op's
    error arrives wrapped ("Error occurred while executing op ..."), and once its RetryPolicy is
    spent as "Exceeded max_retries of N" with the last error as its cause."""
    while error is not None and error.cause is not None and (
            error.cls_name in ("DagsterExecutionStepExecutionError", "RetryRequested")
            or error.message.startswith("Exceeded max_retries")):
        error = error.cause
    return error


def short_error(run_message: str | None, step_errors: Sequence[tuple[str, str]] = (),
                limit: int = ERROR_LIMIT) -> str:
    """The failed steps' errors (step key: first line of each), else the run's failure message."""
    lines = [f"{step}: {_first_line(message)}" for step, message in step_errors]
    text = "\n".join(lines) or (run_message or "").strip() or "the run failed (no error recorded)"
    return _cut(text, limit)


def kafka_ranges_from_tags(tags: Mapping[str, str]) -> list[str]:
    """Every itel/kafka_range* tag (one per partition range the run covered), in key order."""
    return [value for key, value in sorted(tags.items())
            if key.startswith("itel/kafka_range") and value]


def run_failure_alert(*, run_id: str, job_name: str, tags: Mapping[str, str], error: str,
                      run_url: str, worker: str | None = None) -> Alert:
    """tags: the run's tags (itel/worker, itel/kafka_range, dagster/partition, ...); a run
    without them (a backfill, a manual launch) still gets an alert with what is known."""
    partition = tags.get("dagster/partition")
    start = tags.get("dagster/asset_partition_range_start")
    if partition is None and start is not None:
        partition = f"{start}…{tags.get('dagster/asset_partition_range_end', start)}"
    worker = tags.get("itel/worker") or worker
    return Alert(
        kind=RUN_FAILURE,
        severity="error",
        title=f"Run failed: {job_name}" + (f" ({partition})" if partition else ""),
        facts={
            "worker": worker,
            "job": job_name,
            "run_id": run_id,
            "partition": partition,
            "kafka_ranges": kafka_ranges_from_tags(tags),
            "attempt": tags.get("itel/attempt"),
            # A probe or dead-letter run of the sensor's poison isolation: expected to fail
            # while the bad record is looked for (docs/bad-input.md).
            "isolation": tags.get("itel/isolation"),
            "backfill": tags.get("dagster/backfill"),
            # Set by Dagster when run retries are on and this run has retries left.
            "will_retry": tags.get("dagster/will_retry") == "true",
            "run_url": run_url,
        },
        error=_cut(error, ERROR_LIMIT),
        link=run_url,
        link_text="Open the run in Dagster",
    )


def worker_runs_url(ui_base_url: str, worker: str) -> str:
    """The UI's run list filtered to one worker's runs."""
    return f"{ui_base_url}/runs?q%5B%5D={quote(f'tag:itel/worker={worker}', safe='')}"


def breaker_open_alert(*, consecutive_failures: int, opened_at: str | None,
                       reopens_at: str | None, openings_total: int, worker: str,
                       ui_base_url: str, cause: str | None = None) -> Alert:
    """reopens_at: when a probe may go (the cool-down's or a hold's end), as the text to show."""
    until = f" until {reopens_at}" if reopens_at else ""
    return Alert(
        kind=BREAKER_OPEN,
        severity="error",
        title=f"iTel circuit breaker opened: no sends{until}, API runs paused",
        facts={
            "worker": worker,
            "cause": cause,
            "consecutive_failures": consecutive_failures,
            "opened_at": opened_at,
            "probe_at": reopens_at,
            "openings_total": openings_total,
            "effect": "events wait in Kafka (the API worker's lag grows) until a probe succeeds",
        },
        link=worker_runs_url(ui_base_url, worker),
        link_text="The API worker's runs",
    )


def breaker_closed_alert(*, worker: str, ui_base_url: str) -> Alert:
    return Alert(
        kind=BREAKER_CLOSED,
        severity="ok",
        title="iTel circuit breaker closed: sends resumed",
        facts={"worker": worker},
        link=worker_runs_url(ui_base_url, worker),
        link_text="The API worker's runs",
    )


def lag_alert(*, worker: str, consumer_group: str, topic: str, lag: int,
              lag_by_partition: Mapping[int, int], threshold: int, above_since: str,
              for_seconds: float, ui_base_url: str) -> Alert:
    return Alert(
        kind=LAG_HIGH,
        severity="warning",
        title=f"Lag of {worker} above {threshold} for {for_seconds:.0f} s: {lag}",
        facts={
            "worker": worker,
            "consumer_group": consumer_group,
            "topic": topic,
            "lag": lag,
            "lag_by_partition": {str(p): n for p, n in sorted(lag_by_partition.items())},
            "threshold": threshold,
            "above_since": above_since,
        },
        link=worker_runs_url(ui_base_url, worker),
        link_text="The worker's runs",
    )


def lag_recovered_alert(*, worker: str, consumer_group: str, topic: str, lag: int,
                        threshold: int, ui_base_url: str) -> Alert:
    return Alert(
        kind=LAG_RECOVERED,
        severity="ok",
        title=f"Lag of {worker} back to {lag} (threshold {threshold})",
        facts={"worker": worker, "consumer_group": consumer_group, "topic": topic, "lag": lag,
               "threshold": threshold},
        link=worker_runs_url(ui_base_url, worker),
        link_text="The worker's runs",
    )


def retention_loss_alert(*, worker: str, consumer_group: str, records: int,
                         lost: Sequence[str], run_url: str) -> Alert:
    """lost: one line per partition, e.g. "topic[0] offsets 0 to 19 (20 records)"."""
    return Alert(
        kind=RETENTION_LOSS,
        severity="error",
        title=f"{records} records lost to Kafka retention before {worker} handled them",
        facts={
            "worker": worker,
            "consumer_group": consumer_group,
            "lost_offsets": list(lost),
            "effect": "Kafka deleted them; the group's offsets were committed past them. "
                      "Replay them from their source if it still has them",
            "run_url": run_url,
        },
        link=run_url,
        link_text="Open the run in Dagster",
    )


def _shown(value: Any) -> str:
    if value is True:
        return "yes"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value) or "-"
    return str(value)


def _label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _visible_facts(alert: Alert) -> list[tuple[str, str]]:
    # The run link is a button of its own in Slack; the generic format keeps it as a fact.
    return [(_label(k), _shown(v)) for k, v in alert.facts.items()
            if v is not None and v is not False and k != "run_url"]


def plain_text(alert: Alert) -> str:
    """One readable text: Slack's notification fallback, and what the logs show."""
    lines = [alert.title] + [f"{label}: {value}".replace("\n", "; ")
                             for label, value in _visible_facts(alert)]
    if alert.error:
        lines.append(f"Error: {alert.error}")
    if alert.link:
        lines.append(alert.link)
    return "\n".join(lines)


def slack_payload(alert: Alert) -> dict:
    """Slack incoming-webhook JSON: `text` (notifications, clients without blocks) and blocks."""
    blocks: list[dict] = [{
        "type": "header",
        "text": {"type": "plain_text", "text": _cut(alert.title, _HEADER_LIMIT)},
    }]
    fields = [{"type": "mrkdwn", "text": _cut(f"*{label}*\n{value}", _FIELD_LIMIT)}
              for label, value in _visible_facts(alert)]
    for start in range(0, len(fields), _FIELDS_PER_SECTION):
        blocks.append({"type": "section", "fields": fields[start:start + _FIELDS_PER_SECTION]})
    if alert.error:
        blocks.append({"type": "section",
                       "text": {"type": "mrkdwn", "text": f"*Error*\n```{alert.error}```"}})
    if alert.link:
        blocks.append({"type": "section",
                       "text": {"type": "mrkdwn", "text": f"<{alert.link}|{alert.link_text}>"}})
    text = f"{_ICON.get(alert.severity, '')} {plain_text(alert)}".strip()
    return {"text": _cut(text, 3000), "blocks": blocks}


def generic_payload(alert: Alert) -> dict:
    """One flat JSON object: kind, severity, title, the facts, error and link."""
    payload: dict[str, Any] = {"kind": alert.kind, "severity": alert.severity, "title": alert.title}
    payload.update(alert.facts)
    payload["error"] = alert.error
    payload["link"] = alert.link
    payload["text"] = plain_text(alert)
    return payload


def payload_for(alert: Alert, format: str) -> dict:
    return generic_payload(alert) if format == "generic" else slack_payload(alert)
