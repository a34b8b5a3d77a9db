"""The one place the project touches Dagster's private (`dagster._...`) modules, outside the
launchers/ and storage/ packages (which subclass Dagster's launcher and event-log storage).

Every name here says what it relies on, so a Dagster upgrade is a review of this file and those
two packages. It is written for the Dagster series in DAGSTER_SERIES, the pin of pyproject.toml;
`dagster_version_problem()` says when the installed Dagster is another (test_dagster_seam.py).
Never add business logic here: only names taken from Dagster.
"""

from __future__ import annotations

import dagster as dg

# Relies on: the run-retry daemon tags a failed run that will be retried `dagster/will_retry` =
# "true", and the retry run's parent `dagster/auto_retry_run_id` once it exists.
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG

# Relies on: a compute log manager that captures nothing, loaded by dagster.yaml's `compute_logs`
# block (module: itel_dagster.dagster_seam), so no tail/watcher process is started per run.
from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager

__all__ = [
    "AUTO_RETRY_RUN_ID_TAG",
    "DAGSTER_SERIES",
    "NoOpComputeLogManager",
    "RUN_WORKER_DAGSTER_MODULES",
    "WILL_RETRY_TAG",
    "code_server_answers",
    "dagster_version_problem",
]

DAGSTER_SERIES = "1.13"  # the minor series this seam (and launchers/, storage/) was written for

# Relies on: the modules Dagster's run worker (`dagster api execute_run`) imports before its first
# op. The warm fork server preloads them; a module renamed away fails the fork server's start.
RUN_WORKER_DAGSTER_MODULES = [
    "dagster._cli.api",
    "dagster._core.instance.factory",
    "dagster._core.storage.root",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.schedules.sqlite",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.storage.migration.utils",
    "dagster._core.run_coordinator",
    "dagster._core.scheduler",
]


def dagster_version_problem(installed: str = dg.__version__) -> str | None:
    """None when `installed` is of DAGSTER_SERIES, else what to do about it."""
    if installed.split(".")[:2] == DAGSTER_SERIES.split("."):
        return None
    return (f"Dagster {installed} is installed, but itel_dagster/dagster_seam.py, launchers/ and "
            f"storage/ were written for Dagster {DAGSTER_SERIES}.x. Check each private name they "
            f"use against the new release, then change DAGSTER_SERIES and the dagster pin in "
            f"pyproject.toml together.")


def code_server_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a code location's gRPC server answers a ping.

    Relies on: DagsterGrpcClient.ping and its DagsterUserCodeUnreachableError while the server
    is not up yet. Imported here, not at module level: grpc costs a run process nothing otherwise.
    """
    from dagster._core.errors import DagsterUserCodeUnreachableError
    from dagster._grpc.client import DagsterGrpcClient

    try:
        DagsterGrpcClient(port=port, host=host).ping("")
    except DagsterUserCodeUnreachableError:
        return False
    return True
