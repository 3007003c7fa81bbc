"""Two sitectl with one site id: "session taken over" is said, alarmed and backed off.

Both controllers use the client id ``sitectl-<site>``; the broker (the real test mosquitto)
closes the older connection whenever the other connects. Without a backoff each would take the
session back within its normal reconnect delay, forever. Debian 12's mosquitto (2.0.11) closes
without the DISCONNECT 0x8E that MQTT 5 asks for (sent from 2.0.15 on), so the real-broker test
goes through the other clue, another process's status on our status topic; the 0x8E path is
tested on the connection's callback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sitectl.state import SiteState
from sitectl.store import Store
from sitectl.uplink.client import Disconnected, MqttConnection
from sitectl.uplink.uplink import TAKEOVER_ALARM, Uplink
from tests.helpers import wait_for
from tests.uplink.support import Running, depot_config, run_uplink, unique_prefix

FIRST_S, LONGEST_S = 0.3, 1.2
OPTIONS: dict[str, Any] = {
    "reconnect_delay_s": (0.1, 0.5),
    "takeover_backoff_s": (FIRST_S, LONGEST_S),
}


class Timeline:
    """When one uplink's paho client was accepted and when it was taken over (monotonic)."""

    def __init__(self, running: Running) -> None:
        assert running.uplink.connection is not None
        client = running.uplink.connection.client
        self.connects: list[float] = []
        self.takeovers: list[float] = []
        connection = running.uplink.connection
        on_connect, on_disconnect = client.on_connect, client.on_disconnect

        def connected(*args: Any) -> None:
            self.connects.append(time.monotonic())
            on_connect(*args)

        def disconnected(*args: Any) -> None:
            at, before = time.monotonic(), connection.takeovers
            on_disconnect(*args)
            if connection.takeovers > before:
                self.takeovers.append(at)

        client.on_connect = connected
        client.on_disconnect = disconnected

    def waits(self) -> list[float]:
        """For every takeover, how long until the next accepted connection."""
        return [
            min(c for c in self.connects if c > t) - t
            for t in self.takeovers
            if any(c > t for c in self.connects)
        ]


def alarm_events(capture: Any) -> list[tuple[str, str]]:
    return [
        (m.data["event"], m.data["subject"])
        for m in capture.on("alarms")
        if m.data.get("code") == TAKEOVER_ALARM
    ]


async def test_two_controllers_with_one_site_id_back_off(
    tmp_path: Path, mosquitto, capture_factory, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="sitectl")
    prefix = unique_prefix()
    capture = capture_factory(mosquitto.host, mosquitto.port, prefix=prefix)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    config_a, config_b = (depot_config(d, mosquitto.host, mosquitto.port, prefix) for d in dirs)
    async with run_uplink(config_a, **OPTIONS) as a:
        await a.connected()
        line_a = Timeline(a)
        async with run_uplink(config_b, **OPTIONS) as b:
            assert b.uplink.client_id == a.uplink.client_id == "sitectl-up-test"
            await wait_for(lambda: b.uplink.connection is not None, message="b started")
            line_b = Timeline(b)
            await wait_for(
                lambda: len(line_a.takeovers) >= 3 and len(line_b.takeovers) >= 3,
                timeout=30,
                message="three takeovers each",
            )
            for running in (a, b):
                alarm = running.state.alarms.get((TAKEOVER_ALARM, "mqtt"))
                assert alarm is not None
                assert "another sitectl publishes as site 'up-test'" in alarm.text
            # Each takeover doubles the wait before taking the session back (jitter only adds).
            for line in (line_a, line_b):
                waits = line.waits()[:3]
                assert len(waits) >= 2
                for k, wait in enumerate(waits):
                    assert wait >= min(FIRST_S * 2**k, LONGEST_S) * 0.95, line.waits()
            # Not a fight every 0.1 s (the normal reconnect delay): few connections in all.
            span = max(line_a.connects + line_b.connects) - min(line_a.takeovers)
            assert len(line_a.connects) + len(line_b.connects) <= 2 + span / FIRST_S
        # b stopped: a gets the session and keeps it for the stable time; the alarm clears.
        await wait_for(
            lambda: (TAKEOVER_ALARM, "mqtt") not in a.state.alarms,
            timeout=LONGEST_S * 1.25 + 2 * LONGEST_S + 5,
            message="the alarm to clear",
        )
        await wait_for(
            lambda: ("cleared", "mqtt") in alarm_events(capture), message="the clear published"
        )
    assert ("raised", "mqtt") in alarm_events(capture)
    lines = [r for r in caplog.records if "(takeover " in r.getMessage()]
    taken = len(line_a.takeovers) + len(line_b.takeovers)
    assert len(lines) == taken  # one line per takeover, none of the generic "connection lost"
    assert all(r.levelno == logging.ERROR for r in lines)
    text = lines[0].getMessage()
    assert "client id 'sitectl-up-test'" in text and "second sitectl with the same site id" in text
    assert "reconnecting in" in text
    # The first clue, once per controller: another process's status on our topic.
    clues = [r for r in caplog.records if "another controller publishes on" in r.getMessage()]
    assert len(clues) == 2
    # Only the first close of each, before it knew of the other, is a plain "connection lost".
    lost = [r for r in caplog.records if "lost: the connection closed" in r.getMessage()]
    assert len(lost) <= 2


async def test_the_previous_runs_status_is_no_evidence(tmp_path: Path, mosquitto) -> None:
    """A restart finds the last run's retained status (another started_at): not a conflict."""
    config = depot_config(tmp_path, mosquitto.host, mosquitto.port, unique_prefix())
    async with run_uplink(config, **OPTIONS) as first:
        await first.connected()
        await first.drained()
    async with run_uplink(config, **OPTIONS) as second:
        # Before the uplink's task first runs (nothing awaited yet), so nothing is missed.
        seen: list[bool] = []
        status_seen = second.uplink._status_seen

        def spy(message: Any) -> None:
            seen.append(message.retain)
            status_seen(message)

        second.uplink._status_seen = spy  # type: ignore[method-assign]
        await second.connected()
        await wait_for(lambda: True in seen, message="the retained status")
        assert (TAKEOVER_ALARM, "mqtt") not in second.state.alarms
        assert second.uplink.connection is not None
        assert not second.uplink.connection._suspect


async def test_session_taken_over_0x8e_backs_off_and_alarms(tmp_path: Path, caplog) -> None:
    """A broker that says 0x8E (MQTT 5 §3.1.4; mosquitto 2.0.15+, EMQX, HiveMQ): backoff at once."""
    config = depot_config(tmp_path, "127.0.0.1", 1, unique_prefix())
    store = Store(config.storage.path, config.storage.synchronous)
    try:
        state = SiteState(config)
        uplink = Uplink(config, state, store, **OPTIONS)
        uplink._loop = asyncio.get_running_loop()
        events: list[Any] = []

        def on_events(burst: list[Any]) -> None:
            events.extend(burst)
            uplink._on_events(burst)

        connection = MqttConnection(
            config.mqtt,
            uplink._loop,
            on_events,
            client_id=uplink.client_id,
            will_topic="t/status",
            will_payload=lambda: b"{}",
            window=10,
            reconnect_delay_s=(0.1, 0.5),
            takeover_backoff_s=(FIRST_S, LONGEST_S),
        )
        uplink.connection = connection
        client = connection.client
        accepted = ReasonCode(PacketTypes.CONNACK, identifier=0)
        taken = ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)
        from_server = mqtt.DisconnectFlags(is_disconnect_packet_from_server=True)
        delays = []
        for _ in range(4):
            connection._on_connect(client, None, mqtt.ConnectFlags(False), accepted, None)
            connection._on_disconnect(client, None, from_server, taken, None)
            delays.append(client._reconnect_min_delay)
        await wait_for(lambda: len(events) == 8, message="events delivered")
        gone = [e for e in events if isinstance(e, Disconnected)]
        assert all(e.taken_over for e in gone)
        assert [e.retry_in_s for e in gone] == delays
        for k, delay in enumerate(delays):
            wanted = min(FIRST_S * 2**k, LONGEST_S)
            assert wanted <= delay <= wanted * 1.25
        assert (TAKEOVER_ALARM, "mqtt") in state.alarms
        lines = [r.getMessage() for r in caplog.records if "(takeover " in r.getMessage()]
        assert len(lines) == 4 and "took over the session (reason 0x8E)" in lines[0]
        # A connection that lasted the stable time: the next plain loss waits the normal delay.
        connection._on_connect(client, None, mqtt.ConnectFlags(False), accepted, None)
        assert connection._connected_mono is not None
        connection._connected_mono -= connection.stable_s
        lost = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80)
        connection._on_disconnect(client, None, mqtt.DisconnectFlags(False), lost, None)
        assert connection.takeovers == 0
        assert (client._reconnect_min_delay, client._reconnect_max_delay) == (0.1, 0.5)
    finally:
        store.close()
