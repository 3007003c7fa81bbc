"""Environment overrides: ``SITECTL_<FIELD>__<FIELD>...`` on top of the YAML data."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from sitectl.config.base import ENV_DELIMITER, ENV_PREFIX
from sitectl.config.errors import Problem
from sitectl.yamlfile import YamlError, load_yaml


def _match_item(items: list, segment: str) -> int | None:
    if segment.isdigit():
        index = int(segment)
        return index if index < len(items) else None
    for index, item in enumerate(items):
        if isinstance(item, dict):
            key = item.get("id", item.get("name"))
            if isinstance(key, str) and key.lower() == segment.lower():
                return index
    return None


def _match_key(mapping: dict, segment: str) -> str:
    for key in mapping:
        if isinstance(key, str) and key.lower() == segment.lower():
            return key
    return segment.lower()


def apply_env_overrides(
    data: dict, environ: Mapping[str, str]
) -> tuple[dict, dict[tuple[str | int, ...], str], list[Problem]]:
    """Overlay ``SITECTL_...`` environment variables on the YAML data.

    Args:
        data: the YAML data (not modified).
        environ: the environment.

    Returns:
        The merged data, the path each variable set (for error locations), and problems with
        variables that address nothing (``SITECTL_CHARGERS__NOPE__PASSWORD``).
    """
    merged = copy.deepcopy(data) if data else {}
    sources: dict[tuple[str | int, ...], str] = {}
    problems: list[Problem] = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == "SITECTL_CONFIG":
            continue
        segments = [s for s in name[len(ENV_PREFIX) :].split(ENV_DELIMITER)]
        if not all(segments):
            problems.append(
                Problem(
                    (), f"cannot read environment variable {name}", source=f"environment {name}"
                )
            )
            continue
        node: Any = merged
        path: list[str | int] = []
        for position, segment in enumerate(segments):
            last = position == len(segments) - 1
            if isinstance(node, list):
                index = _match_item(node, segment)
                if index is None:
                    problems.append(
                        Problem(
                            tuple(path),
                            f"no list item '{segment}' to override",
                            source=f"environment {name}",
                        )
                    )
                    break
                key: str | int = index
            elif isinstance(node, dict):
                key = _match_key(node, segment)
            else:
                problems.append(
                    Problem(
                        tuple(path),
                        "cannot override inside a plain value",
                        source=f"environment {name}",
                    )
                )
                break
            path.append(key)
            if last:
                value = environ[name]
                try:
                    parsed = load_yaml(value)[0] if value.strip() else value
                except YamlError:
                    parsed = value
                # Secrets and ids stay strings even when they look like numbers.
                if isinstance(key, str) and (_is_secret_name(key) or key in ("id", "name")):
                    parsed = value
                node[key] = parsed
                sources[tuple(path)] = f"environment {name}"
            else:
                if isinstance(node, dict) and key not in node:
                    node[key] = {}
                node = node[key]
    return merged, sources, problems


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _is_secret_name(name: str) -> bool:
    return name in ("password", "upstream_password", "token", "read_token") or name.endswith(
        "_secret"
    )


class _PreparedSource(PydanticBaseSettingsSource):
    """Hands pydantic-settings the YAML data with environment overrides already applied."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data
