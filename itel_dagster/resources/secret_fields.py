"""How a secret of the YAML connection files becomes a resource field: the `dg.EnvVar` of the
variable it was taken from, so Dagster reads the value when a run launches and the UI shows only
the variable's name. A secret written literally in the YAML stays a plain string.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from itel_dagster.settings.env_yaml import ExpandedYaml


def secret_field(document: ExpandedYaml, key: str, value: str | None,
                 env: Mapping[str, str]) -> str | None:
    """`value` of the dotted `key` as a resource field: EnvVar(NAME) when the whole value is
    `${NAME}` / `${NAME:-default}` and NAME is set; the literal otherwise; None when empty."""
    if not value:
        return None
    variables = document.variables_by_key.get(key) or []
    if len(variables) == 1 and env.get(variables[0]) == value:
        return dg.EnvVar(variables[0])
    return value

