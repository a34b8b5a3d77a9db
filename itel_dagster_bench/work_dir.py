"""The work directory of a bench script: the one given (kept afterwards), else a temporary one
removed when the bench ends."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WORK_DIR_HELP = "kept after the run [default: a temporary one, removed]"


@contextmanager
def bench_work_dir(given: Path | None, prefix: str) -> Iterator[Path]:
    work = given or Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if given is None:
            shutil.rmtree(work, ignore_errors=True)
