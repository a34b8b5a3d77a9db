"""Where configuration, local state and Delta tables live; each overridable by one env var."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def config_dir() -> Path:
    """ITEL_CONFIG_DIR, else the checkout's config/ folder."""
    return Path(os.environ.get("ITEL_CONFIG_DIR") or PROJECT_ROOT / "config")


def state_dir() -> Path:
    """ITEL_STATE_DIR, else ./var: broker data, dagster home, pid files. Git-ignored."""
    return Path(os.environ.get("ITEL_STATE_DIR") or Path.cwd() / "var").resolve()


def delta_root() -> str:
    """ITEL_DELTA_ROOT: a local path or an s3://, abfss://, gs:// URI. Default ./data/delta.

    Cloud credentials are not configured here: delta-rs reads them from the environment
    (AWS_*, AZURE_STORAGE_*, GOOGLE_*).
    """
    root = os.environ.get("ITEL_DELTA_ROOT") or "./data/delta"
    if "://" in root:
        scheme = root.split("://", 1)[0]
        if scheme not in {"s3", "s3a", "abfss", "az", "gs", "file"}:
            raise ValueError(
                f"ITEL_DELTA_ROOT has an unsupported scheme {scheme!r}; "
                "use a path or an s3://, abfss://, gs:// URI"
            )
        return root.rstrip("/")
    return str(Path(root).resolve())
