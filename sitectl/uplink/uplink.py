"""The MQTT uplink component: the depot as the cloud sees it, kept through outages.

It subscribes to SiteState and has the changes turned into messages (publisher.py, with the
payloads of messages.py), commits them to the outbox (outbox.py) and feeds the broker
connection (client.py) from there; commands are answered by replies.py. What stays here is the
connection: outbox feeding, the birth and will, the takeover watch. The modules depend one way:
uplink → publisher, replies → messages, outbox, commands, guard. Rules:

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
- Summaries every ``summary_period_s`` (the tick, publisher.py), thinned while disconnected;
  charger states when they change.
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
from typing import Any

from sitectl import __version__
from sitectl.config import Config
from sitectl.control.phase_test import PhaseTests
from sitectl.security_events import OwnSecurityEvent
from sitectl.state import Severity, SiteState
from sitectl.store import Store
from sitectl.store_health import STORE_FAILED_ALARM, store_failed
from sitectl.uplink.client import Acked, Connected, Disconnected, Event, MqttConnection, Received
from sitectl.uplink.commands import Rollouts
from sitectl.uplink.guard import ReplyTopics, RepublishGate
from sitectl.uplink.messages import Message, Topics, encode, iso, status_body, with_seq
from sitectl.uplink.outbox import Outbox
from sitectl.uplink.publisher import StatePublisher
from sitectl.uplink.replies import CommandDesk
from sitectl.uplink.security import SECURITY_WINDOW_S, SecurityFeed

__all__ = ["STORE_FAILED_ALARM", "WINDOW", "Uplink"]

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
#: How long an orderly stop waits for the broker to acknowledge the ``offline`` status.
OFFLINE_ACK_TIMEOUT_S = 2.0
#: How long an orderly stop waits for paho's network thread to end.
STOP_TIMEOUT_S = 5.0


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
        phase_tests: what ``detect_phases`` starts (``None``: refused).
        security_window_s: sitectl's own security events of one kind within this long after
            one was sent go out as one message (security.py).
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
        security_window_s: float = SECURITY_WINDOW_S,
    ) -> None:
        self.config = config
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
        self.publisher = StatePublisher(
            config,
            state,
            store,
            self.outbox,
            self.topics,
            self.publish,
            lambda: self.connected,
            lambda: self._loop.time() if self._loop is not None else 0.0,
        )
        self.desk = CommandDesk(
            config, state, self.topics, self.reply_topics, self.republish, rollouts, phase_tests
        )
        self.security = SecurityFeed(
            self.topics,
            self.publish,
            state.clock,
            lambda delay, callback: self._later(delay, callback),
            security_window_s,
        )
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

    @property
    def rollouts(self) -> Rollouts | None:
        """The firmware rollouts the ``firmware`` command reaches (``None``: refused)."""
        return self.desk.rollouts

    @rollouts.setter
    def rollouts(self, rollouts: Rollouts | None) -> None:
        self.desk.rollouts = rollouts

    @property
    def phase_tests(self) -> PhaseTests | None:
        """What ``detect_phases`` starts (``None``: refused)."""
        return self.desk.phase_tests

    @phase_tests.setter
    def phase_tests(self, phase_tests: PhaseTests | None) -> None:
        self.desk.phase_tests = phase_tests

    # ---------------------------------------------------------------------------------------
    # The component

    async def run(self) -> None:
        """Publish until cancelled; then say ``offline`` (if connected) and disconnect."""
        self._loop = asyncio.get_running_loop()
        unsubscribe = self.state.subscribe(self.publisher.on_change)
        self.state.security_events.listeners.append(self._security_event)
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
            with contextlib.suppress(ValueError):
                self.state.security_events.listeners.remove(self._security_event)

    def _security_event(self, event: OwnSecurityEvent) -> None:
        """The security event log's listener (on the loop; from a thread, handed over)."""
        loop = self._loop
        if loop is None:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            self.security.on_event(event)
        else:
            loop.call_soon_threadsafe(self.security.on_event, event)

    def _later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle | None:
        return self._loop.call_later(delay, callback) if self._loop is not None else None

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
        self.security.flush()  # the events counted in open windows, kept for the next start
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
        self.publisher.tick()

    def publish_summary(self, force: bool = False) -> bool:
        """Queue a summary (see `StatePublisher.publish_summary`)."""
        return self.publisher.publish_summary(force)

    def publish_chargers(self, force: bool = False) -> int:
        """Queue the state of every charger that changed (every charger if `force`)."""
        return self.publisher.publish_chargers(force)

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
        store_failed(
            self.state,
            self.store.path,
            exc,
            what,
            "MQTT messages are lost (counted as outbox.lost in the summary)",
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
        reply = self.desk.answer(message)
        connection = self.connection
        if reply is None or connection is None:
            return
        try:
            mid = connection.publish(
                self._generation,
                reply.topic,
                reply.payload,
                self.mqtt.qos,
                retain=False,
                properties=reply.properties,
            )
        except ValueError as exc:  # a ResponseTopic with wildcards
            log.warning("MQTT: cannot reply on '%s': %s", reply.topic, exc)
            return
        if mid is None:
            log.warning("MQTT: reply on '%s' not sent (connection lost)", reply.topic)
        else:
            self._others.add(mid)


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
