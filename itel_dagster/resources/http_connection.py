"""The fields the ClaimX and iTel resources share: one HTTP connection of
config/plugins/shared/connections/, as ConfigurableResource fields built once from the YAML.

A field left None takes the settings model's default; the settings model (settings/connections.py)
stays the one place of defaults and checks, and runs rebuild it from these fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import dagster as dg
from pydantic import BaseModel

from itel_dagster.resources.secret_fields import secret_field
from itel_dagster.settings.env_yaml import ConfigError, ExpandedYaml, parse_model


class HttpConnectionResource(dg.ConfigurableResource):
    # Set instead of the fields when the YAML could not be used at load (e.g. a variable without
    # default unset): the code location still loads; runs that need the connection fail with it.
    not_configured: str | None = None
    # The file and its content's hash when built from it (resources/from_yaml.py): a sensor whose
    # file changed since skips until the code location is reloaded.
    built_from: str | None = None
    name: str | None = None
    base_url: str | None = None
    auth_type: str | None = None
    auth_token: str | None = None  # dg.EnvVar of the token variable (see secret_fields.py)
    connect_timeout_seconds: float | None = None
    timeout_seconds: float | None = None
    max_retries: int | None = None
    retry_backoff_base: float | None = None
    retry_backoff_max: float | None = None
    max_concurrency: int | None = None
    send_round_size: int | None = None
    headers: dict[str, str] | None = None

    # The YAML file, its root key and settings model; the secret fields (dotted when nested).
    SETTINGS_FILE: ClassVar[str]
    ROOT_KEY: ClassVar[str]
    SETTINGS_MODEL: ClassVar[type[BaseModel]]
    SECRET_FIELDS: ClassVar[frozenset[str]] = frozenset({"auth_token"})
    # Fields of the resource itself, not of the connection's settings.
    OWN_FIELDS: ClassVar[frozenset[str]] = frozenset({"not_configured", "built_from"})

    @classmethod
    def from_document(cls, document: ExpandedYaml, env: Mapping[str, str], **own):
        """The resource of one expanded YAML document; its load-time errors (file and key named)
        become `not_configured`."""
        try:
            settings = parse_model(cls.SETTINGS_MODEL, document, root_key=cls.ROOT_KEY)
        except ConfigError as exc:
            return cls(not_configured=str(exc), **own)
        data = settings.model_dump(mode="json")
        for name in cls.SECRET_FIELDS:
            *parents, leaf = name.split(".")
            node, model = data, settings
            for parent in parents:
                node, model = node[parent], getattr(model, parent)
            secret = getattr(model, leaf)
            node[leaf] = secret_field(
                document, ".".join([cls.ROOT_KEY, name]),
                secret.get_secret_value() if secret is not None else None, env)
        return cls(**data, **own)

    def settings(self):
        """The connection's settings model, rebuilt from the fields (secrets as Dagster resolved
        them)."""
        if self.not_configured:
            raise ConfigError(self.not_configured)
        data = {k: v for k, v in self.model_dump().items()
                if k not in self.OWN_FIELDS and v is not None}
        return self.SETTINGS_MODEL.model_validate(data)
