"""The broker connection: paho-mqtt 2.x in its own network thread, events handed to asyncio.

`MqttConnection` owns the paho client and its socket and nothing else: what to publish and
when is the uplink's business (uplink.py). Rules:

- paho runs its network thread (``loop_start``); every callback only appends an event to one
  ordered queue, and one ``call_soon_threadsafe`` per burst hands the burst to the event loop.
  Order matters: an acknowledgement that arrived before a disconnect is processed before it.
- paho settings (reference M9): ``CallbackAPIVersion.VERSION2``, MQTT 5, ``clean_start`` on
  every connect with session expiry 0 (the outbox, not a broker session, keeps what was not
  delivered, and a command sent while sitectl was away must not arrive hours later), the Last
  Will on ``…/status``, QoS 1, retained; ``reconnect_delay_set`` with exponential backoff;
  ``connect_async`` so that a broker that is down at start delays nothing.
- paho re-sends its in-memory queue after a reconnect; that queue is dropped on every
  CONNACK (``drop_out_messages``) and the uplink re-sends from the outbox instead, so the
  order of ``seq`` on the wire is the outbox's. Every connection has a generation number;
  `publish` for an older generation is refused, so nothing slips in between.
- Connection problems are log lines with a cause a person can act on (wrong password, a
  certificate not trusted, nothing listening), then a retry; never an exception.
- "Session taken over" (DISCONNECT 0x8E, MQTT 5 §3.1.4) means another client connected with our
  client id: almost always a second sitectl with the same site id. Reconnecting at once would
  take the session back and the two would knock each other off every second, so each takeover
  doubles the wait before the next attempt (with jitter, so that two controllers drift apart),
  up to ``takeover_backoff_s[1]``; a connection that then stays up for twice that long ends
  the suspicion and the normal reconnect delays apply again. Brokers that close the old
  connection without that DISCONNECT (mosquitto before 2.0.15, e.g. Debian 12's 2.0.11) give
  the uplink another clue: someone else's status on our status topic (`suspect_takeover`);
  after that, every close by the broker counts as a takeover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from sitectl.config import MqttConfig

__all__ = [
    "SESSION_TAKEN_OVER",
    "Acked",
    "Connected",
    "Disconnected",
    "Event",
    "MqttConnection",
    "Received",
    "describe_connect_error",
    "describe_refusal",
    "make_client",
]

log = logging.getLogger(__name__)
_paho = logging.getLogger("sitectl.uplink.paho")

#: DISCONNECT reason code "Session taken over" (MQTT 5 §3.14.2.1).
SESSION_TAKEN_OVER = 0x8E


# ------------------------------------------------------------------------------------------------
# Events (network thread → event loop)


@dataclass(frozen=True, slots=True)
class Connected:
    """The broker accepted the connection (CONNACK success)."""

    generation: int
    receive_maximum: int | None  # the broker's Receive Maximum (MQTT 5 §3.2.2.3.3), if sent


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection is gone (paho reconnects by itself)."""

    generation: int
    reason: str
    #: The broker said "session taken over": another client connected with our client id.
    taken_over: bool = False
    #: After a takeover: how long paho waits before it reconnects.
    retry_in_s: float | None = None


@dataclass(frozen=True, slots=True)
class Acked:
    """The broker acknowledged message `mid` (QoS 1: PUBACK; QoS 0: written)."""

    mid: int
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    """A message on a subscribed topic."""

    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None
    correlation_data: bytes | None


Event = Connected | Disconnected | Acked | Received


# ------------------------------------------------------------------------------------------------
# Diagnostics


_REFUSAL_HINTS = {
    0x84: "the broker does not speak MQTT 5",
    0x85: "the broker refuses the client id; check mqtt.client_id",
    0x86: "check mqtt.username and mqtt.password (or SITECTL_MQTT__PASSWORD)",
    # mosquitto answers a wrong password with 0x87, not 0x86.
    0x87: (
        "the broker does not authorize this client: check mqtt.username and mqtt.password "
        "(or SITECTL_MQTT__PASSWORD), and the client certificate"
    ),
    0x88: "the broker is unavailable",
    0x89: "the broker is busy",
    0x8A: "this client is banned by the broker",
    0x8C: "the broker wants another authentication method",
}


def describe_refusal(reason: ReasonCode) -> str:
    """A CONNACK refusal as a log line fragment with what to check."""
    hint = _REFUSAL_HINTS.get(reason.value)
    return f"{reason} (reason code 0x{reason.value:02X})" + (f"; {hint}" if hint else "")


def describe_connect_error(exc: BaseException | None, host: str, port: int) -> str:
    """Why a TCP or TLS connection attempt failed, in words that say what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the broker's certificate is not trusted ({exc.verify_message}); check "
            f"mqtt.ca_file and that mqtt.host '{host}' is a name in the certificate"
        )
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE" in reason:
            return (
                f"TLS: the broker refused our client certificate ({exc.reason}); check "
                "mqtt.cert_file and mqtt.key_file"
            )
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
            return f"TLS: {host}:{port} does not speak TLS ({exc.reason}); check mqtt.port/tls"
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: nothing listening on {host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host '{host}': {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return f"no answer from {host}:{port} (timed out)"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}"
    return str(exc) if exc is not None else "unknown error"


# ------------------------------------------------------------------------------------------------
# The paho client


def make_client(
    config: MqttConfig,
    *,
    client_id: str,
    will_topic: str,
    will_payload: bytes,
    window: int,
    reconnect_delay_s: tuple[float, float],
) -> mqtt.Client:
    """A configured paho client (not connected).

    Args:
        config: the ``mqtt`` section.
        client_id: the MQTT client id.
        will_topic, will_payload: the Last Will (``…/status``, ``offline``); QoS 1, retained.
        window: messages paho may have in flight; its own queue is bounded a little above.
        reconnect_delay_s: (first, longest) wait between attempts; doubles each time.

    Raises:
        OSError, ssl.SSLError: when a CA, certificate or key file cannot be loaded.
    """
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    # A bug in one of our callbacks must not kill paho's network thread; paho reports it.
    client.suppress_exceptions = True
    client.on_log = _paho_log
    client.will_set(will_topic, will_payload, qos=1, retain=True)
    client.max_inflight_messages_set(window)
    # Room for the status and command replies on top of the window; the outbox holds the rest.
    client.max_queued_messages_set(window + 128)
    client.reconnect_delay_set(reconnect_delay_s[0], reconnect_delay_s[1])  # type: ignore[arg-type]
    if config.username is not None:
        password = config.password.get_secret_value() if config.password is not None else None
        client.username_pw_set(config.username, password)
    if config.tls:
        client.tls_set(
            ca_certs=str(config.ca_file) if config.ca_file else None,
            certfile=str(config.cert_file) if config.cert_file else None,
            keyfile=str(config.key_file) if config.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    elif config.ca_file or config.cert_file:
        log.warning("mqtt.ca_file/cert_file are set but mqtt.tls is false: connecting without TLS")
    return client


def _paho_log(client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
    # paho logs "Client is not connected" as an error on every loop turn while reconnecting;
    # our own lines say what is wrong. Only an exception in one of our callbacks is an error.
    if text.startswith("Caught exception"):
        log.error("MQTT: %s", text)
    else:
        _paho.debug("%s", text)


class MqttConnection:
    """One broker connection, kept up by paho's network thread.

    Args:
        config: the ``mqtt`` section.
        loop: the event loop that receives events.
        on_events: called on the event loop with each burst of events, in order.
        client_id: the MQTT client id.
        will_topic: the status topic.
        will_payload: builds the Last Will payload (called again before every reconnect, so
            that its ``ts`` is that of the connection it guards).
        window: see `make_client`.
        reconnect_delay_s: see `make_client`.
        takeover_backoff_s: (first, longest) wait before reconnecting after "session taken
            over"; doubles with each takeover until a connection stays up for `stable_s`.

    Raises:
        OSError, ssl.SSLError: when a TLS file cannot be loaded.
    """

    def __init__(
        self,
        config: MqttConfig,
        loop: asyncio.AbstractEventLoop,
        on_events: Callable[[list[Event]], None],
        *,
        client_id: str,
        will_topic: str,
        will_payload: Callable[[], bytes],
        window: int,
        reconnect_delay_s: tuple[float, float],
        takeover_backoff_s: tuple[float, float] = (5.0, 300.0),
    ) -> None:
        self.config = config
        self.address = f"{config.host}:{config.port}"
        self._loop = loop
        self._on_events = on_events
        self._will_topic = will_topic
        self._will_payload = will_payload
        self.client = make_client(
            config,
            client_id=client_id,
            will_topic=will_topic,
            will_payload=will_payload(),
            window=window,
            reconnect_delay_s=reconnect_delay_s,
        )
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._gate = threading.Lock()  # generation changes vs. publish
        self._generation = 0
        self._connected = False
        self._events: deque[Event] = deque()
        self._events_lock = threading.Lock()
        self._delivery_scheduled = False
        self._failures = 0
        self._refused = False
        self._reconnect_delay_s = reconnect_delay_s
        self._takeover_backoff_s = takeover_backoff_s
        #: A connection that lasts this long after a takeover ends the backoff: the other
        #: client had a longest wait's chance to take the session back and did not.
        self.stable_s = 2 * takeover_backoff_s[1]
        #: Takeovers since the last stable connection (network thread; read for display).
        self.takeovers = 0
        self._suspect = False  # another controller seen on our topics (uplink.py)
        self._connected_mono: float | None = None
        self._subscriptions: dict[int, str] = {}  # SUBSCRIBE mid -> topic filter

    # Life cycle (event loop thread).

    def start(self) -> None:
        """Connect in the background and keep reconnecting; returns at once."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        # MQTT 5 §3.1.2.11.4: the broker must not send us anything larger (it drops it), so a
        # huge command costs the broker, not the depot controller.
        properties.MaximumPacketSize = self.config.max_packet_size
        self.client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=True,
            properties=properties,
        )
        self.client.loop_start()
        log.info("MQTT: connecting to %s as %s", self.address, self.client._client_id.decode())

    def disconnect(self) -> None:
        """Close the connection normally (the broker then does not publish the Will)."""
        with self._gate:
            self._generation += 1
        self.client.disconnect()

    def stop(self) -> None:
        """Stop the network thread (blocks until it ends; call from a worker thread)."""
        self.client.loop_stop()

    # Sending (event loop thread).

    def publish(
        self,
        generation: int,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties | None = None,
    ) -> int | None:
        """Hand one message to paho on connection `generation`.

        Returns:
            The message id, or ``None`` if the connection is not that generation any more or
            paho refused (not connected, queue full); the caller re-sends after `Connected`.

        Raises:
            ValueError: for a topic paho cannot publish to (wildcards, empty).
        """
        with self._gate:
            if generation != self._generation or not self._connected:
                return None
            info = self.client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties
            )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    def subscribe(self, generation: int, topic_filter: str) -> None:
        """Subscribe on connection `generation` (QoS 1, no retained messages, see retain flag)."""
        options = SubscribeOptions(
            qos=1,
            noLocal=True,
            retainAsPublished=True,  # so that a command published as retained can be refused
            retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND,
        )
        self._subscribe(generation, topic_filter, options)

    def watch(self, generation: int, topic: str) -> None:
        """Subscribe to one of our own topics to see who else publishes there.

        The retained message comes at once (with the retain flag set); live messages come
        without it. Not `noLocal`: with our client id, the other controller's messages would
        count as our own.
        """
        options = SubscribeOptions(
            qos=1,
            noLocal=False,
            retainAsPublished=False,
            retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE,
        )
        self._subscribe(generation, topic, options)

    def suspect_takeover(self) -> None:
        """Another controller uses our topics: take the next close by the broker as a takeover."""
        self._suspect = True

    def _subscribe(self, generation: int, topic_filter: str, options: SubscribeOptions) -> None:
        with self._gate:
            if generation != self._generation or not self._connected:
                return
            _, mid = self.client.subscribe(topic_filter, options=options)
            if mid is not None:
                self._subscriptions[mid] = topic_filter

    # paho callbacks (network thread).

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason.is_failure:
            self._failures += 1
            self._refused = True  # the disconnect that follows needs no second line
            log.error(
                "MQTT broker %s refused the connection: %s; retrying (attempt %d)",
                self.address,
                describe_refusal(reason),
                self._failures,
            )
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        with self._gate:
            # Whatever paho still holds was numbered by the outbox; the uplink re-sends it from
            # there, in order, so paho must not re-send its copy first.
            client.drop_out_messages()
            self._generation += 1
            self._connected = True
            generation = self._generation
        self._failures = 0
        self._connected_mono = time.monotonic()
        log.info("MQTT connected to %s", self.address)
        self._post(Connected(generation, receive_maximum))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` block, so the exception is at hand.
        self._failures += 1
        log.warning(
            "MQTT: cannot connect to %s: %s; retrying (attempt %d)",
            self.address,
            describe_connect_error(sys.exc_info()[1], self.config.host, self.config.port),
            self._failures,
        )
        self._refresh_will()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._gate:
            was_connected = self._connected
            self._connected = False
            self._generation += 1
            generation = self._generation
        if was_connected and self._takeover_ended():
            self.takeovers = 0
            self._suspect = False
            self.client.reconnect_delay_set(*self._reconnect_delay_s)  # type: ignore[arg-type]
        said = reason.value == SESSION_TAKEN_OVER
        if was_connected and (said or (self._suspect and reason.value != 0)):
            self._post(Disconnected(generation, str(reason), True, self._taken_over(said)))
        elif was_connected:
            if reason.value == 0:
                log.info("MQTT disconnected from %s", self.address)
            else:
                # paho reports a closed socket as "Unspecified error" (0x80).
                why = (
                    f"the broker sent DISCONNECT ({reason})"
                    if flags.is_disconnect_packet_from_server
                    else "the connection closed (broker stopped, network lost)"
                    if reason.value == 0x80
                    else str(reason)
                )
                log.warning("MQTT connection to %s lost: %s; reconnecting", self.address, why)
            self._post(Disconnected(generation, str(reason)))
        elif not self._refused:
            # Closed before any CONNACK: typically a TLS client certificate refused after the
            # handshake (TLS 1.3 reports that late), or not an MQTT broker at that address.
            self._failures += 1
            log.warning(
                "MQTT: %s closed the connection before accepting it%s: a refused client "
                "certificate (mqtt.cert_file, mqtt.key_file) or not an MQTT broker? "
                "retrying (attempt %d)",
                self.address,
                "" if reason.value == 0x80 else f" ({reason})",  # 0x80: paho's "socket closed"
                self._failures,
            )
        self._refused = False
        self._refresh_will()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        self._post(Acked(mid, not reason.is_failure, str(reason)))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a broker should not deliver that; do not die on it
            topic = message._topic.decode("utf-8", "replace")
        self._post(
            Received(
                topic, bytes(message.payload), bool(message.retain), response_topic, correlation
            )
        )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties,
    ) -> None:
        topic_filter = self._subscriptions.pop(mid, "?")
        for reason in reasons:
            if reason.is_failure:
                log.error(
                    "MQTT broker %s refused the subscription to %s: %s",
                    self.address,
                    topic_filter,
                    reason,
                )

    # Internals.

    def _takeover_ended(self) -> bool:
        return (
            (self.takeovers > 0 or self._suspect)
            and self._connected_mono is not None
            and time.monotonic() - self._connected_mono >= self.stable_s
        )

    def _taken_over(self, said: bool) -> float:
        """Say who took the session and set paho's next wait (it waits after this callback).

        Args:
            said: the broker said so (0x8E); otherwise it closed the connection while another
                controller was known to use our topics.
        """
        self.takeovers += 1
        first, longest = self._takeover_backoff_s
        delay = min(first * 2 ** (self.takeovers - 1), longest)
        # Jitter so that two controllers with the same delays do not stay in step.
        delay *= random.uniform(1.0, 1.25)
        # paho waits its min delay first and doubles from there if the attempts then fail.
        self.client.reconnect_delay_set(delay, max(delay, self._reconnect_delay_s[1]))  # type: ignore[arg-type]
        how = (
            "the broker says another client connected with our client id '{id}' and took over "
            "the session (reason 0x8E)"
            if said
            else "the broker closed our connection while another client with our client id "
            "'{id}' uses our topics: taken to be a session takeover"
        )
        log.error(
            "MQTT %s: %s; most likely a second sitectl with the same site id (a duplicate "
            "install or a copied config: give each depot its own site.id, or mqtt.client_id); "
            "reconnecting in %.1f s (takeover %d)",
            self.address,
            how.format(id=self.client._client_id.decode()),
            delay,
            self.takeovers,
        )
        return delay

    def _refresh_will(self) -> None:
        try:
            self.client.will_set(self._will_topic, self._will_payload(), qos=1, retain=True)
        except Exception:  # pragma: no cover - the old Will stays; not worth dying for
            log.exception("MQTT: cannot refresh the Last Will")

    def _post(self, event: Event) -> None:
        with self._events_lock:
            self._events.append(event)
            if self._delivery_scheduled:
                return
            self._delivery_scheduled = True
        # RuntimeError: the event loop is closed, sitectl is shutting down.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._events_lock:
            events = list(self._events)
            self._events.clear()
            self._delivery_scheduled = False
        if events:
            self._on_events(events)
