"""What the cloud sees of the depot: topics and payloads built from SiteState.

Pure functions and small value objects; no I/O, no clock (``now`` is passed in), no asyncio.

Rules:

- Every payload is one JSON object with ``ts``, the UTC time it was composed (ISO 8601 with
  ``Z``, milliseconds). ``seq`` is *not* set here: the outbox numbers a message when it first
  hands it to the broker connection and puts ``"seq"`` in front (`with_seq`), so that a message
  the bound dropped or the outage thinning skipped leaves no gap (outbox.py).
- Units are in the names (``limit_a``, ``power_kw``, ``energy_kwh``); per-phase values are
  ``[L1, L2, L3]``; a value sitectl does not know is ``null``, never ``0``.
- Id tags never appear in clear: sessions carry ``id_tag_hash`` only (`hash_id_tag`).
- Each payload has a JSON Schema, ``schemas/<kind>.json``; the tests validate every builder's
  output against it, so change both together.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sitectl.config import Config
from sitectl.limits import GridLimit, LimitEvent
from sitectl.state import Alarm, ChargerState, SessionPlan, SessionState, SiteState

__all__ = [
    "EnergyToday",
    "Kind",
    "Message",
    "Topics",
    "alarm_body",
    "charger_body",
    "comparable",
    "encode",
    "iso",
    "limit_event_body",
    "security_body",
    "session_body",
    "status_body",
    "summary_body",
    "topic_segment",
    "window_body",
    "with_seq",
]


class Kind(enum.StrEnum):
    """What a message is; the outbox's drop policy and the schemas go by it."""

    STATUS = "status"
    SUMMARY = "summary"
    CHARGER = "charger"
    SESSION = "session"
    ALARM = "alarm"
    UTILIZATION = "utilization"  # the previous day's, once after local midnight (issue #21)
    SECURITY = "security"  # sitectl's own security events, folded per window (issue #22.10)


def topic_segment(text: str) -> str:
    """`text` as one topic level: ``%``, ``+``, ``#`` and ``/`` percent-encoded.

    Charger identities may contain ``+`` or ``#`` (OCPP allows them, MQTT topics do not), and a
    ``/`` would add a level.
    """
    return (
        text.replace("%", "%25")
        .replace("+", "%2B")
        .replace("#", "%23")
        .replace("/", "%2F")
        .replace("\0", "%00")
    )


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic tree under one prefix (``Config.topic_prefix``, default ``sitectl/<site id>``)."""

    prefix: str

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def summary(self) -> str:
        return f"{self.prefix}/summary"

    @property
    def sessions(self) -> str:
        return f"{self.prefix}/sessions"

    @property
    def alarms(self) -> str:
        return f"{self.prefix}/alarms"

    @property
    def utilization(self) -> str:
        return f"{self.prefix}/utilization"

    @property
    def security(self) -> str:
        return f"{self.prefix}/security"

    def charger(self, charger_id: str) -> str:
        return f"{self.prefix}/chargers/{topic_segment(charger_id)}"

    @property
    def commands(self) -> str:
        """The subscription filter for commands."""
        return f"{self.prefix}/cmd/+"

    def command_name(self, topic: str) -> str | None:
        """The command name if `topic` is ``<prefix>/cmd/<name>`` (one level), else ``None``."""
        head = f"{self.prefix}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        if not name or "/" in name:
            return None
        return name


@dataclass(frozen=True, slots=True)
class Message:
    """One message for the outbox: where it goes and what it says (without ``seq``).

    Attributes:
        kind: decides the drop policy (summaries go first) and the schema.
        topic: the full topic.
        body: the payload object; `encode` turns it into compact JSON.
        retain: whether the broker keeps it as the topic's last value.
        key: what a newer message of the same kind supersedes (the charger id).
    """

    kind: Kind
    topic: str
    body: dict[str, Any] = field(hash=False)
    retain: bool = False
    key: str | None = None


def encode(body: Mapping[str, Any]) -> str:
    """Compact JSON text of a payload object.

    Raises:
        ValueError: for NaN or infinity (builders map those to ``null`` first).
    """
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def with_seq(text: str, seq: int) -> bytes:
    """The wire payload: `text` (a JSON object, as `encode` made it) with ``seq`` put first."""
    if text == "{}":
        return f'{{"seq":{seq}}}'.encode()
    return f'{{"seq":{seq},{text[1:]}'.encode()


def iso(moment: datetime | None) -> str | None:
    """UTC ISO 8601 with ``Z`` and milliseconds; ``None`` stays ``None``."""
    if moment is None:
        return None
    if moment.tzinfo is None:  # inside sitectl time is aware UTC; be safe with naive values
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _num(value: Any, digits: int = 3) -> float | None:
    """A finite number rounded for the wire, or ``None`` (NaN and infinity are not readings)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return round(number, digits)


def _phases(values: Iterable[Any] | None) -> list[float | None] | None:
    if values is None:
        return None
    out = [_num(v) for v in values]
    return out if len(out) == 3 else None


# ------------------------------------------------------------------------------------------------
# Status


def status_body(
    online: bool,
    version: str,
    started_at: datetime,
    now: datetime,
    reason: str | None = None,
    epoch: str | None = None,
) -> dict[str, Any]:
    """The retained ``…/status`` payload: the birth (``online``) or an ``offline``.

    Args:
        online: ``True`` for the birth message.
        version: sitectl's version.
        started_at: when this sitectl process started.
        now: composition time (for the Last Will: when the connection it guards was opened).
        reason: for ``offline``: ``shutdown`` (orderly stop) or ``connection lost`` (the Will).
        epoch: the store epoch (`Store.epoch`): changes when ``seq`` starts again.
    """
    body: dict[str, Any] = {
        "ts": iso(now),
        "status": "online" if online else "offline",
        "version": version,
        "started_at": iso(started_at),
    }
    if epoch is not None:
        body["epoch"] = epoch
    if reason is not None:
        body["reason"] = reason
    return body


# ------------------------------------------------------------------------------------------------
# Chargers


def _session_brief(session: SessionState) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "started_at": iso(session.started_at),
        "energy_kwh": _num(session.energy_wh / 1000),
        "id_tag_hash": session.id_tag_hash,
        "departure": iso(session.departure),
        "energy_wanted_kwh": _num(session.energy_wanted_kwh),
    }


def _plan_brief(plan: SessionPlan | None) -> dict[str, Any] | None:
    """What the last cycle's plan predicts for a connector, in a few rounded numbers (the
    steps are on the API: ``GET /api/sessions/{id}/plan``)."""
    if plan is None or plan.forecast is None:
        return None
    summary = plan.forecast.summary()
    return {
        "status": summary["plan_status"],
        "departure": iso(plan.departure),
        "ready_at": iso(summary["ready_at"]),
        "shortfall_kwh": _num(summary["shortfall_kwh"], 1),
        "late_min": summary["late_min"],
        "planned_kwh": summary["planned_kwh"],
    }


def _limited_brief(plan: SessionPlan | None) -> list[dict[str, Any]]:
    """Why the connector gets less than it could take: kinds, nodes and short texts only (the
    numbers are on the local API, ``GET /api/chargers/{id}``), so it changes with the reason."""
    if plan is None:
        return []
    return [
        {"kind": item["kind"], "node": item.get("node"), "text": item["short"]}
        for item in plan.limited_by
    ]


def charger_body(
    charger: ChargerState, now: datetime, plans: Mapping[str, SessionPlan] | None = None
) -> dict[str, Any]:
    """The retained ``…/chargers/<id>`` payload: connection, connectors, limit, draw, firmware.

    ``power_kw`` is the sum over connectors that report a finite power (``null`` if none does).
    ``last_seen`` is left out on purpose: it changes on every heartbeat, and the payload is
    published on change. `plans` (``SiteState.control.sessions``) adds each connector's plan
    in brief; its numbers are rounded so that they change when the prediction does.
    """
    plans = plans or {}
    connectors = []
    powers = []
    for number in sorted(charger.connectors):
        connector = charger.connectors[number]
        power = _num(connector.power_kw)
        if power is not None:
            powers.append(power)
        connectors.append(
            {
                "connector": number,
                "status": connector.status,
                "error_code": connector.error_code,
                "limit_a": _num(connector.limit_a),
                "current_a": _phases(connector.current_a),
                "power_kw": _num(connector.power_kw),
                "soc_percent": _num(connector.soc_percent, 1),
                "measured_at": iso(connector.measured_at),
                "session": _session_brief(connector.session) if connector.session else None,
                "plan": _plan_brief(plans.get(f"{charger.charger_id}/{number}")),
                "limited_by": _limited_brief(plans.get(f"{charger.charger_id}/{number}")),
            }
        )
    return {
        "ts": iso(now),
        "charger": charger.charger_id,
        "ocpp_version": charger.ocpp_version,
        "connected": charger.connected,
        "upstream_connected": charger.upstream_connected,
        "vendor": charger.vendor,
        "model": charger.model,
        "firmware_version": charger.firmware_version,
        "firmware_status": charger.firmware_status,
        "compliance": charger.compliance,
        "limit_a": _num(charger.limit_a),
        "power_kw": _num(sum(powers)) if powers else None,
        "connectors": connectors,
    }


def comparable(body: Mapping[str, Any]) -> dict[str, Any]:
    """A charger payload without what changes by itself (``ts``, ``measured_at``).

    The uplink publishes a charger's state when this differs from what it published last.
    """
    out = {k: v for k, v in body.items() if k != "ts"}
    out["connectors"] = [
        {k: v for k, v in c.items() if k != "measured_at"} for c in body.get("connectors", ())
    ]
    return out


# ------------------------------------------------------------------------------------------------
# Sessions and alarms


def session_body(session: SessionState, event: str, now: datetime) -> dict[str, Any]:
    """A ``…/sessions`` event: ``started`` or ``stopped``.

    Args:
        session: the session (for ``stopped``: as it ended, with ``ended_at``).
        event: ``started`` or ``stopped``.
        now: composition time.

    Raises:
        ValueError: for another event.
    """
    if event not in ("started", "stopped"):
        raise ValueError(f"unknown session event {event!r}")
    charger_id = session.charger_id or session.session_id.split("/", 1)[0]
    body: dict[str, Any] = {
        "ts": iso(now),
        "event": event,
        "session_id": session.session_id,
        "charger": charger_id,
        "connector": session.connector_id,
        "transaction_id": session.transaction_id,
        "id_tag_hash": session.id_tag_hash,
        "started_at": iso(session.started_at),
        "energy_kwh": _num(session.energy_wh / 1000),
    }
    if event == "stopped":
        ended = session.ended_at or now
        body["ended_at"] = iso(ended)
        body["duration_s"] = _num(max(0.0, (ended - session.started_at).total_seconds()), 1)
    return body


def alarm_body(alarm: Alarm, raised: bool, now: datetime) -> dict[str, Any]:
    """An ``…/alarms`` event: ``raised`` or ``cleared`` (the alarm as it was raised)."""
    body: dict[str, Any] = {
        "ts": iso(now),
        "event": "raised" if raised else "cleared",
        "code": alarm.code,
        "subject": alarm.subject,
        "severity": str(alarm.severity),
        "text": alarm.text,
        "raised_at": iso(alarm.raised_at),
    }
    if not raised:
        body["cleared_at"] = iso(now)
    return body


def security_body(
    type_: str,
    tech_info: str,
    critical: bool,
    count: int,
    first_at: datetime,
    last_at: datetime,
    now: datetime,
) -> dict[str, Any]:
    """A ``…/security`` event: `count` events of one type folded into one message (the
    first of a window alone, the rest of the window together); `tech_info` is the newest's."""
    return {
        "ts": iso(now),
        "event": "security_event",
        "type": type_,
        "tech_info": tech_info,
        "critical": critical,
        "count": count,
        "first_at": iso(first_at),
        "last_at": iso(last_at),
    }


#: The ``…/alarms`` events of limit interventions (issue #20.4), by `LimitEvent.action`.
LIMIT_EVENTS = {"started": "limit_started", "changed": "limit_changed", "ended": "limit_ended"}


def window_body(limit: GridLimit) -> dict[str, Any]:
    """A limit window on the wire."""
    return {
        "node": limit.node,
        "source": limit.source,
        "ref": limit.ref or None,
        "hard": limit.hard,
        "limit_a": _phases(limit.limit_a),
        "limit_kw": _num(limit.limit_kw),
        "start": iso(limit.start),
        "end": iso(limit.end),
        "reason": limit.reason,
    }


def limit_event_body(event: LimitEvent, now: datetime) -> dict[str, Any]:
    """A limit intervention on ``…/alarms``: ``limit_started``, ``limit_changed`` or
    ``limit_ended``, shaped like an alarm event (code ``grid_limit``, subject the node,
    severity info) with the window (``limit``) and, for a change, the one before."""
    body: dict[str, Any] = {
        "ts": iso(now),
        "event": LIMIT_EVENTS[event.action],
        "code": "grid_limit",
        "subject": event.limit.node,
        "severity": "info",
        "text": event.text(),
        "raised_at": iso(event.at),
        "limit": window_body(event.limit),
    }
    if event.previous is not None:
        body["previous"] = window_body(event.previous)
    return body


def _limits_view(state: SiteState, config: Config, now: datetime) -> dict[str, Any]:
    """The summary's ``limits``: the grid kW limit in force, every window in force, sources."""
    in_force = state.limits.in_force(now)
    kw = [w.limit_kw for w in in_force if w.node == "grid" and w.hard and w.limit_kw is not None]
    return {
        "grid_limit_kw": _num(min([config.site.limit_kw, *kw])),
        "in_force": [window_body(w) for w in in_force],
        "sources": [
            {
                "source": s.source,
                "published_at": iso(s.published_at),
                "valid_until": iso(s.valid_until),
                "silent": s.silent,
                "windows": len(s.limits),
            }
            for s in state.limits.status(now)
        ],
    }


# ------------------------------------------------------------------------------------------------
# Summary


class EnergyToday:
    """Energy delivered since local midnight, from the growth of every session's ``energy_wh``.

    Simple on purpose, and documented as such: every observation of a session adds what its
    ``energy_wh`` grew since the previous one. A session first seen by this process counts from
    zero if it started after the process did, else from the value at first sight (its energy
    before a restart was counted by the previous process, whose total is restored by the
    caller). Energy delivered while sitectl was down is not counted. At local midnight the total
    restarts from zero; growth between the last observation before midnight and the first after
    it (at most one summary period) counts for the new day.

    Args:
        zone: the site's time zone (``site.timezone``).
        process_start: when this process started.
        day: the local date of a restored total; `wh`: that total.
    """

    def __init__(
        self,
        zone: ZoneInfo,
        process_start: datetime,
        day: date | None = None,
        wh: float = 0.0,
    ) -> None:
        self.zone = zone
        self.process_start = process_start
        self.day = day
        self.wh = wh
        self._seen: dict[str, float] = {}

    def _roll(self, now: datetime) -> None:
        today = now.astimezone(self.zone).date()
        if today != self.day:
            self.day = today
            self.wh = 0.0

    def observe(self, session: SessionState, now: datetime) -> None:
        """Count a session's growth since its last observation."""
        self._roll(now)
        energy = session.energy_wh
        last = self._seen.get(session.session_id)
        if last is None:
            last = 0.0 if session.started_at >= self.process_start else energy
        if energy > last:
            self.wh += energy - last
        self._seen[session.session_id] = max(energy, last)

    def finish(self, session: SessionState, now: datetime) -> None:
        """Count a session's last growth and forget it."""
        self.observe(session, now)
        self._seen.pop(session.session_id, None)

    def kwh(self, now: datetime) -> float:
        """The total for the local day of `now`."""
        self._roll(now)
        return self.wh / 1000


def _reading_view(reading: Any) -> dict[str, Any]:
    quality = getattr(reading, "quality", None)
    return {
        "quality": getattr(quality, "value", quality if quality is None else str(quality)),
        "power_kw": _num(getattr(reading, "power_total_kw", None)),
        "current_a": _phases(getattr(reading, "current_a", None)),
        "measured_at": iso(getattr(reading, "ts", None)),
    }


def summary_body(
    state: SiteState,
    config: Config,
    now: datetime,
    energy_today_kwh: float,
    outbox: Mapping[str, int],
) -> dict[str, Any]:
    """The periodic ``…/summary`` payload.

    Args:
        state: the site state.
        config: the configuration (site meter, circuit ratings).
        now: composition time.
        energy_today_kwh: from `EnergyToday`.
        outbox: the outbox's counters (``Outbox.stats()``): queued, drops, thinning, refusals.
    """
    site_meter = config.site.meter
    reading = state.readings.get(site_meter) if site_meter else None
    grid: dict[str, Any] = {"meter": site_meter}
    if reading is not None:
        grid.update(_reading_view(reading))
    else:
        grid.update({"quality": None, "power_kw": None, "current_a": None, "measured_at": None})

    control = state.control
    circuits: dict[str, Any] = {}
    for node, rating in config.circuit_limits_a().items():
        status = control.circuits.get(node)
        override = state.overrides.get(node)
        circuits[node] = {
            "rating_a": _phases(rating),
            "limit_a": _phases(status.limit_a if status else rating),
            "override": (
                {"limit_a": _phases(override.limit_a), "expires_at": iso(override.expires_at)}
                if override and override.expires_at > now
                else None
            ),
            "measured_a": _phases(status.measured_a) if status else None,
            "non_ev_a": _phases(status.non_ev_a) if status else None,
            "planned_a": _phases(status.planned_a) if status else None,
            "headroom_a": _phases(status.headroom_a) if status else None,
            "meter_state": status.meter_state if status else None,
        }

    active = sum(
        1
        for charger in state.chargers.values()
        for connector in charger.connectors.values()
        if connector.session is not None
    )
    return {
        "ts": iso(now),
        "site": config.site.id,
        "grid": grid,
        "circuits": circuits,
        "sessions": {
            "active": active,
            "charging": control.sessions_charging,
            "paused": control.sessions_paused,
        },
        "energy_today_kwh": _num(energy_today_kwh),
        "chargers": {
            "configured": len(state.chargers),
            "connected": sum(1 for c in state.chargers.values() if c.connected),
            "upstream_connected": sum(1 for c in state.chargers.values() if c.upstream_connected),
        },
        "control": {
            "cycles": control.cycles,
            "last_cycle_at": iso(control.last_cycle_at),
            "last_solve_s": _num(control.last_solve_s, 4),
            "method": control.method,
            "status": control.status,
            "fallback": control.method == "fallback",
            "fallback_count": control.fallback_count,
            "consecutive_fallbacks": control.consecutive_fallbacks,
            "fallback_reason": control.fallback_reason,
            "fallback_shortfall_pct": _num(control.fallback_shortfall_pct, 1),
            "meters": {
                device: _reading_view(r)["quality"] for device, r in sorted(state.readings.items())
            },
        },
        "alarms": [
            {
                "code": a.code,
                "subject": a.subject,
                "severity": str(a.severity),
                "raised_at": iso(a.raised_at),
            }
            for a in sorted(state.alarms.values(), key=lambda a: (a.raised_at, a.code, a.subject))
        ],
        "outbox": dict(outbox),
        "limits": _limits_view(state, config, now),
    }
