"""What the JSON API returns: pydantic models built from SiteState.

The same models produce the responses and the OpenAPI document (`sitectl.http.openapi`), so the
two cannot drift apart. Currents are A per phase as ``[L1, L2, L3]``; times are UTC ISO 8601.

Numbers are rounded where the models are built, one precision per unit (`PRECISION`): more
digits than a meter or a charger resolves only look precise.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from sitectl.config import GRID, Config
from sitectl.firmware.cache import safe_url
from sitectl.firmware.server import hide_tokens
from sitectl.http.limit_views import (
    LimitSourceView,
    LimitWindowView,
    limit_sources,
    limit_windows,
)
from sitectl.http.units import (
    PRECISION,
    Amps,
    KilowattHours,
    Kilowatts,
    Milliseconds,
    Percent,
    Phases,
    WattHours,
)
from sitectl.http.wording import ConnectorWording, connector_wording
from sitectl.state import ChargerState, SessionPlan, SiteState

__all__ = [
    "PRECISION",
    "AlarmView",
    "CacheView",
    "CachedImageView",
    "ChargerDetail",
    "ChargerView",
    "CircuitView",
    "ConnectorView",
    "ControlView",
    "ErrorView",
    "FirmwareEventView",
    "FirmwareView",
    "FrameView",
    "HistoryView",
    "LimitView",
    "PhaseTestView",
    "PlanStepView",
    "PlanView",
    "RolloutChargerView",
    "RolloutView",
    "SecurityEventView",
    "SessionPlanView",
    "SessionRecord",
    "SessionView",
    "SharedView",
    "SiteView",
    "charger_view",
    "plan_view",
    "session_plan_view",
    "site_view",
]


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
    last_solve_ms: Milliseconds | None
    method: str | None = Field(description="lp or fallback.")
    status: str | None
    fallback_count: int
    consecutive_fallbacks: int
    fallback_reason: str | None = Field(
        None, description="While the fallback answers: why (time_limit, infeasible, solver_error)."
    )
    fallback_shortfall_pct: float | None = Field(
        None, description="How much less current the fallback dispatches than the last optimum (%)."
    )
    sessions_charging: int
    sessions_paused: int


class SiteView(BaseModel):
    """The depot: connection, circuits, control health."""

    id: str
    name: str | None
    limit_kw: Kilowatts
    power_kw: Kilowatts | None = Field(description="Active power at the grid connection meter.")
    circuits: list[CircuitView]
    control: ControlView
    alarms: int = Field(description="Alarms currently raised.")
    grid_limit_kw: Kilowatts = Field(
        description="The grid connection's kW limit in force: the configured one or a lower "
        "hard window's (per-phase windows are in `limits`)."
    )
    limits: list[LimitWindowView] = Field(
        default_factory=list,
        description="Every limit window in force (operator overrides, grid operator signals), "
        "with its source and expiry; the configured ratings are in `circuits`.",
    )
    limits_announced: list[LimitWindowView] = Field(
        default_factory=list,
        description="Windows that start within the planning horizon: the plan already makes "
        "room for them (vehicles are charged before).",
    )
    limit_sources: list[LimitSourceView] = Field(
        default_factory=list, description="Every limit source, with its heartbeat state."
    )


class SessionView(BaseModel):
    """A charging session in progress."""

    session_id: str
    connector_id: int
    transaction_id: str | None
    started_at: datetime
    energy_kwh: KilowattHours
    energy_wanted_kwh: KilowattHours | None = Field(
        description="As stated (vehicle or command); the need planned with is in `plan`."
    )
    departure: datetime | None = Field(
        description="As stated (vehicle or command); the departure planned with is in `plan`."
    )
    priority: int


class SharedView(BaseModel):
    """Another session drawing through the same limit."""

    session: str = Field(description='Its "charger/connector".')
    current_a: Amps | None = Field(description="What it was given this cycle.")


class LimitView(BaseModel):
    """One reason a session gets less than the vehicle and the charger could take."""

    kind: str = Field(
        description="circuit (a circuit or the grid, per phase), charger (a charger's own "
        "maximum shared by its connectors), site_kw / kw (a kW limit), override (an operator "
        "override lowers that node), grid_limit (a grid operator's window lowers it: OpenADR, "
        "§14a...), soft_limit (held at a soft limit no departure needs exceeded), fixed_load "
        "(a neighbour sitectl cannot steer, budgeted at its maximum or what it holds), "
        "meter_failed (a circuit on its fail-safe budget), "
        "priority (sessions of higher priority share the limit), min_current (paused: less "
        "than its minimum left), tariff (deferred to a cheaper step), deferred (planned "
        "later), peak (demand charge), ev_cap (learnt vehicle cap), vehicle_max, csms (the "
        "CSMS's profile), applied (the charger applies less), pause_dwell, need, blocked, "
        "departed, unexplained."
    )
    node: str | None = Field(
        None, description="The circuit, 'grid', or the charger id (charger, ev_cap, csms...)."
    )
    phase: str | None = Field(
        None, description="L1, L2 or L3 where the limit is per phase: the tightest one."
    )
    phases: list[str] = Field(
        default_factory=list, description="Every phase of the session that is full there."
    )
    unit: str | None = Field(None, description="A (per phase) or kW: of limit, planned, headroom.")
    limit: Amps | None = Field(None, description="The limit in force on this cycle.")
    measured: Amps | None = Field(None, description="Measured current there, where trusted.")
    planned: Amps | None = Field(
        None, description="Planned on step 0: non-EV and fixed loads plus every vehicle."
    )
    headroom: Amps | None = Field(None, description="limit - planned (about 0 when it holds).")
    shared_with: list[SharedView] = Field(
        default_factory=list, description="Other sessions drawing through it (largest first)."
    )
    sessions: list[str] = Field(default_factory=list, description="priority: those sessions.")
    dual: float | None = Field(
        None,
        description="The LP's step-0 dual of the limit (currency per A or kW more), or for "
        "tariff/deferred the reduced cost of its step-0 current; null for the fallback.",
    )
    source: str | None = Field(
        None,
        description="When a limit window sets the limit (circuit, kw, override, grid_limit, "
        "soft_limit...): its source, e.g. operator:http, operator:mqtt, openadr:<program>.",
    )
    reason: str | None = Field(None, description="The window's reason, in its source's words.")
    hard: bool | None = Field(None, description="Whether the window is hard (or soft).")
    until: datetime | None = Field(None, description="When the window expires (null: open).")
    configured: Amps | None = Field(
        None, description="override, grid_limit: the configured limit (A, or kW for kW)."
    )
    charger: str | None = Field(None, description="fixed_load: the neighbour.")
    budget_a: Amps | None = Field(None, description="fixed_load, meter_failed: the budget (A).")
    at: datetime | None = Field(None, description="tariff/deferred: when the plan charges it.")
    price_now: float | None = None
    price_then: float | None = None
    connector_max: Amps | None = Field(None, description="What the connector could take (A).")
    text: str = Field(description="The reason in words, with its numbers.")
    short: str = Field(description="The same without numbers that move every cycle (MQTT).")


class PlanView(BaseModel):
    """What the control loop assumed and gave for a connector in its last cycle."""

    departure: datetime = Field(description="The departure it planned for.")
    departure_source: str = Field(
        description="Where that time came from: vehicle, command (MQTT or this API), fleet "
        "(the fleet file) or default (control.default_departure)."
    )
    need_kwh: KilowattHours | None = Field(description="The total energy need it assumed.")
    need_source: str = Field(
        description="vehicle, command, fleet, default or unknown (no session yet)."
    )
    capped: bool = Field(
        description="True: a stated need bounds the energy. False: the need only guides the "
        "plan and the vehicle charges until it stops drawing."
    )
    dispatched_a: Amps = Field(description="The current it was given (A per phase).")
    plan_status: str | None = Field(
        None,
        description="What its plan predicts: on_time, short, need_unknown, beyond_horizon "
        "(it leaves after the plan ends), held (paused for its minimum pause this cycle) or "
        "no_plan (the fallback answered).",
    )
    ready_at: datetime | None = Field(
        None,
        description="When the plan reaches its need (after the departure: late); null for an "
        "unknown need.",
    )
    shortfall_kwh: KilowattHours | None = Field(
        None, description="Need less the energy planned to the departure; null if unknown."
    )
    late_min: float | None = Field(None, description="Minutes more it would need (see plan).")
    planned_kwh: KilowattHours | None = Field(
        None, description="Energy planned to the departure (or the end of the plan)."
    )
    limited_by: list[LimitView] = Field(
        default_factory=list,
        description="Why it gets less than the vehicle and the charger could take (step 0); "
        "empty when it gets that.",
    )


class PlanStepView(BaseModel):
    """One step of a session's plan."""

    start: datetime
    duration_s: float
    current_a: Amps = Field(description="Mean planned current per phase over the step.")
    power_kw: Kilowatts = Field(
        description="The same as power at the supply (current · phases · voltage); for a DC "
        "charger its AC input."
    )


class SessionPlanView(PlanView):
    """A session's plan from the control loop's last cycle, step by step, and its prediction."""

    session_id: str | None = Field(description="Null for a connector without a known session.")
    charger: str
    connector: int
    planned_at: datetime | None = Field(description="The cycle it was made in.")
    reason: str | None = Field(description="The prediction in words.")
    delivered_kwh: KilowattHours = Field(description="Delivered by the time of the cycle.")
    remaining_kwh: KilowattHours | None = Field(
        description="The stated need less what was delivered; null when no need is stated."
    )
    late_rate: str | None = Field(
        description="What late_min assumes: planned (its rate on its last planned step) or "
        "maximum (the plan gives it nothing there: its maximum current)."
    )
    phases: int | None = Field(description="Phases it draws (the kW conversion).")
    steps: list[PlanStepView] = Field(description="Step 0 starts at planned_at.")


class ConnectorView(BaseModel):
    """One connector (OCPP 2.0.1: EVSE)."""

    connector_id: int
    status: str = Field(
        description="As the charger reported it: 1.6 ChargePointStatus or 2.0.1 ConnectorStatus."
    )
    state: ConnectorWording = Field(
        description="The same words for the same situation in 1.6 and 2.0.1 (a 2.0.1 "
        "Occupied is told apart by the session and fresh measurements)."
    )
    state_detail: str | None = Field(
        None, description="Where known: who paused it, why it waits (e.g. 'by the vehicle')."
    )
    error_code: str | None
    current_a: tuple[Amps | None, Amps | None, Amps | None] | None
    power_kw: Kilowatts | None
    soc_percent: Percent | None
    measured_at: datetime | None
    session: SessionView | None
    plan: PlanView | None = Field(
        None, description="The control loop's last cycle for it; null before one or when idle."
    )


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
    limit_a: Amps | None = Field(description="Dynamic limit in force (A per phase).")
    compliance: str = Field(description="ok, noncompliant or uncontrollable.")
    firmware_update: str | None = Field(
        None, description="Its step in a local rollout in flight: downloading or installing."
    )
    last_seen: datetime | None
    connectors: list[ConnectorView]


class FrameView(BaseModel):
    """One OCPP frame on a charger's sockets."""

    at: datetime
    socket: str = Field(description="charger or csms.")
    direction: str = Field(description="in (received by sitectl) or out (sent).")
    text: str


class FirmwareEventView(BaseModel):
    """A firmware status from the charger, or an update request it was sent and its answer."""

    at: datetime
    action: str
    status: str | None
    request_id: int | None
    origin: str | None = Field(description="For update requests: csms or sitectl.")
    location: str | None = Field(description="For update requests: as the charger got it.")


class SecurityEventView(BaseModel):
    """A SecurityEventNotification from the charger (forwarded to the CSMS too)."""

    at: datetime
    type: str | None
    timestamp: str | None = Field(description="The charger's own time, as sent.")
    tech_info: str | None


class ChargerDetail(ChargerView):
    """A charger with its latest frames (for commissioning) and firmware traffic."""

    recent_frames: list[FrameView]
    capabilities: dict[str, Any] = Field(
        default_factory=dict,
        description="What it declared when probed (1.6 GetConfiguration, 2.0.1 GetVariables): "
        "values, unknown keys, actions answered NotImplemented/NotSupported; empty before.",
    )
    quirks: dict[str, Any] = Field(
        default_factory=dict,
        description="The quirks sitectl works with: its quirk file(s) narrowed by the probe.",
    )
    applied: dict[str, Any] = Field(
        default_factory=dict,
        description="Whether it applies sitectl's limit: the last check (GetCompositeSchedule "
        "or Current.Offered: at, source, sent_a, applied_a, verdict ok/above/below/unanswered/"
        "unsupported), the limit it is budgeted or planned at when it differs, and "
        "single_level (its limits go out as one profile at one stack level); empty before.",
    )
    step_response: dict[str, Any] = Field(
        default_factory=dict,
        description="How fast it follows a lower limit, measured on sitectl's own decreases: "
        "steps timed, ramp_down_s_at_least (median lower bound; held this long when longer "
        "than control.ramp_down_s) and ramp_down_s_at_most (median upper bound, coarse: "
        "reports come every few seconds); empty before the first step.",
    )
    firmware_events: list[FirmwareEventView] = Field(default_factory=list)
    security_events: list[SecurityEventView] = Field(default_factory=list)


class CachedImageView(BaseModel):
    """A verified firmware image in the local cache."""

    sha256: str
    md5: str
    size_bytes: int
    source_url: str = Field(description="Where it was first downloaded from (no credentials).")
    pinned: bool = Field(description="A rollout or publication needs it: never evicted.")


class CacheView(BaseModel):
    """The firmware image cache."""

    used_bytes: int
    max_bytes: int
    downloading: bool
    images: list[CachedImageView]


class RolloutChargerView(BaseModel):
    """One charger of a rollout."""

    charger: str
    state: str = Field(
        description="queued, downloading, installing, installed, failed, skipped or canceled."
    )
    canary: bool
    charger_status: str | None = Field(description="The charger's last firmware status.")
    detail: str | None
    request_id: int | None
    started_at: datetime | None
    updated_at: datetime


class RolloutView(BaseModel):
    """A local firmware rollout (the per-charger list only for one rollout)."""

    id: int
    url: str
    md5: str | None
    sha256: str | None
    targets: Any
    state: str = Field(description="caching, running, halted, stopped, done or failed.")
    reason: str | None
    created_at: datetime
    updated_at: datetime
    signed: bool
    counts: dict[str, int]
    chargers: list[RolloutChargerView] | None = None


class FirmwareView(BaseModel):
    """The firmware cache and the local rollouts, newest first."""

    enabled: bool = Field(description="False without firmware or local HTTP configured.")
    base_url: str | None = Field(description="Where chargers fetch images from.")
    cache: CacheView | None
    rollouts: list[RolloutView]


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
    energy_wh: WattHours


class HistoryView(BaseModel):
    """The grid connection over the last hour, one point per sample."""

    at: list[datetime]
    power_kw: list[Kilowatts | None]
    limit_kw: list[Kilowatts] = Field(
        description="The grid kW limit in force at each sample: configured, or a lower hard "
        "window's (`SiteView.grid_limit_kw`)."
    )


class PhaseTestView(BaseModel):
    """An on-demand phase test of one charger (`sitectl.control.phase_test`)."""

    charger: str
    state: Literal[
        "none",
        "running",
        "matches",
        "mismatch",
        "undecidable",
        "no_session",
        "not_charging",
        "offline",
        "no_meter",
        "not_steered",
    ] = Field(description="'none': no test since sitectl started; 'running'; or the answer.")
    done: bool
    text: str = Field(description="What it found, or why it cannot tell, in words.")
    meter: str | None = Field(None, description="The metered circuit that judges the steps.")
    configured: str | None = Field(None, description="The configured phase_rotation.")
    observed: dict[str, str] = Field(
        default_factory=dict, description="Charger phase -> site phase, as the meter saw it."
    )
    stage: Literal["base", "low", "high"] | None = None
    steps: int = 0
    votes: int = Field(0, description="Steps that were clean evidence.")
    requested_at: datetime | None = None
    finished_at: datetime | None = None
    timeout_s: float | None = None


class ErrorView(BaseModel):
    """A refused request: what is wrong and, where it is one field, which."""

    error: str
    field: str | None = None


def grid_limit_kw(state: SiteState, config: Config, now: datetime) -> float:
    """The grid connection's kW limit in force: configured, or a lower hard window's."""
    kw = [
        w.limit_kw
        for w in state.limits.in_force(now)
        if w.node == GRID and w.hard and w.limit_kw is not None
    ]
    return min([config.site.limit_kw, *kw])


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
    now = state.clock()
    ahead_s = sum(config.control.step_durations_s())
    in_force, announced = limit_windows(state.limits, now, ahead_s)
    return SiteView(
        id=config.site.id,
        name=config.site.name,
        limit_kw=config.site.limit_kw,
        grid_limit_kw=grid_limit_kw(state, config, now),
        limits=in_force,
        limits_announced=announced,
        limit_sources=limit_sources(state.limits, now),
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
            fallback_reason=control.fallback_reason,
            fallback_shortfall_pct=(
                None
                if control.fallback_shortfall_pct is None
                else round(control.fallback_shortfall_pct, 1)
            ),
            sessions_charging=control.sessions_charging,
            sessions_paused=control.sessions_paused,
        ),
        alarms=len(state.alarms),
    )


def charger_view(
    charger: ChargerState,
    config: Config,
    detail: bool = False,
    *,
    state: SiteState,
    firmware_update: str | None = None,
    firmware_events: Sequence[Any] = (),
    security_events: Sequence[Any] = (),
    raw_frames: Sequence[tuple[datetime, str, str, str]] | None = None,
) -> ChargerView:
    """One charger now; with `detail`, its latest frames and firmware traffic (the tracker's
    `FirmwareEvent` and `SecurityEvent` records). `state` gives the clock and the plans;
    `raw_frames` replaces the redacted frames (for the token's holder only)."""
    configured = config.charger(charger.charger_id)
    now_mono = state.monotonic()
    connectors = []
    for connector in charger.connectors.values():
        session = connector.session
        plan = state.control.sessions.get(f"{charger.charger_id}/{connector.connector_id}")
        wording, detail_text = connector_wording(
            connector, now_mono, config.control.ev_measurement_max_age_s, charger.limit_a
        )
        connectors.append(
            ConnectorView(
                connector_id=connector.connector_id,
                status=connector.status,
                state=wording,
                state_detail=detail_text,
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
                plan=None if plan is None else plan_view(plan),
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
        firmware_update=firmware_update,
        last_seen=charger.last_seen,
        connectors=connectors,
    )
    if not detail:
        return ChargerView(**fields)
    # Firmware URLs carry a per-charger download token: not for the API's readers.
    frames = [
        FrameView(at=at, socket=side, direction=direction, text=hide_tokens(text))
        for at, side, direction, text in charger.recent_frames
    ]
    if raw_frames is not None:
        frames = [
            FrameView(at=at, socket=side, direction=direction, text=text)
            for at, side, direction, text in raw_frames
        ]
    events = [
        FirmwareEventView(
            at=e.at,
            action=e.action,
            status=e.status,
            request_id=e.request_id,
            origin=e.origin,
            location=None if e.location is None else hide_tokens(safe_url(e.location)),
        )
        for e in firmware_events
    ]
    from sitectl.quirks import effective_quirks

    return ChargerDetail(
        **fields,
        recent_frames=frames,
        capabilities=charger.capabilities,
        quirks=effective_quirks(charger, configured.quirks if configured else None).as_dict(),
        applied=charger.applied,
        step_response=charger.step_response,
        firmware_events=events,
        security_events=[
            SecurityEventView.model_validate(e, from_attributes=True) for e in security_events
        ],
    )


def _plan_fields(plan: SessionPlan) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "departure": plan.departure,
        "departure_source": plan.departure_source,
        "need_kwh": plan.need_kwh,
        "need_source": plan.need_source,
        "capped": plan.capped,
        "dispatched_a": plan.dispatched_a,
        "limited_by": [LimitView.model_validate(item) for item in plan.limited_by],
    }
    found = plan.forecast
    if found is not None:
        fields.update(
            plan_status=found.status,
            ready_at=found.ready_at,
            shortfall_kwh=found.shortfall_kwh,
            late_min=None if found.late_min is None else round(found.late_min, 1),
            planned_kwh=found.planned_kwh,
        )
    return fields


def plan_view(plan: SessionPlan) -> PlanView:
    """A connector's plan in brief (in the charger views)."""
    return PlanView(**_plan_fields(plan))


def session_plan_view(plan: SessionPlan, key: str, session_id: str | None) -> SessionPlanView:
    """A session's whole plan; `key` is its "charger/connector"."""
    charger, _, connector = key.rpartition("/")
    found = plan.forecast
    return SessionPlanView(
        **_plan_fields(plan),
        session_id=session_id,
        charger=charger,
        connector=int(connector),
        planned_at=plan.planned_at,
        reason=found.reason if found else None,
        delivered_kwh=plan.delivered_kwh,
        remaining_kwh=found.remaining_kwh if found else None,
        late_rate=found.late_rate if found else None,
        phases=found.phases if found else None,
        steps=[
            PlanStepView(
                start=step.start,
                duration_s=step.duration_s,
                current_a=step.current_a,
                power_kw=step.power_kw,
            )
            for step in (found.steps if found else ())
        ],
    )
