"""The job `itel_dead_letter_replay_job`: a worker's error records, sent through that worker's
stages again, launched from the Dagster UI with a worker and a window.

The shared stage ops run as in the live worker; a routing op then picks the worker's final stage.
"""

import dagster as dg

from itel_dagster.ops.api_ops import send_to_itel, skip_already_sent
from itel_dagster.ops.dead_letter_replay_ops import (
    finish_replay,
    read_dead_letters,
    route_to_final_stage,
)
from itel_dagster.ops.shared_stage_ops import claimx_lookup, transform_events, validate_events
from itel_dagster.ops.tracking_ops import write_tracking_rows

DEAD_LETTER_REPLAY_JOB = "itel_dead_letter_replay_job"


@dg.job(
    name=DEAD_LETTER_REPLAY_JOB,
    executor_def=dg.in_process_executor,
    tags={"itel/operation": "dead_letter_replay"},
    description="Replay a worker's error records (a time or offset window of its error topic, "
    "optionally only some error_types) through its stages. Successes are recorded once (Delta "
    "MERGE on event_id, iTel ledger + Idempotency-Key) and marked `replayed` in the Delta table "
    "itel_dead_letter_replays; failures go back to the error topic with attempt + 1.",
)
def itel_dead_letter_replay_job():
    batch, dead_letters = read_dead_letters()
    enriched = claimx_lookup(validate_events(transform_events(batch)))
    tracking, api = route_to_final_stage(enriched)
    finish_replay.alias("finish_tracking_replay")(write_tracking_rows(tracking), dead_letters)
    sent = send_to_itel(skip_already_sent(api))
    finish_replay.alias("finish_api_replay")(sent, dead_letters)
