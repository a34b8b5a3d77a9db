"""The Dagster UI in headless Chromium (Playwright) against `dagster dev` on the local stack: what
an operator sees and clicks. One stack for the module; the tests run in file order, each building
on the state the previous one left (events of two days, a backfill, a failed run).

Screenshots land in the test's tmp folder, and in docs/screenshots with ITEL_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import polars as pl
import pytest
from playwright.sync_api import expect

from itel_dagster.devstack.publisher.events import generate_records
from itel_dagster_tests.fixtures.dagster_ui_fixtures import (
    API_WORKER,
    TRACKING_WORKER,
    records_over_two_past_days,
    two_days_before_today,
    utc_day,
)

TRACKING_ASSET = "itel_cabinet_task_tracking"
API_ASSET = "itel_api_sends"
TRACKING_JOB = "itel_cabinet_tracking_job"
SENSORS = ("itel_cabinet_tracking_sensor", "itel_cabinet_api_sensor")
IN_FLIGHT = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED"]
# A loaded 2-core CI machine takes seconds to render a page; Playwright's default is 5 s.
expect.set_options(timeout=30_000)
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


@pytest.fixture(scope="module")
def two_days(dagster_ui_stack):
    """Events over the two whole UTC days before today, processed live by both workers."""
    stack = dagster_ui_stack
    days = two_days_before_today()
    stack.publish(records_over_two_past_days(80, seed=20261, bad_fraction=0.05))

    def both_workers_done() -> bool:
        return (stack.lag(TRACKING_WORKER) == 0 and stack.lag(API_WORKER) == 0
                and not stack.runs(statuses=IN_FLIGHT)
                and all(set(days) <= set(stack.materialized_partitions(asset))
                        for asset in (TRACKING_ASSET, API_ASSET)))

    stack.wait_for(both_workers_done, 240, "both sensors' runs to process both days")
    return days


def valid_event_ids_by_day(records) -> dict[str, set[str]]:
    by_day: dict[str, set[str]] = {}
    for record in records:
        if record.bad_kind is None:
            by_day.setdefault(utc_day(record), set()).add(record.event_id)
    return by_day


def test_both_sensors_are_running(ui_page, dagster_ui_stack):
    page = ui_page
    page.goto("/automation")
    for sensor in SENSORS:
        name = page.get_by_text(sensor, exact=True)
        expect(name).to_be_visible()
        # The innermost element holding the name and the checkboxes is the sensor's row: its
        # selection box, then its on/off switch.
        row = page.locator("div").filter(has=name).filter(has=page.get_by_role("checkbox")).last
        expect(row.get_by_role("checkbox").last).to_be_checked()
    dagster_ui_stack.screenshot(page, "01-automation-sensors")
    for sensor in SENSORS:
        page.goto(f"/locations/itel_dagster/sensors/{sensor}")
        expect(page.get_by_text("Latest tick")).to_be_visible()
        expect(page.get_by_text("Running", exact=True)).to_be_visible()
        if sensor == "itel_cabinet_tracking_sensor":
            dagster_ui_stack.screenshot(page, "02-tracking-sensor-running")


def test_assets_show_daily_partitions_and_materializations(ui_page, dagster_ui_stack, two_days):
    page, stack = ui_page, dagster_ui_stack
    topic = stack.workers[TRACKING_WORKER]["input_topic"]
    for asset, shot in ((TRACKING_ASSET, "03-tracking-partitions"), (API_ASSET, "04-api-sends-partitions")):
        page.goto(f"/assets/{asset}?view=partitions")
        expect(page.get_by_text("Materialized (2)")).to_be_visible()
        for day in two_days:
            page.get_by_text(day, exact=True).first.click()
            # The day's latest materialization, with the run's metadata.
            expect(page.get_by_text("kafka_range", exact=True)).to_be_visible()
            expect(page.get_by_text(re.compile(re.escape(f"{topic}[0]"))).first).to_be_visible()
            expect(page.get_by_text("records", exact=True)).to_be_visible()
        stack.screenshot(page, shot)

    page.goto(f"/assets/{API_ASSET}")
    for label in ("accepted", "breaker_state", "latency_p95_ms"):
        expect(page.get_by_text(label, exact=True)).to_be_visible()


def test_backfill_of_two_days_launched_by_clicking_completes(ui_page, dagster_ui_stack, two_days):
    page, stack = ui_page, dagster_ui_stack
    first, second = two_days
    page.goto(f"/assets/{TRACKING_ASSET}?view=partitions")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    partitions = dialog.get_by_role("textbox").first
    partitions.fill(f"[{first}...{second}]")
    partitions.press("Enter")
    expect(dialog.get_by_text("2 partitions", exact=True)).to_be_visible()
    stack.screenshot(page, "05-backfill-dialog")
    dialog.get_by_role("button", name="Launch backfill").click()

    toast = page.get_by_text(re.compile(r"Created backfill"))
    expect(toast).to_be_visible()
    backfill_id = re.search(r"Created backfill\s+(\S+)", toast.inner_text()).group(1)
    backfill = stack.wait_for(
        lambda: (b := stack.backfill(backfill_id))["status"] in TERMINAL_BACKFILL and b,
        180, f"backfill {backfill_id} to finish", interval=2)
    assert backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, json.dumps(backfill)
    assert backfill["numPartitions"] == 2
    assert backfill["runs"] and {r["status"] for r in backfill["runs"]} == {"SUCCESS"}

    page.goto(f"/runs/b/{backfill_id}")
    for day in two_days:
        expect(page.get_by_text(day).first).to_be_visible()
    expect(page.get_by_text("Succeeded", exact=True).first).to_be_visible()
    expect(page.get_by_text("100% completed")).to_be_visible()
    stack.screenshot(page, "06-backfill-completed")

    # What the backfill promises: each day holds exactly one row per valid event of that day.
    expected = valid_event_ids_by_day(stack.published)
    table = pl.read_delta(str(stack.delta_root / TRACKING_ASSET))
    for day in two_days:
        year, month, dom = (int(part) for part in day.split("-"))
        rows = table.filter((pl.col("year") == year) & (pl.col("month") == month)
                            & (pl.col("day") == dom))
        assert Counter(rows["event_id"]).most_common(1)[0][1] == 1
        assert set(rows["event_id"]) == expected[day]


def test_failed_run_shows_its_alert(ui_page, dagster_ui_stack, two_days):
    page, stack = ui_page, dagster_ui_stack
    table_dir = stack.delta_root / TRACKING_ASSET
    aside = table_dir.with_name(f"{TRACKING_ASSET}.aside")
    known_failures = {r["runId"] for r in stack.runs(job=TRACKING_JOB, statuses=["FAILURE"])}
    # Delta storage breaks: a file where the table's folder should be. The tracking run
    # dead-letters the batch, commits, and fails.
    table_dir.rename(aside)
    table_dir.write_text("the Delta table is unusable on purpose (test_ui_browser)")
    try:
        stack.publish(list(generate_records(3, seed=20262, days=0.01)))
        failed = stack.wait_for(
            lambda: [r for r in stack.runs(job=TRACKING_JOB, statuses=["FAILURE"])
                     if r["runId"] not in known_failures],
            150, "a failed tracking run")[0]
    finally:
        table_dir.unlink()
        aside.rename(table_dir)
    run_id = failed["runId"]
    alert = stack.wait_for(lambda: stack.run(run_id)["tags"].get("itel/alert"), 90,
                           f"the itel/alert tag on run {run_id}")
    assert alert.startswith("sent to webhook"), alert
    messages = stack.wait_for(
        lambda: [m for m in stack.webhook.messages() if run_id in json.dumps(m)],
        30, "the alert at the loopback webhook")
    assert f"{stack.url}/runs/{run_id}" in json.dumps(messages[0])

    page.goto(f"/runs/{run_id}")
    expect(page.get_by_text("Failure", exact=True).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"delta_write unavailable")).first).to_be_visible()
    page.get_by_role("button", name="View tags and config").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(re.compile(r"itel/alert: sent to webhook"))).to_be_visible()
    stack.screenshot(page, "07-failed-run-alert")
