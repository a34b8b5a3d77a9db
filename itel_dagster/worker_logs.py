"""Each worker's log file (workers.yaml `log_file`, relative to the working directory).

Ops log through `worker_logger(worker)`: the lines reach the worker's file and, through
dagster.yaml's managed python loggers, the run's log in the UI.
"""

from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

from itel_dagster.settings.workers import WorkerSettings

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def worker_logger(worker: WorkerSettings) -> logging.Logger:
    logger = logging.getLogger(f"itel.{worker.name}")
    logger.setLevel(logging.INFO)
    path = Path(worker.log_file).resolve()
    if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=50_000_000, backupCount=5)
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
    return logger
