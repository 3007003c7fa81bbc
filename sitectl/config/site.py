"""The grid connection and the circuit tree under it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sitectl.config.base import GRID, PhaseValues, _Model, _non_negative_phases, _phase_values


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
    chargers_only: bool = Field(
        False,
        description="Nothing but chargers draws on this circuit: a non_ev_max_a of 0 is meant "
        "(otherwise check-config warns about it).",
    )

    _phase = field_validator("limit_a", "non_ev_max_a", mode="before")(
        classmethod(lambda cls, v: _phase_values(v))
    )
    _nonneg = field_validator("limit_a", "non_ev_max_a")(
        classmethod(lambda cls, v: _non_negative_phases(v))
    )
