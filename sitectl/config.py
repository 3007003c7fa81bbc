"""The installer's configuration: one YAML file describing a whole depot.

Rules of this module:

- The YAML file is the source; environment variables ``SITECTL_<FIELD>__<FIELD>...`` override any
  field. A list item is addressed by its position or by its ``id``/``name``
  (``SITECTL_CHARGERS__CP001__PASSWORD``). Values are parsed as YAML scalars or flow lists.
- Secrets (``SecretStr`` fields) may also come from a file named by the sibling ``*_file`` field,
  and are never printed: not in ``repr``, not in error messages, not in logs
  (`secret_values` feeds the log redaction filter).
- Every check that involves more than one field lives here, not at run time (`_cross_check`):
  unknown references, cycles, impossible limits, a fail-safe that could overload a circuit.
- `load_config` returns a valid `Config` or raises `ConfigError` with *every* problem found,
  each located by path and, where possible, YAML line.
- Relative paths are relative to the directory of the config file.

Units are in field names (``_a``, ``_kw``, ``_s``). Phases are the site's L1, L2, L3; a charger's
``phase_rotation`` says which site phase each of its own phases is wired to.
"""

from __future__ import annotations

import contextvars
import copy
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from devices.api import DeviceSpec, SerialTransport, Sign, TcpTransport
from devices.profile import ProfileError, resolve_profile
from sitectl.yamlfile import Positions, YamlError, format_path, load_yaml

__all__ = [
    "GRID",
    "ChargerConfig",
    "CircuitConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DeviceConfig",
    "FirmwareConfig",
    "HttpConfig",
    "MqttConfig",
    "OcppConfig",
    "Problem",
    "SiteConfig",
    "StorageConfig",
    "apply_env_overrides",
    "load_config",
    "parse_phase_rotation",
    "secret_values",
]

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
# Problems and errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or suspicious, when ``warning``) in a configuration."""

    path: tuple[str | int, ...]
    message: str
    line: int | None = None
    source: str | None = None  # e.g. "environment SITECTL_SITE__LIMIT_KW"
    warning: bool = False
    column: int | None = None

    def __str__(self) -> str:
        if not self.path:
            if self.line is None:
                return self.message
            column = f", column {self.column}" if self.column is not None else ""
            return f"line {self.line}{column}: {self.message}"
        where = format_path(self.path)
        if self.source:
            where += f" ({self.source})"
        elif self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem], filename: str | None = None) -> None:
        self.problems = problems
        self.filename = filename
        super().__init__(self.render())

    def render(self) -> str:
        """The report for an installer: one line for an unreadable file, else one per problem."""
        errors = [p for p in self.problems if not p.warning]
        if self.filename is None and len(errors) == 1 and not errors[0].path:
            return f"error: {errors[0]}"
        head = f"{self.filename}: " if self.filename else ""
        lines = [f"{head}{len(errors)} problem{'s' if len(errors) != 1 else ''} found"]
        lines += [f"  {p}" for p in errors]
        return "\n".join(lines)


class _CrossCheckError(ValueError):
    """Carries the cross-field problems out of the model validator."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


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
        raise ValueError(f"cannot read {field_name} '{path}': {exc.strerror}") from None
    # A trailing newline from `echo secret > file` is never part of the secret.
    text = text.rstrip("\r\n")
    if not text:
        raise ValueError(f"{field_name} '{path}' is empty")
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


# ------------------------------------------------------------------------------------------------
# Sections


class SiteConfig(_Model):
    """The depot and its grid connection (the root of the circuit tree)."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Site id.")
    name: str | None = None
    nominal_voltage_v: float = Field(230.0, gt=0, le=1000, description="Line-to-neutral voltage.")
    limit_kw: float = Field(gt=0, description="Contracted active power at the grid connection.")
    phase_limit_a: PhaseValues = Field(description="Current limit per phase at the connection.")
    meter: str | None = Field(None, description="Device (from `devices`) metering the connection.")
    non_ev_max_a: PhaseValues = Field(
        (0.0, 0.0, 0.0),
        description="Worst-case non-EV current per phase through the connection (fail-safe check).",
    )
    timezone: str = Field("UTC", description="IANA zone for schedules such as departure times.")

    _phase = field_validator("phase_limit_a", "non_ev_max_a", mode="before")(
        classmethod(lambda cls, v: _phase_values(v))
    )
    _nonneg = field_validator("phase_limit_a", "non_ev_max_a")(
        classmethod(lambda cls, v: _non_negative_phases(v))
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone '{value}' (use an IANA name like 'Europe/Berlin')"
            ) from None
        return value


class CircuitConfig(_Model):
    """A node of the circuit tree under the grid connection: transformer, feeder, switchboard."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    kind: Literal["transformer", "feeder", "switchboard", "busbar", "other"] = "feeder"
    parent: str = Field(GRID, description=f"Parent circuit id; '{GRID}' is the grid connection.")
    limit_a: PhaseValues = Field(description="Current limit per phase (one value or three).")
    limit_kw: float | None = Field(None, gt=0, description="Optional active-power limit.")
    meter: str | None = Field(None, description="Device (from `devices`) metering this circuit.")
    non_ev_max_a: PhaseValues = Field(
        (0.0, 0.0, 0.0), description="Worst-case non-EV current per phase through this circuit."
    )

    _phase = field_validator("limit_a", "non_ev_max_a", mode="before")(
        classmethod(lambda cls, v: _phase_values(v))
    )
    _nonneg = field_validator("limit_a", "non_ev_max_a")(
        classmethod(lambda cls, v: _non_negative_phases(v))
    )


class ChargerConfig(_Model):
    """One charge point: identity, where it is wired, what it can draw, its credentials."""

    id: str = Field(description="Charge point identity (last URL segment), at most 48 chars.")
    circuit: str = Field(description=f"Circuit it is wired to ('{GRID}' for the connection).")
    ocpp_version: Literal["1.6", "2.0.1"] = "1.6"
    kind: Literal["ac", "dc"] = "ac"
    connectors: int = Field(1, ge=1, le=8)
    max_current_a: float = Field(
        gt=0, le=1000, description="Max current per phase, all connectors."
    )
    connector_max_current_a: float | None = Field(None, gt=0, le=1000)
    min_current_a: float = Field(6.0, ge=0, le=100, description="IEC 61851 floor (6 A for AC).")
    max_power_kw: float | None = Field(None, gt=0, description="Rated power (required for DC).")
    phases: Literal[1, 3] = 3
    phase_rotation: str = Field("L1-L2-L3", description="Site phase of each charger phase.")
    failsafe_current_a: float = Field(
        6.0, ge=0, description="Limit the charger keeps when sitectl or its link is gone."
    )
    vendor: str | None = None
    model: str | None = None
    password: SecretStr | None = Field(None, description="Basic-auth password charger → sitectl.")
    password_file: FilePath | None = None
    upstream_password: SecretStr | None = Field(
        None, description="Basic-auth password sitectl → CSMS (default: `password`)."
    )
    upstream_password_file: FilePath | None = None

    @field_validator("ocpp_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # `ocpp_version: 1.6` is a YAML float; accept it as the string it means.
        if isinstance(value, float) and not isinstance(value, bool):
            return f"{value:g}"
        return value

    _identity = field_validator("id")(classmethod(lambda cls, v: _check_identity(v)))
    _paths = field_validator("password_file", "upstream_password_file")(
        classmethod(lambda cls, v: _resolve_path(v))
    )

    @field_validator("phase_rotation")
    @classmethod
    def _rotation(cls, value: str) -> str:
        parse_phase_rotation(value, 1 if len(re.findall(r"L[123]", value.upper())) == 1 else 3)
        return value

    @model_validator(mode="after")
    def _fields_together(self) -> ChargerConfig:
        self._secrets_from_files("password", "upstream_password")
        if self.upstream_password is None and self.password is not None:
            object.__setattr__(self, "upstream_password", self.password)
        tokens = re.findall(r"L[123]", self.phase_rotation.upper())
        if self.phases == 3 and len(tokens) != 3:
            raise ValueError(
                f"phase_rotation '{self.phase_rotation}' names one phase but the charger has "
                "3 phases"
            )
        if self.min_current_a > self.max_current_a:
            raise ValueError(
                f"min_current_a {self.min_current_a} A is above max_current_a "
                f"{self.max_current_a} A"
            )
        if self.failsafe_current_a > self.max_current_a:
            raise ValueError(
                f"failsafe_current_a {self.failsafe_current_a} A is above max_current_a "
                f"{self.max_current_a} A"
            )
        if 0 < self.failsafe_current_a < self.min_current_a:
            raise ValueError(
                f"failsafe_current_a {self.failsafe_current_a} A is between 0 and the "
                f"{self.min_current_a} A minimum; a charger cannot draw that (IEC 61851): use 0 "
                f"or at least {self.min_current_a}"
            )
        if self.kind == "dc" and self.max_power_kw is None:
            raise ValueError("a DC charger needs max_power_kw")
        if (
            self.connector_max_current_a is not None
            and self.connector_max_current_a > self.max_current_a
        ):
            raise ValueError("connector_max_current_a is above the charger's max_current_a")
        return self

    @property
    def site_phases(self) -> tuple[int, ...]:
        """Site phase index of each phase this charger draws on, in charger phase order."""
        return parse_phase_rotation(self.phase_rotation, self.phases)


class DeviceConfig(_Model):
    """A Modbus device: a grid meter, a transformer monitor or a sub-meter."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    profile: str = Field(description="Device profile (file stem in devices/profiles) or 'generic'.")
    host: str | None = Field(None, description="Modbus TCP host (or gateway).")
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = Field(
        None, description="Modbus RTU serial device, e.g. /dev/ttyUSB0."
    )
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(1, ge=0, le=255)
    poll_period_s: float = Field(1.0, gt=0, le=3600)
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(2, ge=0, le=10)
    rated_current_a: float | None = Field(None, gt=0, description="For plausibility checks.")
    sign: Literal["import_positive", "export_positive"] | None = Field(
        None, description="Override the profile's power sign (a meter wired the other way)."
    )
    registers: list[dict[str, Any]] | dict[str, Any] | None = Field(
        None, description="Inline register map for the 'generic' profile."
    )

    @model_validator(mode="after")
    def _one_transport(self) -> DeviceConfig:
        if (self.host is None) == (self.serial_port is None):
            raise ValueError("give exactly one of host (Modbus TCP) or serial_port (Modbus RTU)")
        if self.profile == "generic" and not self.registers:
            raise ValueError("profile 'generic' needs an inline `registers` map")
        if self.profile != "generic" and self.registers is not None:
            raise ValueError("`registers` is only for profile 'generic'")
        return self

    def to_spec(self) -> DeviceSpec:
        """The ``devices`` package's view of this device."""
        transport: TcpTransport | SerialTransport
        if self.host is not None:
            transport = TcpTransport(self.host, self.port)
        else:
            assert self.serial_port is not None
            transport = SerialTransport(
                self.serial_port, self.baudrate, self.parity, self.stopbits, self.bytesize
            )
        return DeviceSpec(
            name=self.name,
            profile=self.profile,
            transport=transport,
            unit_id=self.unit_id,
            poll_period_s=self.poll_period_s,
            timeout_s=self.timeout_s,
            retries=self.retries,
            rated_current_a=self.rated_current_a,
            inline_registers=self.registers,
            sign=Sign(self.sign) if self.sign else None,
        )


class OfflineConfig(_Model):
    """What sitectl does while a charger's CSMS connection is down (see README, deviation)."""

    mode: Literal["hold", "close"] = Field(
        "hold", description="hold: keep chargers connected and answer locally; close: the spec."
    )
    unknown_id_policy: Literal["reject", "accept"] = "reject"
    never_accepted_boot: Literal["pending", "rejected", "accepted"] = "pending"
    local_id_tags: list[str] = Field(default_factory=list)
    journal_max_messages: int = Field(200_000, ge=100)
    message_attempts: int = Field(3, ge=1, le=100)
    retry_interval_s: float = Field(60.0, gt=0)


class OcppConfig(_Model):
    """The OCPP server chargers connect to and the upstream CSMS."""

    listen_host: str = "0.0.0.0"
    listen_port: int = Field(9000, ge=1, le=65535)
    path: str = Field("/ocpp", description="URL path before the identity: ws://host:port/ocpp/ID")
    security_profile: Literal[0, 1, 2, 3] = Field(
        1, description="0 none (lab only), 1 Basic, 2 TLS + Basic, 3 TLS + client certificate."
    )
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    tls_ca_file: FilePath | None = Field(None, description="CA of charger client certificates.")
    upstream_url: str | None = Field(None, description="CSMS base URL; identity is appended.")
    upstream_ca_file: FilePath | None = None
    upstream_cert_file: FilePath | None = None
    upstream_key_file: FilePath | None = None
    local_controller_identity: str | None = Field(
        None, description="Optional own identity toward the CSMS (OCPP 2.0.1 Part 1 §8.3)."
    )
    local_controller_password: SecretStr | None = Field(
        None, description="Basic-auth password of that identity, if the CSMS asks for one."
    )
    local_controller_password_file: FilePath | None = None
    ping_interval_s: float = Field(30.0, gt=0)
    ping_timeout_s: float = Field(30.0, gt=0)
    call_timeout_s: float = Field(30.0, gt=0, description="Timeout of sitectl's own calls.")
    upstream_call_timeout_s: float = Field(60.0, gt=0)
    upstream_reconnect_max_s: float = Field(
        60.0, ge=1, description="Longest wait between attempts to reach the CSMS again."
    )
    max_frame_bytes: int = Field(1_048_576, ge=4096)
    profile_stack_levels: tuple[int, int] = Field(
        (7, 8), description="Stack levels sitectl uses: (fail-safe, dynamic)."
    )
    profile_id_base: int = Field(
        900_000, ge=1, description="sitectl's charging profile ids start here (reserved range)."
    )
    offline: OfflineConfig = Field(default_factory=OfflineConfig)

    _paths = field_validator(
        "tls_cert_file",
        "tls_key_file",
        "tls_ca_file",
        "upstream_ca_file",
        "upstream_cert_file",
        "upstream_key_file",
        "local_controller_password_file",
    )(classmethod(lambda cls, v: _resolve_path(v)))

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        return value.rstrip("/") or "/"

    @field_validator("upstream_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"upstream_url '{value}' must be a ws:// or wss:// URL with a host")
        return value.rstrip("/")

    @field_validator("local_controller_identity")
    @classmethod
    def _lc_identity(cls, value: str | None) -> str | None:
        return None if value is None else _check_identity(value)

    @model_validator(mode="after")
    def _tls(self) -> OcppConfig:
        self._secrets_from_files("local_controller_password")
        if self.security_profile >= 2 and (self.tls_cert_file is None or self.tls_key_file is None):
            raise ValueError(
                f"security_profile {self.security_profile} needs tls_cert_file and tls_key_file"
            )
        if self.security_profile == 3 and self.tls_ca_file is None:
            raise ValueError("security_profile 3 needs tls_ca_file to check charger certificates")
        failsafe, dynamic = self.profile_stack_levels
        if not 0 <= failsafe < dynamic:
            raise ValueError(
                "profile_stack_levels must be (fail-safe, dynamic) with 0 <= fail-safe < dynamic"
            )
        return self


class ObjectiveWeights(_Model):
    """Relative weights of the optimizer's objective terms (see optimizer docs)."""

    energy: float = Field(1.0, ge=0, description="Delivering energy by departure (shortfall).")
    cost: float = Field(1.0, ge=0)
    peak: float = Field(1.0, ge=0)
    early: float = Field(1.0, ge=0, description="Charging sooner rather than later.")
    fairness: float = Field(1.0, ge=0)


class ControlConfig(_Model):
    """The control loop: how often, how far ahead, how much solver time, how cautious."""

    period_s: float = Field(5.0, ge=0.5, le=300)
    step_s: int = Field(900, ge=60, le=3600, description="Planning step length.")
    horizon_steps: int = Field(96, ge=1, le=2016)
    solver_budget_s: float = Field(1.0, gt=0, le=60)
    weights: ObjectiveWeights = Field(default_factory=ObjectiveWeights)
    deadband_a: float = Field(1.0, ge=0, description="Skip increases smaller than this.")
    profile_validity_s: float = Field(
        30.0, gt=0, description="Duration of dynamic limits; the charger falls back after it."
    )
    min_pause_s: float = Field(60.0, ge=0)
    min_charge_s: float = Field(60.0, ge=0)
    meter_grace_s: float = Field(15.0, ge=0)
    failsafe_hold_s: float = Field(300.0, ge=0)
    good_readings_to_recover: int = Field(5, ge=1)
    compliance_tolerance_a: float = Field(2.0, ge=0)
    compliance_grace_s: float = Field(60.0, ge=0)
    ev_measurement_max_age_s: float = Field(
        30.0, gt=0, description="A charger's MeterValues older than this are not trusted."
    )
    non_ev_hold_s: float = Field(
        15.0,
        ge=0,
        description="A non-EV load estimate is held this long before it may fall "
        "(covers the skew between meter readings and chargers' MeterValues).",
    )
    resume_check_s: float = Field(
        60.0, gt=0, description="A resumed session drawing nothing after this is flagged."
    )
    dispatch_timeout_s: float = Field(
        3.0, gt=0, description="How long decreases may take to be accepted before increases."
    )
    fallback_alarm_after: int = Field(3, ge=1, description="Consecutive fallback cycles.")
    ev_learn_s: float = Field(
        60.0,
        ge=0,
        description="Learn a vehicle's own maximum current after it draws well "
        "below its limit this long (OCPP 1.6 does not report it); 0 turns learning off.",
    )
    default_energy_kwh: float = Field(60.0, ge=0)
    default_departure: str = Field("06:00", description="Local time vehicles leave by default.")

    @field_validator("default_departure")
    @classmethod
    def _departure(cls, value: str) -> str:
        _parse_time_of_day(value)
        return value

    @model_validator(mode="after")
    def _periods(self) -> ControlConfig:
        if self.profile_validity_s < 2 * self.period_s:
            raise ValueError(
                f"profile_validity_s ({self.profile_validity_s:g} s) must be at least two "
                f"control periods ({2 * self.period_s:g} s) or limits lapse between refreshes"
            )
        return self


class FirmwareConfig(_Model):
    """Firmware image cache and local roll-outs."""

    enabled: bool = Field(
        True, description="Cache images, serve them on the LAN (needs http) and run rollouts."
    )
    cache_dir: FilePath = Path("firmware-cache")
    cache_max_mb: int = Field(4096, ge=16)
    base_url: str | None = Field(
        None, description="URL chargers use to reach sitectl's HTTP server (advertised)."
    )
    max_parallel: int = Field(2, ge=1)
    canary_count: int = Field(1, ge=0)
    halt_failure_share: float = Field(0.2, ge=0, le=1)
    session_wait_max_s: float = Field(12 * 3600, ge=0)
    allow_https_downgrade: bool = False

    _paths = field_validator("cache_dir")(classmethod(lambda cls, v: _resolve_path(v)))

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url '{value}' must be an http:// or https:// URL")
        return value.rstrip("/")


class MqttConfig(_Model):
    """The operator's MQTT broker (summaries, alarms, commands)."""

    enabled: bool = True
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    tls: bool = False
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: FilePath | None = None
    client_id: str | None = None
    topic_prefix: str | None = Field(None, description="Default: sitectl/<site id>.")
    qos: Literal[0, 1] = Field(1, description="QoS 2 is not offered: many cloud brokers lack it.")
    keepalive_s: int = Field(30, ge=5, le=3600)
    summary_period_s: float = Field(10.0, gt=0)
    outage_summary_period_s: float = Field(60.0, gt=0)
    outbox_max_messages: int = Field(100_000, ge=100)
    outbox_max_bytes: int = Field(64 * 1024 * 1024, ge=65536)
    commands_enabled: bool = True

    _paths = field_validator("ca_file", "cert_file", "key_file", "password_file")(
        classmethod(lambda cls, v: _resolve_path(v))
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and (
            not value
            or any(c in value for c in "+#")
            or value.startswith("/")
            or value.endswith("/")
        ):
            raise ValueError(
                "topic_prefix must be non-empty, without '+', '#' or a leading or trailing '/'"
            )
        return value

    @model_validator(mode="after")
    def _secret(self) -> MqttConfig:
        self._secrets_from_files("password")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file for a client certificate")
        return self


class HttpConfig(_Model):
    """Local HTTP: dashboard, JSON API, metrics and firmware files."""

    enabled: bool = True
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(8080, ge=1, le=65535)
    token: SecretStr | None = Field(None, description="Bearer token for write endpoints.")
    token_file: FilePath | None = None
    open_reads: bool = Field(True, description="Serve read endpoints without the token.")
    tls: bool = Field(
        False, description="Serve HTTPS with the site certificate (ocpp.tls_cert_file/key_file)."
    )

    _paths = field_validator("token_file")(classmethod(lambda cls, v: _resolve_path(v)))

    @field_validator("listen_host")
    @classmethod
    def _host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9.-]+", value):
                raise ValueError(f"'{value}' is neither an IP address nor a host name") from None
        return value

    @model_validator(mode="after")
    def _secret(self) -> HttpConfig:
        self._secrets_from_files("token")
        return self


class StorageConfig(_Model):
    """Where sitectl keeps what must survive a restart."""

    path: FilePath = Path("sitectl.sqlite")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL: every commit survives power loss (journal guarantee)."
    )

    _paths = field_validator("path")(classmethod(lambda cls, v: _resolve_path(v)))


class VehicleConfig(_Model):
    """A fleet vehicle, recognised by its id tag, with its usual need."""

    id: str
    id_tags: list[str] = Field(min_length=1)
    departure: str | None = None
    energy_kwh: float | None = Field(None, ge=0)
    priority: int = Field(1, ge=0, le=10)

    @field_validator("departure")
    @classmethod
    def _departure(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_time_of_day(value)
        return value


class FleetConfig(_Model):
    """Optional fleet schedule: which vehicle needs what by when."""

    vehicles: list[VehicleConfig] = Field(default_factory=list)


class TariffPeriod(_Model):
    start: str = Field(description="Local time the price starts, 'HH:MM'.")
    eur_per_kwh: float

    _start = field_validator("start")(classmethod(lambda cls, v: (_parse_time_of_day(v), v)[1]))


class TariffConfig(_Model):
    """Optional energy tariff (time of use) and demand charge."""

    periods: list[TariffPeriod] = Field(default_factory=list)
    demand_charge_eur_per_kw: float = Field(0.0, ge=0)


def _parse_time_of_day(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value.strip())
    if not match:
        raise ValueError(f"'{value}' is not a time of day like '06:30'")
    return int(match.group(1)), int(match.group(2))


# ------------------------------------------------------------------------------------------------
# Environment overrides


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
    return name in ("password", "upstream_password", "token") or name.endswith("_secret")


class _PreparedSource(PydanticBaseSettingsSource):
    """Hands pydantic-settings the YAML data with environment overrides already applied."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


# ------------------------------------------------------------------------------------------------
# The whole configuration


class Config(BaseSettings):
    """A whole depot: grid connection, circuits, chargers, devices and sitectl's own services."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    site: SiteConfig
    circuits: list[CircuitConfig] = Field(default_factory=list)
    charger_defaults: dict[str, Any] = Field(
        default_factory=dict, description="Fields applied to every charger that does not set them."
    )
    chargers: list[ChargerConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    ocpp: OcppConfig = Field(default_factory=OcppConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    firmware: FirmwareConfig = Field(default_factory=FirmwareConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    tariff: TariffConfig = Field(default_factory=TariffConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `load_config` merges the environment itself (list items by id, with locations for
        # errors); pydantic-settings' own env source cannot address list items.
        data = getattr(init_settings, "init_kwargs", {})
        merged, _, _ = apply_env_overrides(data, _env(_ENVIRON.get()))
        return (_PreparedSource(settings_cls, merged),)

    @model_validator(mode="before")
    @classmethod
    def _apply_charger_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = data.get("charger_defaults") or {}
        chargers = data.get("chargers")
        if isinstance(defaults, dict) and defaults and isinstance(chargers, list):
            data = dict(data)
            data["chargers"] = [
                {**defaults, **item} if isinstance(item, dict) else item for item in chargers
            ]
        return data

    @model_validator(mode="after")
    def _cross(self) -> Config:
        problems = [p for p in _cross_check(self) if not p.warning]
        if problems:
            raise _CrossCheckError(problems)
        return self

    # Convenience views used by the rest of sitectl.

    def charger(self, identity: str) -> ChargerConfig | None:
        """The charger with this identity, or ``None``."""
        return self._chargers_by_id().get(identity)

    def _chargers_by_id(self) -> dict[str, ChargerConfig]:
        return {c.id: c for c in self.chargers}

    def circuit_parent(self) -> dict[str, str | None]:
        """Parent of every circuit id; the grid connection's parent is ``None``."""
        parents: dict[str, str | None] = {GRID: None}
        parents.update({c.id: c.parent for c in self.circuits})
        return parents

    def circuit_path(self, circuit_id: str) -> list[str]:
        """Circuit ids from `circuit_id` up to and including the grid connection."""
        parents = self.circuit_parent()
        path: list[str] = []
        node: str | None = circuit_id
        while node is not None and node not in path:
            path.append(node)
            node = parents.get(node)
        return path

    def circuit_limits_a(self) -> dict[str, tuple[float, float, float]]:
        """Per-phase current limit of every node, the grid connection included."""
        limits = {GRID: self.site.phase_limit_a}
        limits.update({c.id: c.limit_a for c in self.circuits})
        return limits

    @property
    def topic_prefix(self) -> str:
        """MQTT topic prefix in force."""
        return self.mqtt.topic_prefix or f"sitectl/{self.site.id}"


def _items(data: dict, key: str) -> list[tuple[int, dict]]:
    value = data.get(key)
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _text(item: dict, key: str, default: str | None = None) -> str | None:
    value = item.get(key, default)
    return value if isinstance(value, str) else None


def _duplicates(items: list[tuple[int, dict]], key: str) -> Iterator[tuple[int, str, int]]:
    first: dict[str, int] = {}
    for index, item in items:
        value = _text(item, key)
        if value is None:
            continue
        if value in first:
            yield index, value, first[value]
        else:
            first[value] = index


def _reference_check(data: dict) -> list[Problem]:
    """Checks of names and references, on plain data so they run even when fields are invalid.

    Unknown circuits and devices, duplicates, cycles: the mistakes of copy-and-paste editing.
    """
    problems: list[Problem] = []
    add = problems.append
    devices = _items(data, "devices")
    circuits = _items(data, "circuits")
    chargers = _items(data, "chargers")
    site = data.get("site") if isinstance(data.get("site"), dict) else {}

    device_names = {n for _, d in devices if (n := _text(d, "name"))}
    for index, name, first in _duplicates(devices, "name"):
        add(
            Problem(
                ("devices", index, "name"),
                f"duplicate device name '{name}' (also devices[{first}])",
            )
        )
    meter = _text(site, "meter")
    if meter is not None and meter not in device_names:
        add(Problem(("site", "meter"), f"unknown device '{meter}'" + _suggest(meter, device_names)))

    circuit_ids = {n for _, c in circuits if (n := _text(c, "id"))}
    for index, name, first in _duplicates(circuits, "id"):
        add(
            Problem(
                ("circuits", index, "id"), f"duplicate circuit id '{name}' (also circuits[{first}])"
            )
        )
    parents: dict[str, str | None] = {GRID: None}
    for index, circuit in circuits:
        cid = _text(circuit, "id")
        parent = _text(circuit, "parent", GRID)
        if cid == GRID:
            add(
                Problem(
                    ("circuits", index, "id"),
                    f"'{GRID}' is reserved for the grid connection described under `site`",
                )
            )
        elif cid is not None and parent is not None and parent != cid:
            parents.setdefault(cid, parent)
        if parent is not None and parent != GRID and parent not in circuit_ids:
            add(
                Problem(
                    ("circuits", index, "parent"),
                    f"unknown circuit '{parent}'" + _suggest(parent, circuit_ids | {GRID}),
                )
            )
        elif parent is not None and parent == cid:
            add(Problem(("circuits", index, "parent"), "a circuit cannot be its own parent"))
        meter = _text(circuit, "meter")
        if meter is not None and meter not in device_names:
            add(
                Problem(
                    ("circuits", index, "meter"),
                    f"unknown device '{meter}'" + _suggest(meter, device_names),
                )
            )

    reported: set[str] = set()
    for index, circuit in circuits:
        cid = _text(circuit, "id")
        seen: list[str] = []
        node: str | None = cid
        while node is not None and node in parents and node not in seen:
            seen.append(node)
            node = parents[node]
        if node is not None and node in seen:
            cycle = seen[seen.index(node) :]
            if reported.intersection(cycle):
                continue
            reported.update(cycle)
            add(
                Problem(
                    ("circuits", index, "parent"),
                    "cycle in the circuit tree: " + " → ".join([*cycle, node]),
                )
            )

    for index, name, first in _duplicates(chargers, "id"):
        add(
            Problem(
                ("chargers", index, "id"), f"duplicate charger id '{name}' (also chargers[{first}])"
            )
        )
    known_nodes = circuit_ids | {GRID}
    for index, charger in chargers:
        circuit = _text(charger, "circuit")
        if circuit is not None and circuit not in known_nodes:
            add(
                Problem(
                    ("chargers", index, "circuit"),
                    f"unknown circuit '{circuit}'" + _suggest(circuit, known_nodes),
                )
            )
    return problems


def _firmware_check(cfg: Config) -> list[Problem]:
    """HTTPS needs the site certificate; firmware needs a URL the chargers can reach."""
    problems = []
    if cfg.http.tls and (cfg.ocpp.tls_cert_file is None or cfg.ocpp.tls_key_file is None):
        problems.append(
            Problem(
                ("http", "tls"),
                "HTTPS uses the site certificate: set ocpp.tls_cert_file and ocpp.tls_key_file",
            )
        )
    fw = cfg.firmware
    if not fw.enabled:
        return problems
    if not cfg.http.enabled:
        if fw.base_url is None:
            return problems  # a site without local HTTP and without firmware settings
        problems.append(
            Problem(
                ("firmware", "base_url"),
                "firmware files are served by the local HTTP server, which is disabled: "
                "UpdateFirmware passes through untouched and rollouts are unavailable",
                warning=True,
            )
        )
    elif fw.base_url is None:
        problems.append(
            Problem(
                ("firmware", "base_url"),
                "not set: chargers cannot be pointed at the cache, so UpdateFirmware passes "
                "through untouched and rollouts are refused; set it to e.g. "
                f"http://<sitectl's LAN address>:{cfg.http.listen_port}, or firmware.enabled: "
                "false",
                warning=True,
            )
        )
    else:
        parts = urlsplit(fw.base_url)
        scheme = "https" if cfg.http.tls else "http"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.scheme != scheme or port != cfg.http.listen_port:
            problems.append(
                Problem(
                    ("firmware", "base_url"),
                    f"'{fw.base_url}' does not match the local HTTP server "
                    f"({scheme}, port {cfg.http.listen_port}); fine only behind a proxy or a "
                    "port forward",
                    warning=True,
                )
            )
    return problems


def _cross_check(cfg: Config) -> list[Problem]:
    """Every check involving more than one field. Warnings are returned with ``warning=True``."""
    problems = _reference_check(cfg.model_dump(include={"site", "circuits", "chargers", "devices"}))
    add = problems.append
    limits = cfg.circuit_limits_a()
    for index, circuit in enumerate(cfg.circuits):
        parent_limit = limits.get(circuit.parent)
        if parent_limit and any(c > p for c, p in zip(circuit.limit_a, parent_limit, strict=True)):
            add(
                Problem(
                    ("circuits", index, "limit_a"),
                    f"limit {_fmt_phases(circuit.limit_a)} A is above its parent "
                    f"'{circuit.parent}' ({_fmt_phases(parent_limit)} A); the parent's "
                    "limit will bind",
                    warning=True,
                )
            )
        if any(n > lim for n, lim in zip(circuit.non_ev_max_a, circuit.limit_a, strict=True)):
            add(
                Problem(
                    ("circuits", index, "non_ev_max_a"),
                    "worst-case non-EV load is above the circuit's limit",
                )
            )

    for index, charger in enumerate(cfg.chargers):
        if charger.circuit not in limits:
            continue
        circuit_limit = limits[charger.circuit]
        for phase in charger.site_phases:
            if charger.failsafe_current_a > circuit_limit[phase]:
                add(
                    Problem(
                        ("chargers", index, "failsafe_current_a"),
                        f"fail-safe {charger.failsafe_current_a:g} A is above the "
                        f"{circuit_limit[phase]:g} A limit of circuit '{charger.circuit}' "
                        f"on {PHASE_NAMES[phase]}",
                    )
                )
                break
        if cfg.ocpp.security_profile in (1, 2) and charger.password is None:
            add(
                Problem(
                    ("chargers", index, "password"),
                    f"security_profile {cfg.ocpp.security_profile} needs a password for "
                    "every charger (or password_file, or SITECTL_CHARGERS__<id>__PASSWORD)",
                )
            )

    problems += _failsafe_check(cfg)
    problems += _profile_check(cfg)

    if cfg.ocpp.local_controller_identity and cfg.charger(cfg.ocpp.local_controller_identity):
        add(
            Problem(
                ("ocpp", "local_controller_identity"),
                "the local controller identity is also a charger id",
            )
        )

    if cfg.mqtt.enabled and cfg.mqtt.password is not None and cfg.mqtt.username is None:
        add(Problem(("mqtt", "username"), "mqtt.password is set but mqtt.username is not"))

    problems += _firmware_check(cfg)
    if cfg.firmware.canary_count > cfg.firmware.max_parallel and cfg.firmware.canary_count > 1:
        add(
            Problem(
                ("firmware", "canary_count"),
                "more canaries than firmware.max_parallel can update at once",
                warning=True,
            )
        )

    tags: dict[str, int] = {}
    for index, vehicle in enumerate(cfg.fleet.vehicles):
        for tag in vehicle.id_tags:
            if tag in tags and tags[tag] != index:
                add(
                    Problem(
                        ("fleet", "vehicles", index, "id_tags"),
                        f"id tag '{tag}' also belongs to fleet.vehicles[{tags[tag]}]",
                    )
                )
            tags.setdefault(tag, index)

    site_kw_from_a = 3 * cfg.site.nominal_voltage_v * min(cfg.site.phase_limit_a) / 1000
    if cfg.site.limit_kw > site_kw_from_a * 1.05:
        add(
            Problem(
                ("site", "limit_kw"),
                f"{cfg.site.limit_kw:g} kW cannot flow within the per-phase limit "
                f"({site_kw_from_a:.0f} kW at {cfg.site.nominal_voltage_v:g} V); the current "
                "limit will bind",
                warning=True,
            )
        )
    if not any(cfg.site.non_ev_max_a) and cfg.chargers:
        add(
            Problem(
                ("site", "non_ev_max_a"),
                "not set: the fail-safe check assumes the building draws nothing",
                warning=True,
            )
        )
    if cfg.ocpp.security_profile == 0:
        add(
            Problem(
                ("ocpp", "security_profile"),
                "0 accepts any charger without a password: only for a lab bench",
                warning=True,
            )
        )
    return problems


def _profile_check(cfg: Config) -> list[Problem]:
    """Every device's register map loads and validates (its profile, or its inline map)."""
    problems: list[Problem] = []
    for index, device in enumerate(cfg.devices):
        try:
            resolve_profile(device.to_spec())
        except ProfileError as exc:
            field = "registers" if device.profile == "generic" else "profile"
            for line in exc.problems:
                problems.append(Problem(("devices", index, field), line))
    return problems


def _failsafe_check(cfg: Config) -> list[Problem]:
    """Fail-safe limits under every circuit, plus its worst-case non-EV load, fit its limit.

    When sitectl or its links die, every charger falls back to its fail-safe limit at once, so
    the sum must fit without sitectl (DESIGN.md safety model).
    """
    problems: list[Problem] = []
    nodes = {c.id for c in cfg.circuits} | {GRID}
    parents = cfg.circuit_parent()
    load: dict[str, list[float]] = {node: [0.0, 0.0, 0.0] for node in nodes}
    power_kw: dict[str, float] = dict.fromkeys(nodes, 0.0)
    for charger in cfg.chargers:
        if charger.circuit not in nodes:
            continue
        path = cfg.circuit_path(charger.circuit)
        if path[-1] != GRID:  # a cycle; reported elsewhere
            continue
        for node in path:
            for phase in charger.site_phases:
                load[node][phase] += charger.failsafe_current_a
            power_kw[node] += (
                charger.failsafe_current_a
                * cfg.site.nominal_voltage_v
                * len(charger.site_phases)
                / 1000
            )
    non_ev = {GRID: cfg.site.non_ev_max_a}
    non_ev.update({c.id: c.non_ev_max_a for c in cfg.circuits})
    limits = cfg.circuit_limits_a()
    location = {GRID: ("site", "phase_limit_a")}
    location.update({c.id: ("circuits", i, "limit_a") for i, c in enumerate(cfg.circuits)})
    for node in sorted(nodes, key=lambda n: (n != GRID, n)):
        if node != GRID and parents.get(node) not in nodes:
            continue
        for phase in range(3):
            budget = limits[node][phase] - non_ev[node][phase]
            if load[node][phase] > budget + 1e-9:
                problems.append(
                    Problem(
                        location[node],
                        f"fail-safe limits of the chargers under '{node}' add up to "
                        f"{load[node][phase]:g} A on {PHASE_NAMES[phase]}, above its "
                        f"{limits[node][phase]:g} A limit minus "
                        f"{non_ev[node][phase]:g} A worst-case non-EV load; lower "
                        "failsafe_current_a",
                    )
                )
                break
    site_budget_kw = cfg.site.limit_kw - (
        sum(cfg.site.non_ev_max_a) * cfg.site.nominal_voltage_v / 1000
    )
    if power_kw[GRID] > site_budget_kw + 1e-9:
        problems.append(
            Problem(
                ("site", "limit_kw"),
                f"fail-safe limits of all chargers add up to {power_kw[GRID]:.1f} kW, above the "
                f"{cfg.site.limit_kw:g} kW connection minus the worst-case non-EV load",
            )
        )
    return problems


def _fmt_phases(values: tuple[float, float, float]) -> str:
    if values[0] == values[1] == values[2]:
        return f"{values[0]:g}"
    return "/".join(f"{v:g}" for v in values)


def _suggest(value: str, candidates: set[str]) -> str:
    close = difflib.get_close_matches(value, sorted(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ------------------------------------------------------------------------------------------------
# Loading


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
    exc: ValidationError,
    positions: Positions,
    sources: dict[tuple[str | int, ...], str],
    fields_by_model: dict[str, set[str]],
) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _CrossCheckError):
            for problem in ctx_error.problems:
                problems.append(_locate(problem, positions, sources))
            continue
        loc = tuple(part for part in error["loc"] if not str(part).startswith("function-after"))
        message = _message(error, loc, fields_by_model)
        problems.append(_locate(Problem(loc, message), positions, sources))
    return problems


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
        problem = Problem((), f"YAML syntax error: {exc.message}", exc.line, column=exc.column)
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
    try:
        config = Config(**data)
    except ValidationError as exc:
        problems = _pydantic_problems(exc, positions, sources, _all_field_names())
        # Field errors stop pydantic before the cross checks; run the reference checks on the
        # plain data too, so the installer sees every problem in one pass.
        raw = Config._apply_charger_defaults(apply_env_overrides(data, _env(environ))[0])
        seen = {(p.path, p.message) for p in problems}
        for problem in _reference_check(raw):
            if (problem.path, problem.message) not in seen:
                problems.append(_locate(problem, positions, sources))
        problems.sort(key=lambda p: (p.line or 0, format_path(p.path)))
        raise ConfigError(problems, name) from None
    finally:
        _ENVIRON.reset(env_token)
        _BASE_DIR.reset(base_token)
    warnings = [_locate(p, positions, sources) for p in _cross_check(config) if p.warning]
    return config, warnings
