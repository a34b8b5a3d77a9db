"""The job `itel_dead_letter_replay_job`: a worker's error records, sent through that worker's
stages again, launched from the Dagster UI with a worker and a window.

The shared stage ops run as in the live worker; a routing op then picks the worker's final stage
(one branch per final stage, its replay ops: REPLAY_FINAL_STAGE_OPS).
"""

import dagster as dg

from itel_dagster.assets.worker_asset import (
    REPLAY_FINAL_STAGE_OPS,
    WORKER_RETRIED_OPS,
    op_retry_policy,
)
from itel_dagster.ops.dead_letter_replay_ops import (
    finish_replay,
    read_dead_letters,
    route_to_final_stage,
)
from itel_dagster.ops.shared_stage_ops import claimx_lookup, transform_events, validate_events
from itel_dagster.settings.workers import load_workers

DEAD_LETTER_REPLAY_JOB = "itel_dead_letter_replay_job"


def _retried(op, final_stage: str):
    """An op that retries as its worker's retry_policy says gets the largest policy of the
    workers with this final stage; the op itself stops at its own worker's op_max_retries."""
    workers = [w for w in load_workers().values() if w.final_stage == final_stage]
    if op not in WORKER_RETRIED_OPS or not workers:
        return op
    most = max(workers, key=lambda w: w.retry_policy.op_max_retries)
    return op.with_retry_policy(op_retry_policy(most))


def finish_node(final_stage: str) -> str:
    """The name of the replay's last op on a final stage's branch."""
    return f"finish_{final_stage}_replay"


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
    branches = route_to_final_stage(enriched)
    for final_stage, ops in REPLAY_FINAL_STAGE_OPS.items():
        step = getattr(branches, final_stage)
        for op in ops:
            step = _retried(op, final_stage)(step)
        finish_replay.alias(finish_node(final_stage))(step, dead_letters)
