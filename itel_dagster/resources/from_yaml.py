"""The code location's resources, built once per process from the YAML connection files
(config/plugins/shared/connections/) and the environment, as definitions.py loads.

The files stay the contract: same keys, `${VAR:-default}` expansion and load-time messages naming
file and key. Each value becomes a resource field the UI shows; a secret taken from a variable
becomes that variable's `dg.EnvVar`, which Dagster reads when a run launches (the UI shows its
name only). A connection whose file cannot be used (a variable without default unset) is built
`not_configured`, with the message: the code location still loads, its runs fail with it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import dagster as dg

from itel_dagster.resources.claimx_api import ClaimxApiResource
from itel_dagster.resources.delta_tables import SECRET_STORAGE_OPTIONS, DeltaTablesResource
from itel_dagster.resources.http_connection import HttpConnectionResource
from itel_dagster.resources.itel_api import ItelApiResource
from itel_dagster.resources.kafka import KafkaResource
from itel_dagster.resources.secret_fields import secret_field
from itel_dagster.settings.connections import CLAIMX_FILE, ITEL_FILE
from itel_dagster.settings.env_yaml import ConfigError, load_yaml_once
from itel_dagster.settings.kafka import KAFKA_FILE
from itel_dagster.settings.paths import (
    DELTA_FILE,
    config_dir,
    delta_root,
    delta_storage_options,
    yaml_storage_options,
)

OVERRIDE_VARIABLE = "ITEL_DELTA_STORAGE_OPTIONS"


def file_version(name: str) -> str:
    """`name@<sha256 of its content>`, or `name@absent`: what a resource was built from."""
    try:
        digest = hashlib.sha256((config_dir() / name).read_bytes()).hexdigest()[:16]
    except OSError:
        digest = "absent"
    return f"{name}@{digest}"


def http_resource(cls: type[HttpConnectionResource], env: Mapping[str, str]):
    version = file_version(cls.SETTINGS_FILE)
    try:
        document = load_yaml_once(config_dir() / cls.SETTINGS_FILE, env)
    except ConfigError as exc:
        return cls(not_configured=str(exc), built_from=version)
    return cls.from_document(document, env, built_from=version)


def delta_resource(env: Mapping[str, str]) -> DeltaTablesResource:
    """ITEL_DELTA_ROOT and delta.yaml's storage options; object-store keys taken from variables
    as their EnvVar, ITEL_DELTA_STORAGE_OPTIONS as its EnvVar (checked now: a malformed value
    fails the load with its message)."""
    delta_storage_options(env)  # the seed's load-time checks of delta.yaml and the override
    plain = yaml_storage_options(env)
    path = config_dir() / DELTA_FILE
    secrets = {}
    for key in [k for k in plain if k.lower() in SECRET_STORAGE_OPTIONS]:
        secrets[key.lower()] = secret_field(load_yaml_once(path, env), f"storage_options.{key}",
                                            plain.pop(key), env)
    override = dg.EnvVar(OVERRIDE_VARIABLE) if env.get(OVERRIDE_VARIABLE, "").strip() else None
    return DeltaTablesResource(root=delta_root(env), storage_options=plain,
                               storage_options_override=override, **secrets,
                               built_from=file_version(DELTA_FILE))


CONNECTION_FILES = (KAFKA_FILE, CLAIMX_FILE, ITEL_FILE, DELTA_FILE)
# (the config dir, its files' versions, the environment) -> the resources: built once per
# process, and again only after a file or a variable changed (one costs ~10 ms to construct).
_built: dict[tuple, dict[str, dg.ConfigurableResource]] = {}


def _sources(env: Mapping[str, str]) -> tuple:
    return (str(config_dir()), tuple(file_version(name) for name in CONNECTION_FILES),
            tuple(sorted(env.items())))


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """kafka, claimx, itel and delta, as the files and `env` (default os.environ) say now."""
    env = os.environ if env is None else env
    key = _sources(env)
    if key not in _built:
        _built.clear()
        _built[key] = {
            "kafka": KafkaResource.from_settings(env, built_from=file_version(KAFKA_FILE)),
            "claimx": http_resource(ClaimxApiResource, env),
            "itel": http_resource(ItelApiResource, env),
            "delta": delta_resource(env),
        }
    return dict(_built[key])


def resources_changed(resources: Mapping[str, dg.ConfigurableResource]) -> str | None:
    """Why a sensor given these resources must not dispatch: a connection file they were built
    from changed since. Its runs would build their resources from the file as it is now; a code
    location reload applies the edit to both. A resource not built from a file never is."""
    changed = sorted(key for key, resource in resources.items()
                     if getattr(resource, "built_from", None)
                     and resource.built_from != file_version(resource.built_from.split("@")[0]))
    if not changed:
        return None
    return (f"the {', '.join(changed)} connection file changed since the code location loaded; "
            "reload the code location (Deployment > Reload, or restart dagster dev) to apply it "
            "to this sensor and its runs")
