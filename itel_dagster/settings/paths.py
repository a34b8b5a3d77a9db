"""Where configuration, local state and Delta tables live; each overridable by one env var."""

from __future__ import annotations

import json
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


def delta_storage_options() -> dict[str, str] | None:
    """ITEL_DELTA_STORAGE_OPTIONS: a JSON object handed to delta-rs as `storage_options`, e.g. the
    S3 locking provider that makes concurrent commits safe (see docs/scaling.md)."""
    raw = os.environ.get("ITEL_DELTA_STORAGE_OPTIONS", "").strip()
    if not raw:
        return None
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"ITEL_DELTA_STORAGE_OPTIONS is not JSON: {exc}") from None
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise ValueError('ITEL_DELTA_STORAGE_OPTIONS must be a JSON object of strings, e.g. '
                         '{"AWS_S3_LOCKING_PROVIDER": "dynamodb"}')
    return options
