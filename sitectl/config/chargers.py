"""Charge points: identity, wiring, current limits, credentials."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from sitectl.config.base import (
    GRID,
    FilePath,
    _check_identity,
    _Model,
    _resolve_path,
    parse_phase_rotation,
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
    efficiency: float = Field(
        0.93,
        ge=0.5,
        le=1.0,
        description="DC chargers' AC→DC efficiency: used to turn DC output power into AC input "
        "current.",
    )
    phases: Literal[1, 3] = 3
    phase_rotation: str = Field("L1-L2-L3", description="Site phase of each charger phase.")
    failsafe_current_a: float = Field(
        6.0, ge=0, description="Limit the charger keeps when sitectl or its link is gone."
    )
    vendor: str | None = None
    model: str | None = None
    quirks: str | None = Field(
        None,
        description="Pin a quirk file (`sitectl quirks` lists them) instead of matching the "
        "charger's BootNotification vendor, model and firmware.",
    )
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

    @field_validator("quirks")
    @classmethod
    def _known_quirks(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from sitectl.quirks import available_quirks

        known = available_quirks()
        if value not in known:
            raise ValueError(f"unknown quirks {value!r}; known: {', '.join(known)}")
        return value

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
