"""The recorder: what the utilization report needs, from SiteState into the store, in batches.

Rules:

- **Off the control path.** State changes only append to a list (the callbacks run in the
  writer's task and must be quick); measurements are read from the state every
  ``sample_period_s`` (a loop over the connectors, no I/O); what was recorded is written every
  ``flush_period_s`` in one transaction from a worker thread, and the rollup and expiry run
  there too, an hour of data per transaction. A failed write is logged and its batch dropped:
  the report misses it, charging goes on.
- **Buckets.** A sample covers the time since the previous one (at most three sample periods:
  a longer gap, a stalled loop or a clock step, is not guessed at) and is split over the
  1-minute buckets it spans. A connector bucket is kept when the connector was in use or drew
  anything in it.
- **Measured, never assumed.** A connector's draw is its fresh current (highest phase) and
  power (``control.ev_measurement_max_age_s``); power from current where only current is
  reported. It is *drawing* from `DRAWING_A` or `DRAWING_KW`, the dashboard's thresholds.
  Energy is the growth of the charger's energy register where it reports one (a jump larger
  than the charger could deliver since the register last moved, or a step back, starts again
  from the new value), else power × time.
- **Circuits** (the grid connection and every circuit), while the control loop's view is
  fresh (its last cycle within three periods, at least 30 s): the lowest limit in force on a
  phase, the measured current of the highest phase where a meter is trusted, and *at its
  limit* when its headroom after the plan (`CircuitStatus.headroom_a`) is at most
  `AT_LIMIT_A` on a phase or a session is held by it (``limited_by`` names it).
- **Deferred energy** (an estimate): while a session is held by a node (a ``circuit``,
  ``kw`` or ``site_kw`` reason naming it), what it wanted above what it got counts for that
  node: ``(wanted − dispatched) · phases · U / 1000`` kW, wanted being the least of its
  connector's maximum and the vehicle's stated maximum, dispatched the current the cycle gave
  it; nothing while its fresh measured current is more than `TAKING_LESS_A` below what it
  got (the vehicle would not take more anyway). A session held by nested nodes counts for
  each of them.
- **Sessions.** The need and departure it was planned with (its `SessionPlan`, unless they
  were the controller's defaults; else what the session itself stated). Its energy by the
  departure is read at the first sample after it; a session that ends first is judged at its
  end. *Missed* when short by at least ``ALARM_MIN_KWH`` and ``ALARM_MIN_SHARE`` of its need
  (the thresholds of the ``departure_short`` alarm), *met* otherwise, *unknown* without a stated
  need and departure (or when the departure passed while sitectl was down and the end reached
  the need). Whether the plan raised ``departure_short`` during it is kept too.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sitectl.config import Config
from sitectl.control.draw import fresh
from sitectl.control.plans import ALARM_CODE, ALARM_MIN_KWH, ALARM_MIN_SHARE
from sitectl.http.wording import DRAWING_A, DRAWING_KW
from sitectl.state import Change, ChargerState, ConnectorState, SessionPlan, SessionState, SiteState
from sitectl.store import Store
from sitectl.utilization.store import (
    MINUTE_S,
    Batch,
    CircuitBucket,
    ConnectorBucket,
    SessionOutcome,
    StatusEvent,
    UtilizationStore,
)

__all__ = ["AT_LIMIT_A", "OCCUPIED", "TAKING_LESS_A", "UtilizationRecorder", "judge"]

log = logging.getLogger(__name__)

#: Statuses that mean a vehicle is plugged in (1.6 and 2.0.1).
OCCUPIED = frozenset(
    {"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Occupied"}
)
#: A node with at most this headroom (A, on a phase) after the plan is at its limit.
AT_LIMIT_A = 1.0
#: A vehicle drawing this much less than it was given would not take more (A).
TAKING_LESS_A = 2.0
#: How often the rollup and expiry run (s).
MAINTAIN_PERIOD_S = 3600.0
#: How long a stop waits for a write under way in its thread (s).
STOP_WAIT_S = 10.0
_REASON_KINDS = frozenset({"circuit", "kw", "site_kw"})


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def judge(
    need_kwh: float | None, departure_known: bool, by_departure_wh: float | None
) -> tuple[str, float | None]:
    """(outcome, shortfall in kWh) of a session: met, missed or unknown (see the module)."""
    if need_kwh is None or not departure_known or by_departure_wh is None:
        return "unknown", None
    short = max(0.0, need_kwh - by_departure_wh / 1000)
    missed = short >= ALARM_MIN_KWH and short >= ALARM_MIN_SHARE * need_kwh
    return ("missed" if missed else "met"), short


@dataclass(slots=True)
class _Track:
    """What the recorder follows of a session under way."""

    key: str  # "charger/connector"
    plan: SessionPlan | None = None
    by_departure_wh: float | None = None
    short_alarm: bool = False


@dataclass(slots=True)
class _ConnectorAcc:
    bucket: ConnectorBucket
    w_s: float = 0.0
    a_s: float = 0.0
    keep: bool = False  # in use or drawing at some sample


@dataclass(slots=True)
class _CircuitAcc:
    bucket: CircuitBucket
    a_s: float = 0.0


@dataclass(slots=True)
class _Register:
    wh: float
    at: float  # UTC s when it last moved


class UtilizationRecorder:
    """Records status changes, measurements and session outcomes for the utilization report.

    Args:
        config: the validated configuration (``storage.utilization``, chargers, circuits).
        state: the site state (subscribed to while running; its clocks are used).
        store: the store (with the utilization migration applied).
    """

    name = "utilization"

    def __init__(self, config: Config, state: SiteState, store: Store) -> None:
        self.config = config
        self.settings = config.storage.utilization
        self.state = state
        self.writer = UtilizationStore(store)
        self._chargers = {c.id: c for c in config.chargers}
        self._nodes = list(config.circuit_limits_a())
        self._pending = Batch()
        self._status: dict[tuple[str, int], tuple[str, str | None]] = {}
        self._tracks: dict[str, _Track] = {}  # session id -> what is followed of it
        self._by_key: dict[str, _Track] = {}  # "charger/connector" -> the same
        self._connectors: dict[tuple[str, int, int], _ConnectorAcc] = {}
        self._circuits: dict[tuple[str, int], _CircuitAcc] = {}
        self._registers: dict[tuple[str, int], _Register] = {}
        self._last_sample: float | None = None  # UTC s
        self._run_ms: int | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.lost = 0  # rows lost to failed writes
        self._working: set[asyncio.Future[None]] = set()  # writes in worker threads

    # -------------------------------------------------------------------------------------
    # The component

    def start(self) -> None:
        """Begin a run: subscribe, and record how every charger and connector stands now."""
        now = self.state.clock()
        self._run_ms = _ms(now)
        self._last_sample = now.timestamp()  # the first sample covers the time from here
        self._pending.run = (self._run_ms, self._run_ms)
        for charger in self.state.chargers.values():
            self._connection(charger, now)
            for connector in charger.connectors.values():
                self._connector_status(charger.charger_id, connector, now, force=True)
            for connector in charger.connectors.values():
                if connector.session is not None:
                    self._track(connector.session)
        self._unsubscribe = self.state.subscribe(self._on_change)

    async def run(self) -> None:
        """Sample, write and maintain until cancelled; then write what is left."""
        loop = asyncio.get_running_loop()
        self.start()
        next_flush = loop.time() + self.settings.flush_period_s
        next_maintain = loop.time() + 60.0  # soon after a start: a long stop leaves old data
        try:
            while True:
                await asyncio.sleep(self.settings.sample_period_s)
                self.sample()
                if loop.time() >= next_flush:
                    next_flush = loop.time() + self.settings.flush_period_s
                    await self.flush()
                if loop.time() >= next_maintain:
                    next_maintain = loop.time() + MAINTAIN_PERIOD_S
                    await self._in_thread(self.maintain)
        finally:
            # A write or rollup under way goes on in its thread when this task is cancelled:
            # let it end before the last write (and the store's close after it).
            if self._working:
                await asyncio.wait(set(self._working), timeout=STOP_WAIT_S)
            self.stop()

    async def _in_thread(self, func: Callable[..., None], *args: object) -> None:
        future = asyncio.get_running_loop().run_in_executor(None, func, *args)
        self._working.add(future)
        future.add_done_callback(self._working.discard)
        await asyncio.shield(future)

    def stop(self) -> None:
        """Unsubscribe and write everything, the open buckets included (a shutdown)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._close_buckets(None)
        self.write(self._take())

    async def flush(self) -> None:
        """Write what was recorded up to the last closed bucket, from a worker thread."""
        batch = self._take()
        if len(batch) or batch.run is not None:
            await self._in_thread(self.write, batch)

    def flush_now(self) -> None:
        """`flush` in this thread (tests, tools)."""
        self.write(self._take())

    def write(self, batch: Batch) -> None:
        """Write one batch; a failure is logged and the batch dropped (never raised)."""
        try:
            self.writer.write(batch)
        except sqlite3.Error as exc:
            self.lost += len(batch)
            log.error(
                "utilization: %d records not written (%s); %d lost since the start",
                len(batch),
                exc,
                self.lost,
            )

    def maintain(self, now_s: float | None = None) -> None:
        """Join old 1-minute buckets, drop what is past the retention (worker thread)."""
        if now_s is None:
            now_s = self.state.clock().timestamp()
        try:
            rolled = self.writer.rollup(
                int(now_s - self.settings.minute_days * 86400), self.settings.rollup_min * 60
            )
            expired = self.writer.expire(int(now_s - self.settings.retention_days * 86400))
        except sqlite3.Error as exc:
            log.error("utilization: rollup or expiry failed: %s", exc)
            return
        if rolled or expired:
            log.info("utilization: %d 1-minute rows joined, %d old rows dropped", rolled, expired)

    def _take(self) -> Batch:
        batch, self._pending = self._pending, Batch()
        if self._run_ms is not None and self._last_sample is not None:
            batch.run = (self._run_ms, round(self._last_sample * 1000))
        return batch

    # -------------------------------------------------------------------------------------
    # State changes (quick: they append)

    def _on_change(self, change: Change) -> None:
        kind, subject = change.kind, change.subject
        now = self.state.clock()
        if kind == "connector":
            charger_id, _, number = subject.rpartition("/")
            charger = self.state.chargers.get(charger_id)
            if charger is not None and number.isdigit() and int(number) in charger.connectors:
                self._connector_status(charger_id, charger.connectors[int(number)], now)
        elif kind in ("charger_connected", "charger_disconnected"):
            charger = self.state.chargers.get(subject)
            if charger is not None:
                self._connection(charger, now)
        elif kind in ("session_started", "session_restored"):
            session = self._session_by_id(subject)
            if session is not None:
                self._track(session)
        elif kind == "session_ended":
            self._ended(subject)
        elif kind == "alarm":
            code, _, key = subject.partition(":")
            track = self._by_key.get(key)
            if track is not None and code == ALARM_CODE and (code, key) in self.state.alarms:
                track.short_alarm = True
        elif kind == "plan":
            track = self._by_key.get(subject)
            if track is not None:
                track.plan = self.state.control.sessions.get(subject) or track.plan

    def _connection(self, charger: ChargerState, now: datetime) -> None:
        status = "Connected" if charger.connected else "Disconnected"
        key = (charger.charger_id, 0)
        if self._status.get(key) != (status, None):
            self._status[key] = (status, None)
            self._pending.statuses.append(StatusEvent(_ms(now), charger.charger_id, 0, status))

    def _connector_status(
        self, charger_id: str, connector: ConnectorState, now: datetime, force: bool = False
    ) -> None:
        key = (charger_id, connector.connector_id)
        value = (connector.status, connector.error_code)
        if force or self._status.get(key) != value:
            self._status[key] = value
            self._pending.statuses.append(StatusEvent(_ms(now), charger_id, key[1], *value))

    def _track(self, session: SessionState) -> None:
        key = f"{session.charger_id}/{session.connector_id}"
        track = self._tracks.setdefault(session.session_id, _Track(key))
        self._by_key[key] = track
        track.plan = self.state.control.sessions.get(key) or track.plan
        if (ALARM_CODE, key) in self.state.alarms:
            track.short_alarm = True

    def _session_by_id(self, session_id: str) -> SessionState | None:
        for charger in self.state.chargers.values():
            for connector in charger.connectors.values():
                if connector.session is not None and connector.session.session_id == session_id:
                    return connector.session
        return None

    def _ended(self, session_id: str) -> None:
        session = next(
            (s for s in reversed(self.state.ended_sessions) if s.session_id == session_id), None
        )
        if session is None or session.ended_at is None:
            return
        track = self._tracks.pop(session_id, None)
        if track is not None and self._by_key.get(track.key) is track:
            del self._by_key[track.key]
        if track is None:
            track = _Track(f"{session.charger_id}/{session.connector_id}")
        self._pending.sessions.append(outcome(session, track))

    # -------------------------------------------------------------------------------------
    # Sampling

    def sample(self) -> None:
        """Read every connector's and node's figures since the previous sample into buckets."""
        now_dt = self.state.clock()
        now = now_dt.timestamp()
        last, self._last_sample = self._last_sample, now
        if last is None or now <= last:
            return
        start = max(last, now - 3 * self.settings.sample_period_s)
        now_mono = self.state.monotonic()
        for charger in self.state.chargers.values():
            for connector in charger.connectors.values():
                self._sample_connector(charger, connector, start, now, now_mono)
        self._sample_circuits(now_dt, start, now, now_mono)
        for track in self._tracks.values():
            self._follow(track, now_dt)
        self._close_buckets(now)

    def _follow(self, track: _Track, now: datetime) -> None:
        track.plan = self.state.control.sessions.get(track.key) or track.plan
        if track.by_departure_wh is not None:
            return
        charger_id, _, number = track.key.rpartition("/")
        charger = self.state.chargers.get(charger_id)
        connector = charger.connectors.get(int(number)) if charger else None
        session = connector.session if connector else None
        if session is None:
            return
        departure, _ = _departure(session, track.plan)
        if departure is not None and now >= departure:
            track.by_departure_wh = session.energy_wh

    def _sample_connector(
        self,
        charger: ChargerState,
        connector: ConnectorState,
        start: float,
        end: float,
        now_mono: float,
    ) -> None:
        max_age = self.config.control.ev_measurement_max_age_s
        configured = self._chargers.get(charger.charger_id)
        amps = None
        phase_sum = None
        if fresh(connector.current_mono, now_mono, max_age):
            values = [a for a in (connector.current_a or ()) if a is not None]
            if values:
                phase_sum = sum(values)
            if connector.current_phaseless_a is not None:
                values.append(connector.current_phaseless_a)
                if phase_sum is None and configured is not None:
                    phase_sum = connector.current_phaseless_a * configured.phases
            amps = max(values) if values else None
        power = None
        if fresh(connector.power_mono, now_mono, max_age) and connector.power_kw is not None:
            power = max(0.0, connector.power_kw)
        elif phase_sum is not None:
            volts = connector.voltage_v or self.config.site.nominal_voltage_v
            power = phase_sum * volts / 1000
        measured = power is not None or amps is not None
        drawing = measured and (
            (amps is not None and amps >= DRAWING_A) or (power is not None and power >= DRAWING_KW)
        )
        energy = self._energy(charger, connector, power, start, end)
        occupied = connector.status in OCCUPIED
        if not (occupied or drawing or energy > 0):
            return
        span = end - start
        for t, share in _split(start, end):
            key = (charger.charger_id, connector.connector_id, t)
            acc = self._connectors.get(key)
            if acc is None:
                acc = self._connectors[key] = _ConnectorAcc(
                    ConnectorBucket(charger.charger_id, connector.connector_id, t)
                )
            bucket, seconds = acc.bucket, span * share
            acc.keep = True
            bucket.energy_wh += energy * share
            if measured:
                bucket.sampled_s += seconds
                bucket.drawing_s += seconds if drawing else 0.0
                acc.w_s += (power or 0.0) * 1000 * seconds
                acc.a_s += (amps or 0.0) * seconds
                if power is not None:
                    bucket.max_w = max(bucket.max_w or 0.0, power * 1000)
                if amps is not None:
                    bucket.max_a = max(bucket.max_a or 0.0, amps)

    def _energy(
        self,
        charger: ChargerState,
        connector: ConnectorState,
        power_kw: float | None,
        start: float,
        end: float,
    ) -> float:
        """Wh delivered in (start, end]: the register's growth, else power × time."""
        key = (charger.charger_id, connector.connector_id)
        register = connector.energy_register_wh
        if register is None:
            self._registers.pop(key, None)
            return (power_kw or 0.0) * (end - start) / 3.6
        known = self._registers.get(key)
        if known is None:
            self._registers[key] = _Register(register, end)
            return 0.0  # the first value only starts the count
        delta = register - known.wh
        if delta == 0:
            return 0.0
        configured = self._chargers.get(charger.charger_id)
        if configured is not None:
            top_kw = configured.max_power_kw or (
                configured.max_current_a * configured.phases * 0.25
            )
            possible = top_kw * 1.5 * (end - known.at) / 3.6 + 10.0
        else:
            possible = float("inf")
        self._registers[key] = _Register(register, end)
        if delta < 0 or delta > possible:
            # A reset (new register, a swapped charger) or a jump it could not have delivered.
            return (power_kw or 0.0) * (end - start) / 3.6
        return delta

    def _sample_circuits(self, now: datetime, start: float, end: float, now_mono: float) -> None:
        control = self.state.control
        if control.last_cycle_at is None:
            return
        age = (now - control.last_cycle_at).total_seconds()
        if age > max(3 * self.config.control.period_s, 30.0) or age < -60:
            return
        deferred = self._deferred_kw(now_mono)
        held = set(deferred)
        span = end - start
        for node in self._nodes:
            status = control.circuits.get(node)
            if status is None:
                continue
            limit = min(status.limit_a)
            at_limit = node in held or min(status.headroom_a) <= AT_LIMIT_A
            measured = None
            if status.measured_a is not None:
                values = [a for a in status.measured_a if a is not None]
                measured = max(values) if values else None
            for t, share in _split(start, end):
                acc = self._circuits.get((node, t))
                if acc is None:
                    acc = self._circuits[(node, t)] = _CircuitAcc(CircuitBucket(node, t))
                bucket, seconds = acc.bucket, span * share
                bucket.sampled_s += seconds
                bucket.at_limit_s += seconds if at_limit else 0.0
                bucket.limit_a = limit if bucket.limit_a is None else min(bucket.limit_a, limit)
                bucket.deferred_wh += deferred.get(node, 0.0) * seconds / 3.6
                if measured is not None:
                    bucket.metered_s += seconds
                    acc.a_s += measured * seconds
                    bucket.max_a = measured if bucket.max_a is None else max(bucket.max_a, measured)

    def _deferred_kw(self, now_mono: float) -> dict[str, float]:
        """kW each node holds back now (see the module); a held node with 0 is named too."""
        out: dict[str, float] = {}
        volts = self.config.site.nominal_voltage_v
        max_age = self.config.control.ev_measurement_max_age_s
        for key, plan in self.state.control.sessions.items():
            nodes = {
                str(item.get("node") or "grid")
                for item in plan.limited_by
                if item.get("kind") in _REASON_KINDS
            }
            if not nodes:
                continue
            charger_id, _, number = key.rpartition("/")
            configured = self._chargers.get(charger_id)
            charger = self.state.chargers.get(charger_id)
            connector = (
                charger.connectors.get(int(number)) if charger and number.isdigit() else None
            )
            kw = 0.0
            if configured is not None and connector is not None:
                wanted = configured.connector_max_current_a or configured.max_current_a
                session = connector.session
                if session is not None and session.ev_max_current_a is not None:
                    wanted = min(wanted, session.ev_max_current_a)
                got = plan.dispatched_a
                taking = None
                if fresh(connector.current_mono, now_mono, max_age):
                    values = [a for a in (connector.current_a or ()) if a is not None]
                    if connector.current_phaseless_a is not None:
                        values.append(connector.current_phaseless_a)
                    taking = max(values) if values else None
                if taking is None or taking >= got - TAKING_LESS_A:
                    kw = max(0.0, wanted - got) * configured.phases * volts / 1000
            for node in nodes:
                out[node] = out.get(node, 0.0) + kw
        return out

    def _close_buckets(self, now: float | None) -> None:
        """Move the buckets that ended by `now` (all: ``None``) to the pending batch."""
        for key in [k for k in self._connectors if now is None or k[2] + MINUTE_S <= now]:
            acc = self._connectors.pop(key)
            bucket = acc.bucket
            if bucket.sampled_s > 0:
                bucket.mean_w = acc.w_s / bucket.sampled_s
                bucket.mean_a = acc.a_s / bucket.sampled_s
            if acc.keep:
                self._pending.connectors.append(bucket)
        for key in [k for k in self._circuits if now is None or k[1] + MINUTE_S <= now]:
            acc = self._circuits.pop(key)
            bucket = acc.bucket
            if bucket.metered_s > 0:
                bucket.mean_a = acc.a_s / bucket.metered_s
            self._pending.circuits.append(bucket)


def _split(start: float, end: float) -> list[tuple[int, float]]:
    """The 1-minute buckets (start s) that (start, end] spans, with the share in each."""
    span = end - start
    out = []
    t = int(start // MINUTE_S) * MINUTE_S
    while t < end:
        overlap = min(end, t + MINUTE_S) - max(start, t)
        if overlap > 0:
            out.append((t, overlap / span))
        t += MINUTE_S
    return out


def _departure(
    session: SessionState, plan: SessionPlan | None
) -> tuple[datetime | None, str | None]:
    """The departure it was planned with, unless the controller's default."""
    if plan is not None and plan.departure_source != "default":
        return plan.departure, plan.departure_source
    if session.departure is not None:
        return session.departure, session.departure_source or "vehicle"
    return None, None


def _need(session: SessionState, plan: SessionPlan | None) -> tuple[float | None, str | None]:
    """The energy need it was planned with, unless the controller's default or unknown."""
    if (
        plan is not None
        and plan.need_kwh is not None
        and plan.need_source
        not in (
            "default",
            "unknown",
        )
    ):
        return plan.need_kwh, plan.need_source
    if session.energy_wanted_kwh is not None:
        return session.energy_wanted_kwh, session.need_source or "vehicle"
    return None, None


def outcome(session: SessionState, track: _Track) -> SessionOutcome:
    """An ended session, judged (see the module)."""
    assert session.ended_at is not None
    need, need_source = _need(session, track.plan)
    departure, departure_source = _departure(session, track.plan)
    by_departure = track.by_departure_wh
    if by_departure is None and departure is not None:
        if session.ended_at <= departure:
            by_departure = session.energy_wh  # gone before the departure: judged at the end
        elif need is not None and session.energy_wh < need * 1000:
            by_departure = session.energy_wh  # not even at the end: short at the departure too
    result, _ = judge(need, departure is not None, by_departure)
    return SessionOutcome(
        session_id=session.session_id,
        charger=session.charger_id,
        connector=session.connector_id,
        started_ms=_ms(session.started_at),
        ended_ms=_ms(session.ended_at),
        energy_wh=session.energy_wh,
        need_kwh=need,
        need_source=need_source,
        departure_ms=_ms(departure) if departure is not None else None,
        departure_source=departure_source,
        by_departure_wh=by_departure,
        outcome=result,
        short_alarm=track.short_alarm,
    )
