"""`load_config`: read a YAML file, merge the environment, validate, locate every problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from sitectl.config.base import _BASE_DIR, _ENVIRON
from sitectl.config.checks import _cross_check, _reference_check, _suggest
from sitectl.config.env import _env, _is_secret_name, apply_env_overrides
from sitectl.config.errors import ConfigError, FieldError, Problem, _CrossCheckError
from sitectl.config.model import Config
from sitectl.yamlfile import Positions, YamlError, format_path, load_yaml


def secret_values(cfg: Config) -> list[str]:
    """Every secret in the configuration, for the log redaction filter."""
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                walk(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, BaseModel):
                        walk(item)

    walk(cfg)
    return [s for s in found if s]


def _pydantic_problems(
    exc: ValidationError, fields_by_model: dict[str, set[str]]
) -> tuple[list[Problem], list[Problem]]:
    """Pydantic's errors as problems: (field errors, cross-check errors), not yet located."""
    fields: list[Problem] = []
    cross: list[Problem] = []
    for error in exc.errors(include_url=False):
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _CrossCheckError):
            cross += ctx_error.problems
            continue
        loc = tuple(part for part in error["loc"] if not str(part).startswith("function-after"))
        if isinstance(ctx_error, FieldError):
            loc = (*loc, ctx_error.field)
        fields.append(Problem(loc, _message(error, loc, fields_by_model)))
    return fields, cross


def _blame_defaults(problems: list[Problem], data: dict) -> list[Problem]:
    """Report a charger field's problem at ``charger_defaults`` when the value came from there.

    A wrong ``charger_defaults.password_file`` is one mistake, so it is one problem at the line
    where it was written, not one per charger at lines that never mention it.
    """
    defaults = data.get("charger_defaults")
    chargers = data.get("chargers")
    out: list[Problem] = []
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for problem in problems:
        path = problem.path
        if (
            isinstance(defaults, dict)
            and isinstance(chargers, list)
            and len(path) >= 3
            and path[0] == "chargers"
            and isinstance(path[1], int)
            and path[1] < len(chargers)
            and isinstance(chargers[path[1]], dict)
            and path[2] in defaults
            and path[2] not in chargers[path[1]]
        ):
            problem = Problem(
                ("charger_defaults", *path[2:]), problem.message, warning=problem.warning
            )
        if (problem.path, problem.message) in seen:
            continue
        seen.add((problem.path, problem.message))
        out.append(problem)
    return out


def _message(error: dict, loc: tuple, fields_by_model: dict[str, set[str]]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        parent = _model_at(loc[:-1])
        candidates = fields_by_model.get(parent, set())
        return f"unknown field '{name}'" + _suggest(name, candidates)
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    secret = any(isinstance(p, str) and (_is_secret_name(p) or p.endswith("_file")) for p in loc)
    value = error.get("input")
    if (
        not secret
        and isinstance(value, str | int | float)
        and not isinstance(value, bool)
        and kind != "value_error"
        and len(str(value)) < 80
    ):
        message += f" (got {value!r})"
    return message


def _model_at(loc: tuple) -> str:
    """Name of the model a location points into, for 'did you mean' suggestions."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return model.__name__
        annotation = field.annotation
        inner = _model_in(annotation)
        if inner is None:
            return model.__name__
        model = inner
    return model.__name__


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _all_field_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}

    def visit(model: type[BaseModel]) -> None:
        if model.__name__ in names:
            return
        names[model.__name__] = set(model.model_fields)
        for field in model.model_fields.values():
            inner = _model_in(field.annotation)
            if inner is not None:
                visit(inner)

    visit(Config)
    return names


def _locate(
    problem: Problem, positions: Positions, sources: dict[tuple[str | int, ...], str]
) -> Problem:
    for end in range(len(problem.path), 0, -1):
        source = sources.get(problem.path[:end])
        if source:
            return Problem(problem.path, problem.message, None, source, problem.warning)
    return Problem(
        problem.path, problem.message, positions.line_of(problem.path), None, problem.warning
    )


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> tuple[Config, list[Problem]]:
    """Read, merge and validate a depot's configuration.

    Args:
        path: the YAML file.
        environ: environment to take ``SITECTL_...`` overrides from (default: ``os.environ``).

    Returns:
        The configuration and its warnings (suspicious but usable settings).

    Raises:
        ConfigError: with every problem found, each with its path and line.
    """
    file = Path(path)
    name = str(path)
    if file.is_dir():
        raise ConfigError([Problem((), f"'{name}' is a directory, not a YAML file")])
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem((), f"no such file: '{name}'")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem((), f"'{name}' is not UTF-8 text (byte {exc.start})")]) from None
    except OSError as exc:
        raise ConfigError([Problem((), f"cannot read '{name}': {exc.strerror}")]) from None
    if not text.strip():
        raise ConfigError([Problem((), f"'{name}' is empty; see configs/example.yaml")])
    try:
        data, positions = load_yaml(text)
    except YamlError as exc:
        problem = Problem(
            (),
            f"YAML syntax error: {exc.message}",
            exc.line,
            column=exc.column,
            excerpt=exc.excerpt,
        )
        raise ConfigError([problem], name) from None
    if data is None:
        raise ConfigError(
            [Problem((), f"'{name}' has no settings (only comments); see configs/example.yaml")]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            [
                Problem(
                    (),
                    "the top level must be a mapping (site:, chargers:, ...)",
                    positions.line_of(()),
                )
            ],
            name,
        )

    _, sources, env_problems = apply_env_overrides(data, _env(environ))
    if env_problems:
        raise ConfigError(env_problems, name)

    base_token = _BASE_DIR.set(file.resolve().parent)
    env_token = _ENVIRON.set(environ)
    merged = apply_env_overrides(data, _env(environ))[0]
    try:
        config = Config(**data)
    except ValidationError as exc:
        field_problems, cross_problems = _pydantic_problems(exc, _all_field_names())
        problems = _blame_defaults(field_problems, merged) + cross_problems
        # Field errors stop pydantic before the cross checks; run the reference checks on the
        # plain data too, so the installer sees every problem in one pass.
        seen = {(p.path, p.message) for p in problems}
        for problem in _reference_check(Config._apply_charger_defaults(merged)):
            if (problem.path, problem.message) not in seen:
                problems.append(problem)
        located = [_locate(p, positions, sources) for p in problems]
        located.sort(key=lambda p: (p.line or 0, format_path(p.path)))
        raise ConfigError(located, name) from None
    finally:
        _ENVIRON.reset(env_token)
        _BASE_DIR.reset(base_token)
    warnings = [p for p in _cross_check(config) if p.warning]
    warnings = _blame_defaults([p for p in warnings if _is_about_a_value(p)], merged) + [
        p for p in warnings if not _is_about_a_value(p)
    ]
    return config, [_locate(p, positions, sources) for p in warnings]


def _is_about_a_value(problem: Problem) -> bool:
    # A warning about a secret (placeholder, file mode) is about the value wherever it is used;
    # others (a rotation on a single-phase charger) are about that charger.
    field = problem.path[2] if len(problem.path) >= 3 else None
    return isinstance(field, str) and (_is_secret_name(field) or field.endswith("_file"))
