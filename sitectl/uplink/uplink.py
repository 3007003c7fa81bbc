"""The MQTT uplink component: the depot as the cloud sees it, kept through outages.

It subscribes to SiteState, turns changes into messages (messages.py), commits them to the
outbox (outbox.py) and feeds the broker connection (client.py) from there; it takes commands
(commands.py) and answers them. Rules:

- Nothing here blocks on the network: paho runs in its own thread and connects in the
  background, so a broker that is down at start delays no other component.
- Every message goes through the outbox and is committed before paho sees it. Messages made in
  one event-loop tick are committed in one transaction; acknowledgements are deleted, and the
  next messages numbered, in one transaction per burst of acknowledgements.
- After every CONNACK: first the messages numbered before (in flight when the connection or
  the process died), then the birth (``…/status`` ``online``, retained), then the rest in order;
  after a reconnect, every charger's retained state again at the end of it (a broker restarted
  without persistence has lost them).
  The status carries the next ``seq`` like any message, so ``seq`` on the wire only grows.
- At most `window` messages are handed to paho at a time (and no more than the broker's
  Receive Maximum); the rest waits on disk.
- Summaries every ``summary_period_s``; while disconnected, at most one per
  ``outage_summary_period_s`` is queued (the others are counted as thinned). Session events and
  alarms are never thinned. Charger states are published when they change: at once on
  connection, status, session, firmware and alarm changes, and at the summary period for
  measurements alone (a charging bus changes its draw every few seconds).
- Command replies and the status do not go through the outbox: a reply matters only while its
  requester waits, and a stale ``online`` must never be replayed.
- Two controllers with one site id (client.py): a "session taken over" disconnect, or a status
  on our ``…/status`` that another process published (its ``started_at`` is not ours: live, or
  retained and found on a reconnect), raises the ``mqtt_session_taken_over`` alarm; it clears
  when a connection then stays up for the connection's ``stable_s``. A retained status found
  before our own status ever came back is the previous run's, not evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sitectl import __version__
from sitectl.config import Config
from sitectl.control.phase_test import PhaseTests
from sitectl.state import Alarm, Change, SessionState, Severity, SiteState
from sitectl.store import Store
from sitectl.uplink.client import Acked, Connected, Disconnected, Event, MqttConnection, Received
from sitectl.uplink.commands import Rollouts, handle_command
from sitectl.uplink.guard import ReplyTopics, RepublishGate
from sitectl.uplink.messages import (
    EnergyToday,
    Kind,
    Message,
    Topics,
    alarm_body,
    charger_body,
    comparable,
    encode,
    iso,
    limit_event_body,
    session_body,
    status_body,
    summary_body,
    with_seq,
)
from sitectl.uplink.outbox import Outbox

__all__ = ["WINDOW", "Uplink"]

log = logging.getLogger(__name__)

#: Messages handed to paho and not yet acknowledged, at most. Large enough to keep a LAN or
#: WAN link busy (bench/uplink.py), small enough that paho's memory never matters.
WINDOW = 1000
#: Reconnect backoff (first, longest wait). paho doubles the wait after each failure.
RECONNECT_DELAY_S = (1.0, 60.0)
#: Wait before reconnecting after "session taken over" (first, longest); doubles each time.
TAKEOVER_BACKOFF_S = (10.0, 600.0)
#: The alarm raised when another client takes over our session.
TAKEOVER_ALARM = "mqtt_session_taken_over"
#: The alarm raised on the first failed store write (issue #22.12).
STORE_FAILED_ALARM = "store_failed"
#: How long an orderly stop waits for the broker to acknowledge the ``offline`` status.
OFFLINE_ACK_TIMEOUT_S = 2.0
#: How long an orderly stop waits for paho's network thread to end.
STOP_TIMEOUT_S = 5.0

#: Changes that republish a charger's state at once ("measurement" waits for the period).
_CHARGER_KINDS = frozenset(
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


class Uplink:
    """Publishes SiteState to the operator's broker and takes commands.

    Args:
        config: the validated configuration (``mqtt`` section, site, circuits).
        state: the site state (subscribed to while running).
        store: the SQLite store (the outbox and the counters live there).
        reconnect_delay_s: (first, longest) wait between connection attempts.
        takeover_backoff_s: (first, longest) wait before reconnecting after another client
            took over our session (see client.py).
        window: messages in flight at most (see `WINDOW`).
        rollouts: the firmware rollouts, for the ``firmware`` command (``None``: refused).
    """

    name = "uplink"

    def __init__(
        self,
        config: Config,
        state: SiteState,
        store: Store,
        *,
        reconnect_delay_s: tuple[float, float] = RECONNECT_DELAY_S,
        takeover_backoff_s: tuple[float, float] = TAKEOVER_BACKOFF_S,
        window: int = WINDOW,
        rollouts: Rollouts | None = None,
        phase_tests: PhaseTests | None = None,
    ) -> None:
        self.config = config
        self.rollouts = rollouts
        self.phase_tests = phase_tests
        self.mqtt = config.mqtt
        self.state = state
        self.store = store
        self.topics = Topics(config.topic_prefix)
        self.reply_topics = ReplyTopics(
            self.topics.prefix, self.mqtt.reply_topic_prefixes, time.monotonic
        )
        self.republish_gate = RepublishGate(self.mqtt.republish_min_interval_s, time.monotonic)
        self.outbox = Outbox(
            store, config.site.id, self.mqtt.outbox_max_messages, self.mqtt.outbox_max_bytes
        )
        self.client_id = self.mqtt.client_id or f"sitectl-{config.site.id}"
        self.reconnect_delay_s = reconnect_delay_s
        self.takeover_backoff_s = takeover_backoff_s
        self.window = window
        self.energy = self._restore_energy()
        self.connection: MqttConnection | None = None
        self.connected = False
        # Outbox feeding.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Message] = []
        self._flush_scheduled = False
        self._generation = -1
        self._window = window
        self._handed: dict[int, int] = {}  # paho mid -> outbox id
        self._acked: list[int] = []
        self._cursor = 0
        self._birth_pending = False
        self._waiters: dict[int, asyncio.Future[bool]] = {}  # mid -> status acknowledged
        self._others: set[int] = set()  # status and replies in flight (paho mids)
        self._takeover_clear: asyncio.TimerHandle | None = None
        # Our own status came back through the watch: from then on the retained status was
        # ours, and another one found on a reconnect was published by someone else.
        self._own_status_seen = False
        self._connects = 0  # CONNACKs in this process
        # What was published.
        self._chargers: dict[str, dict[str, Any]] = {}  # comparable() of the last state sent
        self._alarms: dict[tuple[str, str], Alarm] = dict(state.alarms)
        self._last_summary_mono: float | None = None
        self._energy_saved: tuple[date | None, float] | None = None

    # ---------------------------------------------------------------------------------------
    # The component

    async def run(self) -> None:
        """Publish until cancelled; then say ``offline`` (if connected) and disconnect."""
        self._loop = asyncio.get_running_loop()
        unsubscribe = self.state.subscribe(self._on_change)
        if not self.mqtt.commands_enabled:
            log.info(
                "MQTT commands are disabled (mqtt.commands_enabled: false): not subscribing to %s",
                self.topics.commands,
            )
        try:
            self.connection = self._connect(self._loop)
            if self._pending:  # queued before the loop ran
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
            if self.outbox.count:
                log.info("MQTT outbox holds %d messages from before", self.outbox.count)
            self.publish_chargers(force=True)
            await self._summaries()
        except asyncio.CancelledError:
            await self._shutdown()
            raise
        finally:
            unsubscribe()

    def _connect(self, loop: asyncio.AbstractEventLoop) -> MqttConnection | None:
        try:
            connection = MqttConnection(
                self.mqtt,
                loop,
                self._on_events,
                client_id=self.client_id,
                will_topic=self.topics.status,
                will_payload=self._will_payload,
                window=self.window,
                reconnect_delay_s=self.reconnect_delay_s,
                takeover_backoff_s=self.takeover_backoff_s,
            )
        except (OSError, ValueError) as exc:
            # A broken certificate or key file is the installer's to fix; the rest of sitectl
            # (charging) must go on, and what the cloud should see waits in the outbox.
            log.error(
                "MQTT uplink cannot start: %s (mqtt.ca_file, cert_file, key_file); "
                "messages are kept in the outbox until this is fixed and sitectl restarted",
                exc,
            )
            return None
        connection.start()
        return connection

    async def _shutdown(self) -> None:
        self._flush()  # what this tick produced is kept for the next start
        connection = self.connection
        if connection is None:
            return
        try:
            if self.connected:
                mid = self._publish_status(online=False, reason="shutdown")
                waiter = self._waiters.get(mid) if mid is not None else None
                if waiter is not None:
                    try:
                        await asyncio.wait_for(asyncio.shield(waiter), OFFLINE_ACK_TIMEOUT_S)
                    except TimeoutError:
                        log.warning("MQTT: the offline status was not acknowledged in time")
            connection.disconnect()
        finally:
            await _in_thread(connection.stop, STOP_TIMEOUT_S)
            self.connected = False
            log.info("MQTT uplink stopped (%d messages left in the outbox)", self.outbox.count)

    async def _summaries(self) -> None:
        assert self._loop is not None
        period = self.mqtt.summary_period_s
        next_at = self._loop.time()
        while True:
            try:
                self.tick()
            except sqlite3.Error as exc:  # alarmed once; not a traceback every period
                self._store_failed(exc, "the summary tick")
            except Exception:  # a bad value somewhere must not end the uplink
                log.exception("MQTT summary failed")
            next_at += period
            now = self._loop.time()
            if next_at < now:  # we were blocked for longer than a period; do not catch up
                next_at = now + period
            await asyncio.sleep(next_at - now)

    # ---------------------------------------------------------------------------------------
    # Public operations

    def publish(self, message: Message) -> None:
        """Queue a message: committed to the outbox at the end of this event-loop tick."""
        self._pending.append(message)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

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
        mono = self._loop.time() if self._loop is not None else 0.0
        if (
            not force
            and not self.connected
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
        return sum(self._charger(charger_id, force) for charger_id in self.state.chargers)

    def republish(self) -> dict[str, Any]:
        """The ``republish`` command: the status, every charger state, a summary.

        At most one per ``republish_min_interval_s`` (guard.py): one asked for sooner is done
        once at the end of the interval, however many were asked for.
        """
        delay = self.republish_gate.request()
        if delay is None:
            return self._republish_now()
        if self.republish_gate.needs_timer() and self._loop is not None:
            self._loop.call_later(delay, self._deferred_republish)
        return {"coalesced": True, "in_s": round(delay, 1)}

    def _deferred_republish(self) -> None:
        self.republish_gate.done()
        self._republish_now()

    def _republish_now(self) -> dict[str, Any]:
        self._flush()
        status = self._publish_status(online=True) is not None
        chargers = self.publish_chargers(force=True)
        self.publish_summary(force=True)
        return {"status": status, "chargers": chargers, "summary": True}

    # ---------------------------------------------------------------------------------------
    # SiteState changes (event loop thread, synchronous and quick)

    def _on_change(self, change: Change) -> None:
        kind = change.kind
        if kind in _CHARGER_KINDS:
            self._charger(change.subject.split("/", 1)[0])
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

    def _charger(self, charger_id: str, force: bool = False) -> bool:
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
        self._charger(charger_id)

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
        self._charger(session.charger_id or session_id.split("/", 1)[0])

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
            self._charger(about)

    # ---------------------------------------------------------------------------------------
    # Outbox → connection

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if pending:
            try:
                self.outbox.append(pending)
            except sqlite3.Error as exc:
                # A store that cannot write (disk full, I/O error) must not stop charging;
                # say exactly what is lost, and count it.
                self.outbox.lost += len(pending)
                log.error(
                    "MQTT outbox write failed (%s): %d messages lost (%d since the start)",
                    exc,
                    len(pending),
                    self.outbox.lost,
                )
                self._store_failed(exc, "the MQTT outbox")
        self._pump()

    def _store_failed(self, exc: sqlite3.Error, what: str) -> None:
        """Raise the ``store_failed`` alarm once (the state keeps it until a restart)."""
        if (STORE_FAILED_ALARM, "store") in self.state.alarms:
            return
        log.critical("the store %s cannot write (%s: %s)", self.store.path, what, exc)
        self.state.raise_alarm(
            STORE_FAILED_ALARM,
            "store",
            Severity.CRITICAL,
            f"the store {self.store.path} cannot write ({exc}): MQTT messages are lost "
            "(counted as outbox.lost in the summary); check the disk (full, read-only, "
            "failing) and restart sitectl",
        )

    def _pump(self) -> None:
        """Delete what was acknowledged and hand the next messages to paho."""
        connection = self.connection
        if connection is None or not self.connected:
            if self._acked:
                acked, self._acked = self._acked, []
                self.outbox.ack(acked)
            return
        while True:
            # The status and replies in flight count too: the broker's Receive Maximum is for
            # all of them (MQTT 5 §3.3.4). paho cannot change its own limit once connected.
            room = self._window - len(self._handed) - len(self._others)
            acked, self._acked = self._acked, []
            rows = self.outbox.claim(
                self._cursor, room, acked=acked, numbered_only=self._birth_pending
            )
            for row in rows:
                mid = connection.publish(
                    self._generation, row.topic, row.payload, self.mqtt.qos, row.retain
                )
                if mid is None:
                    return  # the connection changed under us; `Connected` starts over
                self._handed[mid] = row.id
                self._cursor = row.id
            if self._birth_pending and len(rows) < room:
                # Everything numbered before is on its way: now the birth, then new messages.
                self._birth_pending = False
                if self._publish_status(online=True) is None:
                    return
                continue
            return

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Acked):
                self._acked_event(event)
            elif isinstance(event, Connected):
                self._connected_event(event)
            elif isinstance(event, Disconnected):
                self._disconnected_event(event)
            elif isinstance(event, Received) and event.topic == self.topics.status:
                self._status_seen(event)
            elif isinstance(event, Received):
                self._command(event)
        self._pump()

    def _acked_event(self, event: Acked) -> None:
        row = self._handed.pop(event.mid, None)
        if row is not None:
            self._acked.append(row)
            if not event.ok:
                # Re-sending will not help (not authorized, quota, topic refused): count it,
                # say it, and go on; the cloud sees the gap in seq.
                self.outbox.bump("rejected")
                log.error("MQTT broker refused a message (%s); dropped", event.reason)
        self._others.discard(event.mid)
        waiter = self._waiters.pop(event.mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(event.ok)

    def _connected_event(self, event: Connected) -> None:
        self.connected = True
        self._generation = event.generation
        # MQTT 5 §3.2.2.3.3: the broker's Receive Maximum bounds what is in flight (mosquitto
        # says 20 by default); keep two of them for the status and command replies.
        limit = event.receive_maximum or self.window
        self._window = max(1, min(self.window, limit - 2 if limit <= self.window else limit))
        self._handed.clear()
        self._others.clear()
        self._cursor = 0
        self._birth_pending = True
        self._fail_waiters()
        if self.connection is not None:
            # Before the birth goes out, so that the retained status is the one we came back to.
            self.connection.watch(event.generation, self.topics.status)
        if self.mqtt.commands_enabled and self.connection is not None:
            self.connection.subscribe(event.generation, self.topics.commands)
        if self._connects:
            # The broker may have lost its retained store (restarted without persistence, a
            # cluster failover): every charger's state again, after what was queued (#22.11).
            # The first connection sends the states `run` queued at the start.
            self.publish_chargers(force=True)
        self._connects += 1
        if self.outbox.count:
            log.info("MQTT: sending %d queued messages", self.outbox.count)
        if (TAKEOVER_ALARM, "mqtt") in self.state.alarms:
            self._schedule_takeover_clear()

    def _schedule_takeover_clear(self) -> None:
        """Clear the takeover alarm if this connection lasts `stable_s` from now."""
        if self._takeover_clear is not None:
            self._takeover_clear.cancel()
        if self._loop is None or self.connection is None:
            return
        self._takeover_clear = self._loop.call_later(
            self.connection.stable_s, self._takeover_over, self._generation
        )

    def _takeover_over(self, generation: int) -> None:
        # Still the same connection: nobody took the session back within the longest wait.
        if self.connected and self._generation == generation:
            self.state.clear_alarm(TAKEOVER_ALARM, "mqtt")

    def _status_seen(self, message: Received) -> None:
        """A status on our own topic: ours, the previous run's, or another controller's."""
        try:
            body = json.loads(message.payload)
            started_at = body.get("started_at") if isinstance(body, dict) else None
        except ValueError:
            started_at = None
        if started_at == iso(self.state.started_at):
            self._own_status_seen = True
            return
        if message.retain and not self._own_status_seen:
            return  # what the previous run left (its shutdown or its Will)
        if self.connection is not None:
            self.connection.suspect_takeover()
        if self.connected:
            self._schedule_takeover_clear()  # fresh evidence: the stable time starts again
        if self._raise_takeover():
            log.error(
                "MQTT: another controller publishes on %s (%s, started at %s; we started at %s): "
                "two sitectl with site id '%s' and client id '%s'? Each takes the broker "
                "session from the other; from now on every close by the broker is taken as "
                "a takeover and reconnecting backs off",
                self.topics.status,
                "found on reconnecting" if message.retain else "live",
                started_at,
                iso(self.state.started_at),
                self.config.site.id,
                self.client_id,
            )

    def _raise_takeover(self) -> bool:
        return self.state.raise_alarm(
            TAKEOVER_ALARM,
            "mqtt",
            Severity.WARNING,
            f"another sitectl publishes as site '{self.config.site.id}' on this broker "
            f"(MQTT client id '{self.client_id}'): a duplicate install or a copied config?",
        )

    def _disconnected_event(self, event: Disconnected) -> None:
        if self._takeover_clear is not None:
            self._takeover_clear.cancel()
            self._takeover_clear = None
        if event.taken_over:
            self._raise_takeover()
        self.connected = False
        self._handed.clear()
        self._others.clear()
        self._cursor = 0
        self._fail_waiters()

    def _fail_waiters(self) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        self._waiters.clear()

    def _publish_status(self, online: bool, reason: str | None = None) -> int | None:
        connection = self.connection
        if connection is None or not self.connected:
            return None
        now = self.state.clock()
        body = status_body(
            online, __version__, self.state.started_at, now, reason, self.store.epoch
        )
        seq = self.outbox.take_seq()
        mid = connection.publish(
            self._generation,
            self.topics.status,
            with_seq(encode(body), seq),
            max(1, self.mqtt.qos),
            retain=True,
        )
        if mid is None:
            # The connection went away in between: unused, the number would be a false gap.
            self.outbox.give_back_seq(seq)
            return None
        self._others.add(mid)
        if self._loop is not None:
            self._waiters[mid] = self._loop.create_future()
        return mid

    def _will_payload(self) -> bytes:
        # Composed before the fact and published by the broker: it cannot have a seq.
        body = status_body(
            False,
            __version__,
            self.state.started_at,
            self.state.clock(),
            "connection lost",
            self.store.epoch,
        )
        return encode(body).encode()

    # ---------------------------------------------------------------------------------------
    # Commands

    def _command(self, message: Received) -> None:
        if not self.mqtt.commands_enabled:  # not subscribed; a broker should not deliver any
            log.warning("MQTT commands are disabled: ignoring a message on %s", message.topic)
            return
        name = self.topics.command_name(message.topic)
        if name is None:
            reply = _refusal("", f"topic '{message.topic}' is outside {self.topics.prefix}/cmd/")
        elif message.retain:
            reply = _refusal(name, "retained commands are refused (publish with retain=false)")
        else:
            reply = None
        if not message.response_topic:
            log.warning(
                "MQTT command on %s without a ResponseTopic: ignored (MQTT 5 request/response "
                "needs one)",
                message.topic,
            )
            return
        refused = self.reply_topics.why_refused(message.response_topic)
        if refused is not None:
            self.reply_topics.refuse(message.topic, message.response_topic, refused)
            return
        if reply is None:
            assert name is not None
            reply = handle_command(
                self.state,
                self.config,
                name,
                message.payload,
                republish=self.republish,
                rollouts=self.rollouts,
                phase_tests=self.phase_tests,
            )
        reply["ts"] = iso(self.state.clock())
        if reply["ok"]:
            log.info("MQTT command %s: ok", name)
        else:
            log.warning(
                "MQTT command on %s refused: %s%s",
                message.topic,
                reply["error"],
                f" (field {reply['field']})" if reply.get("field") else "",
            )
        self._reply(message, reply)

    def _reply(self, message: Received, reply: dict[str, Any]) -> None:
        connection = self.connection
        if connection is None or message.response_topic is None:
            return
        properties = Properties(PacketTypes.PUBLISH)
        if message.correlation_data is not None:
            properties.CorrelationData = message.correlation_data
        properties.PayloadFormatIndicator = 1
        properties.ContentType = "application/json"
        try:
            mid = connection.publish(
                self._generation,
                message.response_topic,
                json.dumps(reply, separators=(",", ":")).encode(),
                self.mqtt.qos,
                retain=False,
                properties=properties,
            )
        except ValueError as exc:  # a ResponseTopic with wildcards
            log.warning("MQTT: cannot reply on '%s': %s", message.response_topic, exc)
            return
        if mid is None:
            log.warning("MQTT: reply on '%s' not sent (connection lost)", message.response_topic)
        else:
            self._others.add(mid)

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


def _refusal(name: str, error: str) -> dict[str, Any]:
    return {"ok": False, "command": name, "error": error, "field": None}


async def _in_thread(func: Callable[[], object], timeout: float) -> None:
    """Run a blocking call in a daemon thread; stop waiting after `timeout` seconds.

    Not the default executor: a paho thread stuck in a TCP connect must not hold up the
    event loop's shutdown.
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def target() -> None:
        try:
            func()
        finally:
            # RuntimeError: the loop is closed already.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    threading.Thread(target=target, name="sitectl-mqtt-stop", daemon=True).start()
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        log.warning("MQTT network thread did not stop within %.0f s", timeout)
