"""What the uplink says about the site: SiteState changes and the periodic tick as messages.

`StatePublisher` turns changes (charger states, sessions, alarms, limit events) and the summary
period into `Message`s and hands them to a ``publish`` callable (the uplink's outbox feed); it
knows nothing of the broker connection, only whether it is up (for the outage thinning). It
also keeps the energy delivered today, persisted in the store's ``meta`` so that a restart does
not reset it.

Rules (see uplink.py for the whole component):

- Charger states are published when they change: at once on connection, status, session,
  firmware and alarm changes, and at the summary period for measurements alone (a charging bus
  changes its draw every few seconds). ``comparable`` decides what "changed" means.
- Summaries every ``summary_period_s``; while disconnected, at most one per
  ``outage_summary_period_s`` (the others are counted as thinned). Session events and alarms
  are never thinned.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from sitectl.config import Config
from sitectl.state import Alarm, Change, SessionState, SiteState
from sitectl.store import Store
from sitectl.uplink.messages import (
    EnergyToday,
    Kind,
    Message,
    Topics,
    alarm_body,
    charger_body,
    comparable,
    limit_event_body,
    session_body,
    summary_body,
)
from sitectl.uplink.outbox import Outbox

__all__ = ["CHARGER_KINDS", "StatePublisher"]

log = logging.getLogger(__name__)

#: Changes that republish a charger's state at once ("measurement" waits for the period).
CHARGER_KINDS = frozenset(
    {
        "charger_connected",
        "charger_disconnected",
        "charger_booted",
        "upstream",
        "connector",
        "firmware_status",
        "session_needs",
        "csms_profiles",
        "profiles_cleared",
        "plan",  # a session's predicted ready time or shortfall changed (control.plans)
    }
)
_ENERGY_META_KEY = "uplink.energy_today"


class StatePublisher:
    """SiteState as messages: what changed, and the periodic summary.

    Args:
        config: the validated configuration (``mqtt`` section, site, circuits).
        state: the site state (the caller subscribes `on_change`).
        store: where the energy of today is kept.
        outbox: for its statistics in the summary and the thinning counter.
        topics: the topic tree.
        publish: queues one message (`Uplink.publish`).
        connected: whether the broker connection is up now.
        monotonic: the clock of the outage thinning (the event loop's).
    """

    def __init__(
        self,
        config: Config,
        state: SiteState,
        store: Store,
        outbox: Outbox,
        topics: Topics,
        publish: Callable[[Message], None],
        connected: Callable[[], bool],
        monotonic: Callable[[], float],
    ) -> None:
        self.config = config
        self.mqtt = config.mqtt
        self.state = state
        self.store = store
        self.outbox = outbox
        self.topics = topics
        self.publish = publish
        self.connected = connected
        self.monotonic = monotonic
        self.energy = self._restore_energy()
        self._chargers: dict[str, dict[str, Any]] = {}  # comparable() of the last state sent
        self._alarms: dict[tuple[str, str], Alarm] = dict(state.alarms)
        self._last_summary_mono: float | None = None
        self._energy_saved: tuple[date | None, float] | None = None

    # ---------------------------------------------------------------------------------------
    # The periodic work

    def tick(self) -> None:
        """The periodic work: energy, charger states that changed, a summary."""
        now = self.state.clock()
        for charger in self.state.chargers.values():
            for connector in charger.connectors.values():
                if connector.session is not None:
                    self.energy.observe(connector.session, now)
        self._save_energy()
        self.publish_chargers()
        self.publish_summary()

    def publish_summary(self, force: bool = False) -> bool:
        """Queue a summary; while disconnected, only one per ``outage_summary_period_s``.

        Returns:
            Whether it was queued (``False``: thinned).
        """
        mono = self.monotonic()
        if (
            not force
            and not self.connected()
            and self._last_summary_mono is not None
            and mono - self._last_summary_mono < self.mqtt.outage_summary_period_s
        ):
            self.outbox.bump("thinned_summaries")
            return False
        self._last_summary_mono = mono
        now = self.state.clock()
        body = summary_body(self.state, self.config, now, self.energy.kwh(now), self.outbox.stats())
        self.publish(Message(Kind.SUMMARY, self.topics.summary, body))
        return True

    def publish_chargers(self, force: bool = False) -> int:
        """Queue the state of every charger that changed (every charger if `force`).

        Returns:
            How many were queued.
        """
        return sum(self.charger(charger_id, force) for charger_id in self.state.chargers)

    # ---------------------------------------------------------------------------------------
    # SiteState changes (event loop thread, synchronous and quick)

    def on_change(self, change: Change) -> None:
        """The SiteState subscriber: the messages a change calls for."""
        kind = change.kind
        if kind in CHARGER_KINDS:
            self.charger(change.subject.split("/", 1)[0])
        elif kind == "session_started":
            self._session_started(change.subject)
        elif kind == "session_ended":
            self._session_ended(change.subject)
        elif kind == "alarm":
            self._alarm(change.subject)
        elif kind == "limit_event" and self.state.limit_events:
            # Announced right after it is appended: the newest is this one.
            event = self.state.limit_events[-1]
            body = limit_event_body(event, self.state.clock())
            self.publish(Message(Kind.ALARM, self.topics.alarms, body))

    def charger(self, charger_id: str, force: bool = False) -> bool:
        """Queue one charger's state if it changed since the last one sent (or `force`)."""
        charger = self.state.chargers.get(charger_id)
        if charger is None:
            return False
        body = charger_body(charger, self.state.clock(), self.state.control.sessions)
        key = comparable(body)
        if not force and self._chargers.get(charger_id) == key:
            return False
        self._chargers[charger_id] = key
        self.publish(
            Message(
                Kind.CHARGER, self.topics.charger(charger_id), body, retain=True, key=charger_id
            )
        )
        return True

    def _session_started(self, session_id: str) -> None:
        charger_id = session_id.split("/", 1)[0]
        charger = self.state.chargers.get(charger_id)
        session: SessionState | None = None
        if charger is not None:
            for connector in charger.connectors.values():
                if connector.session is not None and connector.session.session_id == session_id:
                    session = connector.session
                    break
        if session is None:
            log.debug("session %s started but is gone already", session_id)
            return
        now = self.state.clock()
        self.energy.observe(session, now)
        self.publish(
            Message(Kind.SESSION, self.topics.sessions, session_body(session, "started", now))
        )
        self.charger(charger_id)

    def _session_ended(self, session_id: str) -> None:
        session = next(
            (s for s in reversed(self.state.ended_sessions) if s.session_id == session_id), None
        )
        if session is None:
            log.warning("session %s ended but is not in the ended sessions", session_id)
            return
        now = self.state.clock()
        self.energy.finish(session, now)
        self.publish(
            Message(Kind.SESSION, self.topics.sessions, session_body(session, "stopped", now))
        )
        self.charger(session.charger_id or session_id.split("/", 1)[0])

    def _alarm(self, subject: str) -> None:
        code, _, about = subject.partition(":")
        key = (code, about)
        now = self.state.clock()
        alarm = self.state.alarms.get(key)
        if alarm is not None:
            self._alarms[key] = alarm
            body = alarm_body(alarm, raised=True, now=now)
        else:
            known = self._alarms.pop(key, None)
            if known is None:
                log.debug("alarm %s cleared but never seen raised", subject)
                return
            body = alarm_body(known, raised=False, now=now)
        self.publish(Message(Kind.ALARM, self.topics.alarms, body))
        if about in self.state.chargers:  # e.g. charger_noncompliant: compliance changed
            self.charger(about)

    # ---------------------------------------------------------------------------------------
    # Energy delivered today (persisted so that a restart does not reset it)

    def _restore_energy(self) -> EnergyToday:
        zone = ZoneInfo(self.config.site.timezone)
        day: date | None = None
        wh = 0.0
        saved = self.store.get_meta(_ENERGY_META_KEY)
        if saved:
            try:
                data = json.loads(saved)
                day, wh = date.fromisoformat(data["day"]), float(data["wh"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable %s in the store: %r", _ENERGY_META_KEY, saved)
        energy = EnergyToday(zone, self.state.started_at, day, wh)
        energy.kwh(self.state.clock())  # a total from another day restarts from zero
        return energy

    def _save_energy(self) -> None:
        snapshot = (self.energy.day, round(self.energy.wh, 1))
        if snapshot == self._energy_saved or snapshot[0] is None:
            return
        self.store.set_meta(
            _ENERGY_META_KEY, json.dumps({"day": snapshot[0].isoformat(), "wh": snapshot[1]})
        )
        self._energy_saved = snapshot
