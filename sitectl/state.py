"""SiteState: the one in-memory picture of the depot.

Components write their own facts here (the OCPP router: chargers, connectors, sessions; the
devices: readings; the control loop: limits in force and alarms) and read the rest. Everything
is plain data. A component that must react to a change subscribes with a callback; callbacks
run synchronously in the writer's task and must be quick (set an event, put in a queue).

Time inside is UTC (aware datetimes from the injected clock).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sitectl.config import Config
from sitectl.limits import LimitBoard, LimitOverride, OperatorOverrides
from sitectl.prices import PriceBoard
from sitectl.security_events import SecurityEventLog

__all__ = [
    "SOLVE_BUCKETS_S",
    "Alarm",
    "Change",
    "ChargerState",
    "CircuitStatus",
    "ConnectorState",
    "ControlStatus",
    "CsmsProfile",
    "LimitOverride",
    "PlanForecast",
    "PlanStep",
    "SessionState",
    "Severity",
    "SiteState",
]

log = logging.getLogger(__name__)


class Severity(enum.StrEnum):
    """How urgent an alarm is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Alarm:
    """A condition an operator should know about, raised until it is cleared."""

    code: str  # e.g. "meter_stale", "overload", "charger_noncompliant"
    subject: str  # what it is about: a device, a circuit, a charger id, or "site"
    severity: Severity
    text: str
    raised_at: datetime


@dataclass(frozen=True, slots=True)
class Change:
    """What changed in the state; subscribers read the details from the state itself."""

    kind: str  # e.g. "charger", "connector", "session_started", "reading", "alarm"
    subject: str


@dataclass(slots=True)
class SessionState:
    """A charging session on one connector, as sitectl observes it."""

    session_id: str
    connector_id: int
    started_at: datetime
    transaction_id: str | None = None
    id_tag_hash: str | None = None  # never the tag in clear outside the journal
    meter_start_wh: float | None = None
    energy_wh: float = 0.0
    energy_wanted_kwh: float | None = None
    #: Session energy (kWh, like ``energy_wanted_kwh``) at which its minimum target is reached
    #: (`control/fleet.py`); the LP meets it first (issue #19.1). ``None``: no minimum.
    energy_min_kwh: float | None = None
    #: Power (start, end, kW) its depot system asked to reserve for preconditioning before
    #: departure (VDV 463; `control/fleet.py`): a load on its charger in the plan.
    preconditioning: tuple[tuple[datetime, datetime, float], ...] = ()
    departure: datetime | None = None
    priority: int = 1
    ev_min_current_a: float | None = None  # from 2.0.1 charging needs
    ev_max_current_a: float | None = None
    charger_id: str = ""
    ended_at: datetime | None = None
    #: Where the energy need came from: "vehicle" (2.0.1 charging needs) or "command" (MQTT or
    #: REST); ``None`` while unknown (then the vehicle charges until it stops drawing).
    need_source: str | None = None
    departure_source: str | None = None  # "vehicle" or "command"; None: fleet or default
    #: How sitectl learnt of it: "observed" (its start), "restored" (from the store after a
    #: restart, confirmed by the charger) or "adopted" (a transaction seen mid-way, start unknown).
    origin: str = "observed"
    #: The fleet vehicle it is bound to (by id tag, VDV 463 or command; `control/fleet.py`),
    #: and the priority its depot system asked for (``None``: the vehicle's configured one).
    vehicle_id: str | None = None
    vehicle_priority: int | None = None


@dataclass(frozen=True, slots=True)
class CsmsProfile:
    """A charging profile the CSMS installed on a charger (an upper bound for sitectl)."""

    profile_id: int
    connector_id: int  # 1.6 connectorId / 2.0.1 evseId; 0 = the whole charger
    stack_level: int
    purpose: str
    profile: dict[str, Any]  # as sent, camelCase
    received_at: datetime


@dataclass(slots=True)
class ConnectorState:
    """One connector (1.6) or EVSE (2.0.1) of a charger."""

    connector_id: int
    status: str = "Unknown"
    error_code: str | None = None
    session: SessionState | None = None
    # Measured per charger phase (L1, L2, L3 of the charger; the rotation maps them to the site).
    current_a: tuple[float | None, float | None, float | None] | None = None
    power_kw: float | None = None
    energy_register_wh: float | None = None
    soc_percent: float | None = None
    measured_at: datetime | None = None  # wall clock of the latest sample (for display)
    limit_a: float | None = None  # commanded by sitectl and accepted
    # Freshness is judged on the monotonic clock, per quantity (an energy-only sample must not
    # make a 15-minute-old current look fresh; a wall-clock step must not either).
    current_mono: float | None = None
    #: A Current.Import without a phase: the current on every phase in use, as far as known.
    current_phaseless_a: float | None = None
    power_mono: float | None = None
    offered_a: float | None = None  # Current.Offered: what the charger offers the vehicle
    offered_mono: float | None = None
    voltage_v: float | None = None  # highest reported phase voltage
    #: Per charger phase, how many samples in a row reported it low while another phase drew
    #: (only a phase reported low over several samples is taken as unused).
    phase_low_samples: list[int] = field(default_factory=lambda: [0, 0, 0])


@dataclass(slots=True)
class ChargerState:
    """One charge point: its connections, what it said at boot, its connectors."""

    charger_id: str
    ocpp_version: str
    connected: bool = False
    upstream_connected: bool = False
    vendor: str | None = None
    model: str | None = None
    firmware_version: str | None = None
    boot_accepted: bool = False
    boot_interval_s: int | None = None
    firmware_status: str | None = None
    connectors: dict[int, ConnectorState] = field(default_factory=dict)
    csms_profiles: dict[int, CsmsProfile] = field(default_factory=dict)
    #: A TxProfile the CSMS sent with a remote start, until the transaction it starts
    #: begins (then a CsmsProfile bound to it): (connector or None, profile, received at).
    remote_start_profile: tuple[int | None, dict[str, Any], datetime] | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)  # sitectl.ocpp.probe's record
    #: The closed-loop check's last finding and mode (sitectl.control.applied), plain data.
    applied: dict[str, Any] = field(default_factory=dict)
    #: Its measured ramp-downs (sitectl.control.response): steps, bounds in s; plain data.
    step_response: dict[str, Any] = field(default_factory=dict)
    limit_a: float | None = None
    compliance: str = "ok"  # ok | noncompliant | uncontrollable
    last_seen: datetime | None = None
    #: Its timestamps minus sitectl's clock at receipt (s), latest last (see `clock_skew_s`).
    clock_offsets: deque[float] = field(default_factory=lambda: deque(maxlen=10))
    #: The latest frames on its two sockets, for commissioning: (time, "charger"/"csms",
    #: "in"/"out", text); credentials are redacted.
    recent_frames: deque[tuple[datetime, str, str, str]] = field(
        default_factory=lambda: deque(maxlen=50)
    )

    @property
    def clock_skew_s(self) -> float | None:
        """How far its clock is ahead of sitectl's (negative: behind); ``None`` until known.

        The largest recent offset: a message queued while offline (or slow on the network)
        only ever makes its timestamp look older, never newer.
        """
        return max(self.clock_offsets) if self.clock_offsets else None

    def connector(self, connector_id: int) -> ConnectorState:
        """The connector (or 2.0.1 EVSE) with this id, created if the charger has more."""
        found = self.connectors.get(connector_id)
        if found is None:
            found = self.connectors[connector_id] = ConnectorState(connector_id)
        return found


@dataclass(slots=True)
class CircuitStatus:
    """One circuit as the control loop last saw it (per phase, A)."""

    limit_a: tuple[float, float, float]
    measured_a: tuple[float, float, float] | None = None  # None: no trusted meter
    non_ev_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    planned_a: tuple[float, float, float] = (0.0, 0.0, 0.0)  # non-EV + EV budget, step 0
    meter_state: str = "none"  # none | measured | failed

    @property
    def headroom_a(self) -> tuple[float, float, float]:
        return (
            self.limit_a[0] - self.planned_a[0],
            self.limit_a[1] - self.planned_a[1],
            self.limit_a[2] - self.planned_a[2],
        )


class PlanStep(NamedTuple):
    """One step of a session's plan: when it starts, how long, what the LP planned.

    A named tuple, not a dataclass: every cycle makes one per step of every session's plan
    (30 000 at 1,000 chargers), and a tuple is made four times as fast.
    """

    start: datetime
    duration_s: float
    current_a: float  # mean planned current per phase over the step (A), floor included
    power_kw: float  # the same as power at the supply: current · phases · the LP's voltage


@dataclass(frozen=True, slots=True)
class PlanForecast:
    """What a session's plan predicts (`sitectl.control.plans.forecast`).

    ``status`` is one of ``on_time`` (the need is reached by the departure, ``ready_at``),
    ``short`` (it is not: ``shortfall_kwh`` at the departure, ``late_min`` more at
    ``late_rate``), ``need_unknown`` (no stated need: only ``planned_kwh``),
    ``beyond_horizon`` (the departure lies past the plan and the need is not reached within
    it), ``held`` (paused for its minimum pause: nothing planned this cycle) or ``no_plan``
    (the fallback answered: step 0 only). ``reason`` says it in words.
    """

    status: str
    reason: str
    phases: int
    steps: tuple[PlanStep, ...]
    planned_kwh: float  # energy planned to the departure (or the end of the plan)
    remaining_kwh: float | None  # stated need less what was delivered; None: unknown
    ready_at: datetime | None = None  # when the need is reached (after the departure: late)
    shortfall_kwh: float | None = None
    late_min: float | None = None
    late_rate: str | None = None  # planned (its rate on its last step) | maximum (its max_a)

    def summary(self) -> dict[str, Any]:
        """The few numbers the uplink carries, rounded so that they change only when the
        prediction does (a minute, 0.1 kWh; planned energy in whole kWh, as it falls while
        charging)."""
        ready = self.ready_at
        if ready is not None:
            ready = (ready + timedelta(seconds=30)).replace(second=0, microsecond=0)
        return {
            "plan_status": self.status,
            "ready_at": ready,
            "shortfall_kwh": None if self.shortfall_kwh is None else round(self.shortfall_kwh, 1),
            "late_min": None if self.late_min is None else round(self.late_min),
            "planned_kwh": round(self.planned_kwh),
        }


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """What the control loop assumed for one connector in its last cycle (API, dashboard)."""

    departure: datetime
    departure_source: str  # vehicle | command | fleet | default
    need_kwh: float | None  # stated or assumed total need
    need_source: str  # vehicle | command | fleet | default | unknown
    capped: bool  # True: a stated need bounds the energy; False: it charges until the EV stops
    dispatched_a: float  # the current it was given this cycle (A per phase)
    forecast: PlanForecast | None = None  # what its plan predicts (None before one is made)
    delivered_kwh: float = 0.0  # energy the session had delivered at the cycle
    planned_at: datetime | None = None  # the cycle's time
    #: Why it gets less than the vehicle and charger could take (`control.explain`): plain
    #: dicts with kind, node, text, short and the numbers behind them; empty when it does not.
    limited_by: tuple[dict[str, Any], ...] = ()


#: Upper bounds (s) of the solve-time histogram that /metrics exposes.
SOLVE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class ControlStatus:
    """The control loop's health, for the uplink, the API and the dashboard."""

    cycles: int = 0
    last_cycle_at: datetime | None = None
    last_solve_s: float | None = None
    method: str | None = None  # lp | fallback
    status: str | None = None  # the optimizer's status
    fallback_count: int = 0
    consecutive_fallbacks: int = 0
    #: While the fallback answers: why ("time_limit: …", "infeasible", "solver_error: …"), and
    #: how much less current it dispatches than the last optimum did (%, None if unknown).
    fallback_reason: str | None = None
    fallback_shortfall_pct: float | None = None
    last_lp_dispatch_a: float | None = None  # the last optimum's total dispatch (A per phase)
    sessions_charging: int = 0
    sessions_paused: int = 0
    circuits: dict[str, CircuitStatus] = field(default_factory=dict)
    #: "charger/connector" -> what the last cycle assumed and gave (sessions and floors).
    sessions: dict[str, SessionPlan] = field(default_factory=dict)
    #: Solve times: their sum and a count per bucket of `SOLVE_BUCKETS_S`.
    solve_s_total: float = 0.0
    solve_buckets: list[int] = field(default_factory=lambda: [0] * len(SOLVE_BUCKETS_S))
    #: Limit interventions seen (`sitectl.control.limit_watch`), by (action, source).
    limit_events: dict[tuple[str, str], int] = field(default_factory=dict)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SiteState:
    """The in-memory picture of the depot, with change notification.

    Args:
        config: the validated configuration; every configured charger gets an entry.
        clock: returns the current UTC time (injected for tests).
        monotonic: seconds that never step (freshness and expiries; injected for tests).
    """

    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.monotonic = monotonic
        self.started_at = clock()
        self.chargers: dict[str, ChargerState] = {
            c.id: ChargerState(
                charger_id=c.id,
                ocpp_version=c.ocpp_version,
                connectors={n: ConnectorState(n) for n in range(1, c.connectors + 1)},
            )
            for c in config.chargers
        }
        self.readings: dict[str, Any] = {}  # device name -> devices.meter.Reading
        self.alarms: dict[tuple[str, str], Alarm] = {}
        self.control = ControlStatus()
        #: Sessions that ended, newest last (the uplink publishes them; bounded).
        self.ended_sessions: deque[SessionState] = deque(maxlen=1000)
        #: Every time-windowed limit source (operator overrides, OpenADR, §14a, ...):
        #: `sitectl.limits.LimitBoard`. A publish is announced (``limits``), so the control
        #: loop plans with it at once.
        self.limits = LimitBoard(
            nodes=config.circuit_limits_a(), on_change=lambda source: self.notify("limits", source)
        )
        #: Operator limit overrides by node, published to `limits` as ``operator:<transport>``.
        self.overrides = OperatorOverrides(self.limits, clock)
        #: Limit interventions (a window starting, changing, ending), newest last, for the
        #: uplink's alarms/events stream (`sitectl.control.limit_watch`; bounded).
        self.limit_events: deque[Any] = deque(maxlen=1000)
        #: sitectl's own security events (failed logins, bad firmware): kept, to CSMS and MQTT.
        self.security_events = SecurityEventLog(clock)
        #: External energy prices (OpenADR PRICE events): `sitectl.prices.PriceBoard`.
        self.prices = PriceBoard()
        #: Sessions that were active when sitectl last stopped, by (charger, connector), until
        #: the charger confirms or ends them (`sitectl.sessions.ActiveSessions`).
        self.restored_sessions: dict[tuple[str, int], SessionState] = {}
        self._subscribers: list[Callable[[Change], None]] = []

    # Subscriptions.

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call `callback` on every change; returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def notify(self, kind: str, subject: str) -> None:
        """Tell subscribers that `subject` changed. A failing subscriber is logged, not fatal."""
        change = Change(kind, subject)
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.exception("state subscriber %r failed on %s", callback, change)

    # Writers.

    def set_reading(self, device: str, reading: Any) -> None:
        """Store the latest reading of a device."""
        self.readings[device] = reading
        self.notify("reading", device)

    def raise_alarm(self, code: str, subject: str, severity: Severity, text: str) -> bool:
        """Raise an alarm; returns whether it is new (an already-raised alarm is kept)."""
        key = (code, subject)
        if key in self.alarms:
            return False
        self.alarms[key] = Alarm(code, subject, severity, text, self.clock())
        log.warning("alarm raised: %s %s: %s", code, subject, text)
        self.notify("alarm", f"{code}:{subject}")
        return True

    def clear_alarm(self, code: str, subject: str) -> bool:
        """Clear an alarm; returns whether it was raised."""
        if self.alarms.pop((code, subject), None) is None:
            return False
        log.info("alarm cleared: %s %s", code, subject)
        self.notify("alarm", f"{code}:{subject}")
        return True
