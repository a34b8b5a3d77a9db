"""The iTel request body from enriched events and the payload mapping (pure)."""

from __future__ import annotations

import json

import polars as pl

from itel_dagster.devstack.claimx_world import claimx_task
from itel_dagster.settings.connections import DEFAULT_PAYLOAD
from itel_dagster.stages.itel_payload import with_payloads


def enriched(claimx_body, task):
    return pl.DataFrame({
        "task_id": [32513], "assignment_id": [1_000_001], "project_id": ["123456"],
        "task_status": ["completed"], "claimx_task_full": [claimx_body],
        "task_json": [json.dumps(task) if task is not None else None],
    }, schema_overrides={"claimx_task_full": pl.String, "task_json": pl.String})


def test_seed_payload_from_the_claimx_task():
    rows = with_payloads(enriched(json.dumps(claimx_task(1_000_001)), {"cabinet_id": "EV-1"}),
                         DEFAULT_PAYLOAD)
    body = rows["request_payload"][0]
    assert json.loads(body) == {
        "task_id": 32513, "assignment_id": 1_000_001, "project_id": "123456",
        "task_status": "completed",
        "repair_details": {"cabinet_id": claimx_task(1_000_001)["custom_fields"]["cabinet_id"],
                           "technician_notes": claimx_task(1_000_001)["notes"]},
        "source_system": "claimx",
    }
    assert list(json.loads(body)) == list(DEFAULT_PAYLOAD)  # the contract's key order


def test_skipped_enrichment_falls_back_to_the_event_task_then_null():
    rows = with_payloads(enriched(None, {"cabinet_id": "EV-9", "technician_notes": None}),
                         DEFAULT_PAYLOAD)
    details = json.loads(rows["request_payload"][0])["repair_details"]
    assert details == {"cabinet_id": "EV-9", "technician_notes": None}
    rows = with_payloads(enriched(None, None), DEFAULT_PAYLOAD)
    assert json.loads(rows["request_payload"][0])["repair_details"] == {
        "cabinet_id": None, "technician_notes": None}


def test_skipped_enrichment_reads_an_event_task_in_claimx_shape_first():
    task = claimx_task(1_000_001)  # custom_fields.cabinet_id and notes, no flat names
    rows = with_payloads(enriched(None, task), DEFAULT_PAYLOAD)
    assert json.loads(rows["request_payload"][0])["repair_details"] == {
        "cabinet_id": task["custom_fields"]["cabinet_id"], "technician_notes": task["notes"]}
    both = {**task, "cabinet_id": "FLAT-1", "technician_notes": "flat notes"}
    rows = with_payloads(enriched(None, both), DEFAULT_PAYLOAD)
    assert json.loads(rows["request_payload"][0])["repair_details"] == {
        "cabinet_id": task["custom_fields"]["cabinet_id"], "technician_notes": task["notes"]}


def test_a_changed_contract_is_configuration():
    template = {"ref": "event.assignment_id", "cabinet": {"id": "claimx.custom_fields.cabinet_id"},
                "origin": "=claimx-pipeline", "status": ["claimx.status", "event.task_status"]}
    rows = with_payloads(enriched(json.dumps(claimx_task(1_000_001)), {}), template)
    assert json.loads(rows["request_payload"][0]) == {
        "ref": 1_000_001,
        "cabinet": {"id": claimx_task(1_000_001)["custom_fields"]["cabinet_id"]},
        "origin": "claimx-pipeline",
        "status": claimx_task(1_000_001)["status"],
    }
