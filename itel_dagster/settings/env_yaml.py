"""YAML files with ${NAME} / ${NAME:-default} environment expansion.

Every failure is a ConfigError whose one-line message names the file, the dotted key and, where
one is involved, the environment variable. Values are never echoed for keys marked secret.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_LOOKS_LIKE_REFERENCE = re.compile(r"\$\{[^}]*\}?")


class ConfigError(ValueError):
    """A configuration file that cannot be used, with a message naming file, key and variable."""


@dataclass
class ExpandedYaml:
    """A parsed YAML document after expansion, and which variable each expanded key came from."""

    path: Path
    data: Any
    variables_by_key: dict[str, list[str]] = field(default_factory=dict)


def _dotted(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def _expand_string(
    text: str, key: str, path: Path, env: Mapping[str, str], origins: dict[str, list[str]]
) -> str:
    def substitute(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        origins.setdefault(key, []).append(name)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(
                    f"{path}: key '{key}' needs environment variable {name}, which is not set"
                )
            return default
        return value

    expanded = _REFERENCE.sub(substitute, text)
    leftover = _LOOKS_LIKE_REFERENCE.search(_REFERENCE.sub("", text))
    if leftover:
        raise ConfigError(
            f"{path}: key '{key}' has a malformed variable reference {leftover.group(0)!r}; "
            "write ${NAME} or ${NAME:-default}"
        )
    return expanded


def _expand(
    node: Any, parts: tuple[Any, ...], path: Path, env: Mapping[str, str], origins: dict
) -> Any:
    if isinstance(node, dict):
        return {k: _expand(v, parts + (k,), path, env, origins) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, parts + (i,), path, env, origins) for i, v in enumerate(node)]
    if isinstance(node, str):
        return _expand_string(node, _dotted(parts), path, env, origins)
    return node


def load_yaml(path: Path, env: Mapping[str, str] | None = None) -> ExpandedYaml:
    """Read one YAML file and expand its variable references from `env` (default os.environ)."""
    env = os.environ if env is None else env
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    origins: dict[str, list[str]] = {}
    data = _expand(raw if raw is not None else {}, (), path, env, origins)
    return ExpandedYaml(path=path, data=data, variables_by_key=origins)


# (file, its content's hash, the environment it was expanded with) -> the expanded document: a
# connection file is parsed once per process, and again only after it or the environment changed
# (by content: two edits within one mtime tick are still told apart).
_documents: dict[tuple, ExpandedYaml] = {}


def load_yaml_once(path: Path, env: Mapping[str, str] | None = None) -> ExpandedYaml:
    """load_yaml, kept per file content and environment. The document is shared: callers copy
    what they change."""
    env = os.environ if env is None else env
    try:
        content = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return load_yaml(path, env)  # says the file is missing, with its path
    key = (str(path), content, tuple(sorted(env.items())))
    document = _documents.get(key)
    if document is None:
        document = load_yaml(path, env)
        for stale in [k for k in _documents if k[0] == key[0]]:
            del _documents[stale]
        _documents[key] = document
    return document


def parse_model(
    model: type[M], document: ExpandedYaml, root_key: str | None = None
) -> M:
    """Validate `document` (or its `root_key` section) into `model`, one message per failure."""
    data = document.data
    prefix: tuple[Any, ...] = ()
    if root_key is not None:
        if not isinstance(data, dict) or root_key not in data:
            raise ConfigError(f"{document.path}: key '{root_key}' is missing")
        data, prefix = data[root_key], (root_key,)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _dotted(prefix + tuple(first["loc"]))
        variables = document.variables_by_key.get(key)
        source = f" (from ${{{variables[0]}}})" if variables else ""
        reason = first["msg"]
        if first["type"] == "extra_forbidden":
            reason = "is not a known key (check its spelling)"
        elif first["type"] == "missing":
            reason = "is missing"
        else:
            reason = f"is malformed: {reason}"
        raise ConfigError(f"{document.path}: key '{key}'{source} {reason}") from None
