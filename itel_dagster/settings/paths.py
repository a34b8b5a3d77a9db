"""Where configuration, local state and Delta tables live; each overridable by one env var."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from itel_dagster.settings.env_yaml import ConfigError, load_yaml_once

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def config_dir() -> Path:
    """ITEL_CONFIG_DIR, else the checkout's config/ folder."""
    return Path(os.environ.get("ITEL_CONFIG_DIR") or PROJECT_ROOT / "config")


def state_dir() -> Path:
    """ITEL_STATE_DIR, else ./var: broker data, dagster home, pid files. Git-ignored."""
    return Path(os.environ.get("ITEL_STATE_DIR") or Path.cwd() / "var").resolve()


def delta_root(env: Mapping[str, str] | None = None) -> str:
    """ITEL_DELTA_ROOT: a local path or an s3://, az://, abfss://, gs:// URI. Default ./data/delta.

    A store's endpoint and credentials are delta-rs storage options (`delta_storage_options()`);
    delta-rs also reads them from the environment (AWS_*, AZURE_STORAGE_*, GOOGLE_*).
    """
    root = (os.environ if env is None else env).get("ITEL_DELTA_ROOT") or "./data/delta"
    if "://" in root:
        scheme = root.split("://", 1)[0]
        if scheme not in {"s3", "s3a", "abfss", "az", "azure", "gs", "file"}:
            raise ValueError(
                f"ITEL_DELTA_ROOT has an unsupported scheme {scheme!r}; "
                "use a path or an s3://, az://, abfss://, gs:// URI"
            )
        return root.rstrip("/")
    return str(Path(root).resolve())


DELTA_FILE = "plugins/shared/connections/delta.yaml"


def _option_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def yaml_storage_options(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `storage_options` map of connections/delta.yaml, ${VAR} expanded; keys whose value
    expands to "" (an optional variable left unset) are left out. {} when the file is absent."""
    path = config_dir() / DELTA_FILE
    if not path.exists():
        return {}
    document = load_yaml_once(path, env)
    options = document.data.get("storage_options") if isinstance(document.data, dict) else None
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(
        isinstance(v, (str, int, float, bool)) for v in options.values()
    ):
        raise ConfigError(f"{path}: key 'storage_options' must map delta-rs storage options "
                          "to plain values")
    return {str(k): _option_text(v) for k, v in options.items() if _option_text(v) != ""}


def delta_storage_options(env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """delta-rs `storage_options` for every Delta reader and writer: connections/delta.yaml's
    `storage_options`, then the keys of ITEL_DELTA_STORAGE_OPTIONS (a JSON object) over them.
    None when neither sets any. The values may hold secrets: never log them."""
    env = os.environ if env is None else env
    options = yaml_storage_options(env)
    raw = env.get("ITEL_DELTA_STORAGE_OPTIONS", "").strip()
    if raw:
        try:
            overrides = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"ITEL_DELTA_STORAGE_OPTIONS is not JSON: {exc}") from None
        if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
            raise ValueError('ITEL_DELTA_STORAGE_OPTIONS must be a JSON object of strings, e.g. '
                             '{"AWS_S3_LOCKING_PROVIDER": "dynamodb"}')
        options.update(overrides)
    return options or None
