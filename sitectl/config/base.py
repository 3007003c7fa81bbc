"""Constants, small value types and the base model every config section shares.

Validators here run while `load_config` is loading a file: relative paths resolve against the
directory of that file (`_BASE_DIR`), set by `load_config` for the duration of the load.
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, WithJsonSchema

from sitectl.config.errors import FieldError

ENV_PREFIX = "SITECTL_"
ENV_DELIMITER = "__"

#: Id of the root of the circuit tree: the grid connection described by ``site``.
GRID = "grid"

PHASE_NAMES = ("L1", "L2", "L3")

# Directory of the config file being loaded, for resolving relative paths in validators.
_BASE_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("_BASE_DIR", default=None)
# Environment the overrides come from while `load_config` runs (tests pass their own).
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "_ENVIRON", default=None
)


# ------------------------------------------------------------------------------------------------
# Small value types


def _phase_values(value: Any) -> tuple[float, float, float]:
    """A per-phase value: one number for all three phases, or a list of three."""
    if isinstance(value, bool):
        raise ValueError("expected a number or a list of three numbers")
    if isinstance(value, int | float):
        return (float(value),) * 3
    if isinstance(value, list | tuple):
        if len(value) != 3:
            raise ValueError(f"expected three values (L1, L2, L3), got {len(value)}")
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ValueError("expected a number or a list of three numbers")
            out.append(float(item))
        return out[0], out[1], out[2]
    raise ValueError("expected a number or a list of three numbers")


def _non_negative_phases(value: tuple[float, float, float]) -> tuple[float, float, float]:
    for item in value:
        if not math.isfinite(item) or item < 0:
            raise ValueError(f"each phase value must be a finite number >= 0, got {item}")
    return value


PhaseValues = Annotated[
    tuple[float, float, float],
    # One number for all phases or three; the schema must say so, not "array of three".
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {
                    "type": "array",
                    "items": {"type": "number", "minimum": 0},
                    "minItems": 3,
                    "maxItems": 3,
                },
            ]
        }
    ),
]


@functools.lru_cache(maxsize=256)  # pure; `ChargerConfig.site_phases` asks it every cycle
def parse_phase_rotation(text: str, phases: int = 3) -> tuple[int, ...]:
    """Parse how a charger's phases are wired to the site's.

    ``"L2-L3-L1"`` means the charger's L1 is on the site's L2, its L2 on L3, its L3 on L1.
    Separators (``-``, ``,``, space) are optional. A single-phase charger may give one phase.

    Returns:
        The site phase index (0-based) of each charger phase, one entry per charger phase used.

    Raises:
        ValueError: when the text is not a permutation of L1, L2, L3 (or one phase).
    """
    tokens = re.findall(r"L[123]", text.upper().replace(" ", ""))
    rest = re.sub(r"L[123]|[-,\s/]", "", text.upper())
    if rest or not tokens:
        raise ValueError(
            f"phase rotation '{text}' is not a list of phases like 'L1-L2-L3' or 'L2-L3-L1'"
        )
    indices = tuple(PHASE_NAMES.index(t) for t in tokens)
    if len(indices) == 1 and phases == 1:
        return indices
    if sorted(indices) != [0, 1, 2]:
        raise ValueError(
            f"phase rotation '{text}' is not a permutation of L1, L2, L3 (each phase exactly once)"
        )
    return indices[:phases]


def _check_identity(value: str) -> str:
    # OCPP 2.0.1 Part 4 §3.1.1: identity is the last URL path segment, at most 48 characters,
    # and no ':' because it is also the HTTP Basic user name.
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 48:
        raise ValueError(f"charge point identity is {len(value)} characters; OCPP allows 48")
    if ":" in value:
        raise ValueError("charge point identity must not contain ':' (it is the Basic-auth user)")
    if "/" in value:
        raise ValueError("charge point identity must not contain '/' (it is one URL segment)")
    return value


def _check_host(value: str) -> str:
    """A listen address: an IP address or a host name (a validator for ``listen_host``)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", value):
            raise ValueError(f"'{value}' is neither an IP address nor a host name") from None
    return value


def _resolve_path(value: Path | None) -> Path | None:
    if value is None:
        return None
    value = Path(os.path.expanduser(str(value)))
    base = _BASE_DIR.get()
    if not value.is_absolute() and base is not None:
        value = base / value
    return value


def _read_secret_file(path: Path, field_name: str) -> SecretStr:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FieldError(field_name, f"cannot read '{path}': {exc.strerror}") from None
    # A trailing newline from `echo secret > file` is never part of the secret.
    text = text.rstrip("\r\n")
    if not text:
        raise FieldError(field_name, f"'{path}' is empty")
    return SecretStr(text)


class _Model(BaseModel):
    """Base of all config sections: unknown fields are errors, values are validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def _secrets_from_files(self, *names: str) -> None:
        for name in names:
            file_value = getattr(self, f"{name}_file")
            if file_value is not None and getattr(self, name) is None:
                object.__setattr__(self, name, _read_secret_file(file_value, f"{name}_file"))


FilePath = Annotated[Path, Field(description="Absolute, or relative to the config file.")]


def _parse_time_of_day(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value.strip())
    if not match:
        raise ValueError(f"'{value}' is not a time of day like '06:30'")
    return int(match.group(1)), int(match.group(2))
