"""What the JSON API returns: pydantic models built from SiteState.

The same models produce the responses and the OpenAPI document (`sitectl.http.openapi`), so the
two cannot drift apart. Currents are A per phase as ``[L1, L2, L3]``; times are UTC ISO 8601.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from sitectl.config import GRID, Config
from sitectl.state import ChargerState, SiteState

__all__ = [
    "AlarmView",
    "ChargerDetail",
    "ChargerView",
    "CircuitView",
    "ConnectorView",
    "ControlView",
    "ErrorView",
    "FrameView",
    "HistoryView",
    "SessionRecord",
    "SessionView",
    "SiteView",
    "charger_view",
    "site_view",
]

Phases = tuple[float, float, float]


class CircuitView(BaseModel):
    """One node of the circuit tree, per phase."""

    id: str
    parent: str | None
    limit_a: Phases = Field(description="Limit in force (configured, or a lower override).")
    measured_a: Phases | None = Field(None, description="From its meter; null without one.")
    non_ev_a: Phases = Field(description="Non-EV load budgeted at this node.")
    planned_a: Phases = Field(description="Non-EV load plus the EV budget dispatched.")
    headroom_a: Phases
    meter_state: str = Field(description="none, measured or failed.")


class ControlView(BaseModel):
    """The control loop's health."""

    cycles: int
    last_cycle_at: datetime | None
    last_solve_ms: float | None
    method: str | None = Field(description="lp or fallback.")
    status: str | None
    fallback_count: int
    consecutive_fallbacks: int
    sessions_charging: int
    sessions_paused: int


class SiteView(BaseModel):
    """The depot: connection, circuits, control health."""

    id: str
    name: str | None
    limit_kw: float
    power_kw: float | None = Field(description="Active power at the grid connection meter.")
    circuits: list[CircuitView]
    control: ControlView
    alarms: int = Field(description="Alarms currently raised.")


class SessionView(BaseModel):
    """A charging session in progress."""

    session_id: str
    connector_id: int
    transaction_id: str | None
    started_at: datetime
    energy_kwh: float
    energy_wanted_kwh: float | None
    departure: datetime | None
    priority: int


class ConnectorView(BaseModel):
    """One connector (OCPP 2.0.1: EVSE)."""

    connector_id: int
    status: str
    error_code: str | None
    current_a: tuple[float | None, float | None, float | None] | None
    power_kw: float | None
    soc_percent: float | None
    measured_at: datetime | None
    session: SessionView | None


class ChargerView(BaseModel):
    """A charger as the operator sees it."""

    id: str
    circuit: str
    ocpp_version: str
    connected: bool
    upstream_connected: bool
    vendor: str | None
    model: str | None
    firmware_version: str | None
    firmware_status: str | None
    limit_a: float | None = Field(description="Dynamic limit in force (A per phase).")
    compliance: str = Field(description="ok, noncompliant or uncontrollable.")
    last_seen: datetime | None
    connectors: list[ConnectorView]


class FrameView(BaseModel):
    """One OCPP frame on a charger's sockets."""

    at: datetime
    socket: str = Field(description="charger or csms.")
    direction: str = Field(description="in (received by sitectl) or out (sent).")
    text: str


class ChargerDetail(ChargerView):
    """A charger with its latest frames (for commissioning)."""

    recent_frames: list[FrameView]


class AlarmView(BaseModel):
    """A raised alarm."""

    code: str
    subject: str
    severity: str
    text: str
    raised_at: datetime


class SessionRecord(BaseModel):
    """An ended session, from the store."""

    session_id: str
    charger: str
    connector: int
    transaction_id: str | None
    id_tag_hash: str | None
    started_at: datetime
    ended_at: datetime
    energy_wh: float


class HistoryView(BaseModel):
    """The grid connection over the last hour, one point per sample."""

    at: list[datetime]
    power_kw: list[float | None]
    limit_kw: list[float]


class ErrorView(BaseModel):
    """A refused request: what is wrong and, where it is one field, which."""

    error: str
    field: str | None = None


def site_view(state: SiteState, config: Config) -> SiteView:
    """The site now."""
    control = state.control
    parents = config.circuit_parent()
    circuits = [
        CircuitView(
            id=node,
            parent=parents.get(node),
            limit_a=status.limit_a,
            measured_a=status.measured_a,
            non_ev_a=status.non_ev_a,
            planned_a=status.planned_a,
            headroom_a=status.headroom_a,
            meter_state=status.meter_state,
        )
        for node, status in control.circuits.items()
    ]
    power = None
    reading = state.readings.get(config.site.meter or "")
    if reading is not None and getattr(reading, "ok", False):
        power = reading.power_total_kw
    return SiteView(
        id=config.site.id,
        name=config.site.name,
        limit_kw=config.site.limit_kw,
        power_kw=power,
        circuits=circuits,
        control=ControlView(
            cycles=control.cycles,
            last_cycle_at=control.last_cycle_at,
            last_solve_ms=None if control.last_solve_s is None else control.last_solve_s * 1000,
            method=control.method,
            status=control.status,
            fallback_count=control.fallback_count,
            consecutive_fallbacks=control.consecutive_fallbacks,
            sessions_charging=control.sessions_charging,
            sessions_paused=control.sessions_paused,
        ),
        alarms=len(state.alarms),
    )


def charger_view(charger: ChargerState, config: Config, detail: bool = False) -> ChargerView:
    """One charger now (with its latest frames when `detail`)."""
    configured = config.charger(charger.charger_id)
    connectors = []
    for connector in charger.connectors.values():
        session = connector.session
        connectors.append(
            ConnectorView(
                connector_id=connector.connector_id,
                status=connector.status,
                error_code=connector.error_code,
                current_a=connector.current_a,
                power_kw=connector.power_kw,
                soc_percent=connector.soc_percent,
                measured_at=connector.measured_at,
                session=None
                if session is None
                else SessionView(
                    session_id=session.session_id,
                    connector_id=session.connector_id,
                    transaction_id=session.transaction_id,
                    started_at=session.started_at,
                    energy_kwh=session.energy_wh / 1000,
                    energy_wanted_kwh=session.energy_wanted_kwh,
                    departure=session.departure,
                    priority=session.priority,
                ),
            )
        )
    fields: dict[str, Any] = dict(
        id=charger.charger_id,
        circuit=configured.circuit if configured else GRID,
        ocpp_version=charger.ocpp_version,
        connected=charger.connected,
        upstream_connected=charger.upstream_connected,
        vendor=charger.vendor,
        model=charger.model,
        firmware_version=charger.firmware_version,
        firmware_status=charger.firmware_status,
        limit_a=charger.limit_a,
        compliance=charger.compliance,
        last_seen=charger.last_seen,
        connectors=connectors,
    )
    if not detail:
        return ChargerView(**fields)
    frames = [
        FrameView(at=at, socket=side, direction=direction, text=text)
        for at, side, direction, text in charger.recent_frames
    ]
    return ChargerDetail(**fields, recent_frames=frames)
