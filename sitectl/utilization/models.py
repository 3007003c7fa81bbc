"""The utilization report's shape, as pydantic models: the API's response and its OpenAPI schema.

`sitectl.utilization.report.utilization_report` builds plain data; the API validates it with
`UtilizationReport` before it answers, so the document and the answer cannot drift apart.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChargerUsage",
    "CircuitUsage",
    "ConnectorUsage",
    "Departures",
    "NightUsage",
    "StateSeconds",
    "StateShares",
    "UtilizationReport",
    "UtilizationTotals",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StateSeconds(_Strict):
    """Seconds in each state (of connector-time, for a charger or the site)."""

    offline: float = Field(ge=0)
    available: float = Field(ge=0)
    charging: float = Field(ge=0)
    idle: float = Field(ge=0, description="Plugged in, not drawing.")
    faulted: float = Field(ge=0)
    unknown: float = Field(ge=0, description="sitectl was not recording, or no status yet.")


class StateShares(_Strict):
    """The same as shares of the window (they add up to 1); null for an empty window."""

    offline: float | None = Field(ge=0, le=1)
    available: float | None = Field(ge=0, le=1)
    charging: float | None = Field(ge=0, le=1)
    idle: float | None = Field(ge=0, le=1)
    faulted: float | None = Field(ge=0, le=1)
    unknown: float | None = Field(ge=0, le=1)


class _Usage(_Strict):
    seconds: StateSeconds
    shares: StateShares
    energy_kwh: float = Field(ge=0, description="Recorded energy in the window.")
    mean_power_kw: float | None = Field(
        ge=0, description="Energy over the time charging; null when it never charged."
    )


class ConnectorUsage(_Usage):
    """One connector over the window."""

    charger: str
    connector: int = Field(ge=1)
    sessions: int = Field(ge=0, description="Sessions that started in the window.")
    peak_power_kw: float | None = Field(ge=0)
    peak_current_a: float | None = Field(ge=0, description="Highest phase.")


class ChargerUsage(_Usage):
    """One charger: its connectors added up (shares of connector-time)."""

    charger: str
    circuit: str
    connectors: int = Field(ge=1)
    sessions: int = Field(ge=0)
    peak_power_kw: float | None = Field(
        ge=0, description="Highest sum of its connectors' bucket peaks (an upper bound)."
    )


class UtilizationTotals(_Usage):
    """Every connector of the site together."""

    connectors: int = Field(ge=0)
    sessions: int = Field(ge=0)


class CircuitUsage(_Strict):
    """A node (the grid connection or a circuit) over the window."""

    node: str
    lowest_limit_a: float | None = Field(description="The lowest limit in force on a phase.")
    recorded_s: float = Field(ge=0, description="Seconds the control loop's view was recorded.")
    at_limit_s: float = Field(ge=0)
    share_at_limit: float | None = Field(ge=0, le=1, description="Of the recorded seconds.")
    deferred_kwh: float = Field(
        ge=0,
        description="Estimate: what the sessions it held wanted above what they got, while it "
        "held them (DESIGN.md, Utilization).",
    )
    metered_s: float = Field(ge=0, description="Seconds with a trusted measured current.")
    mean_current_a: float | None = Field(ge=0, description="Measured, highest phase.")
    peak_current_a: float | None = Field(ge=0)


class Departures(_Strict):
    """Ended sessions by how their departure went."""

    met: int = Field(ge=0)
    missed: int = Field(ge=0)
    unknown: int = Field(ge=0, description="No stated need or departure.")


class NightUsage(_Strict):
    """The sessions that plugged in during one night."""

    night: str = Field(description="The local date the night starts on.")
    start: str = Field(description="UTC, ISO 8601.")
    end: str
    complete: bool = Field(description="Over, and none of its sessions is under way.")
    sessions: int = Field(ge=0)
    under_way: int = Field(ge=0)
    energy_kwh: float = Field(ge=0)
    sessions_with_need: int = Field(ge=0)
    needed_kwh: float = Field(ge=0, description="Their stated needs, added up.")
    delivered_for_need_kwh: float = Field(ge=0, description="What those sessions got.")
    shortfall_kwh: float = Field(ge=0, description="Their needs less what they had by departure.")
    departures: Departures
    short_alarms: int = Field(ge=0, description="Sessions whose plan raised departure_short.")


class UtilizationReport(_Strict):
    """How the depot was used over a window (``GET /api/reports/utilization``)."""

    site: str
    timezone: str
    from_: str = Field(alias="from", description="UTC, ISO 8601.")
    to: str
    generated_at: str
    window_s: float = Field(ge=0)
    recorded_s: float = Field(ge=0, description="Seconds of the window sitectl was recording.")
    totals: UtilizationTotals
    connectors: list[ConnectorUsage]
    chargers: list[ChargerUsage]
    circuits: list[CircuitUsage]
    nights: list[NightUsage]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
