"""Helpers for the MQTT uplink tests: a mosquitto we can stop and restart, a capturing
subscriber, the test depot, a running uplink, and a state with something in every field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import textwrap
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.meter import Quality, Reading
from sitectl.config import Config, load_config
from sitectl.ocpp.observe import hash_id_tag
from sitectl.state import (
    Alarm,
    CircuitStatus,
    LimitOverride,
    SessionState,
    Severity,
    SiteState,
)
from sitectl.store import Store
from sitectl.uplink.uplink import Uplink
from tests.helpers import free_port, wait_for, wait_for_sync

__all__ = [
    "BROKER_PASSWORD",
    "PREFIX",
    "SECRET_TAG",
    "Capture",
    "Captured",
    "Mosquitto",
    "Running",
    "assert_gapless",
    "depot_config",
    "rich_state",
    "run_uplink",
    "seq_of",
    "unique_prefix",
]

PREFIX = "sitectl/up-test"
BROKER_PASSWORD = "broker-password-0123456789"


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        pytest.fail("mosquitto is not installed; run scripts/test (it installs it)")
    return found


class Mosquitto:
    """A mosquitto process on a fixed port that a test can stop and start again.

    Args:
        workdir: its config, log and persistence files.
        port: the listener port (kept across restarts).
        listener: extra listener lines (TLS, authentication).
        persistence: keep sessions and queued messages across a restart (the capturing
            subscriber's session survives, so nothing published meanwhile is missed).
    """

    def __init__(
        self, workdir: Path, port: int, listener: str = "", persistence: bool = False
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.host = "127.0.0.1"
        self.log = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        lines = [
            # Run as whoever we are: as root mosquitto would drop to a user that cannot read
            # the test's temporary files.
            "user root",
            f"listener {port} 127.0.0.1",
            listener or "allow_anonymous true",
            f"log_dest file {self.log}",
            "log_type all",
            "max_queued_messages 0",
        ]
        if persistence:
            lines += ["persistence true", f"persistence_location {workdir}/"]
        else:
            lines.append("persistence false")
        self.conf.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                return True
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            return False

        wait_for_sync(up, timeout=10, message="mosquitto to listen")
        if process.poll() is not None:
            assert process.stderr is not None
            pytest.fail(f"mosquitto exited: {process.stderr.read().decode(errors='replace')}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# ------------------------------------------------------------------------------------------------
# A subscriber that records everything under the prefix


@dataclass
class Captured:
    """One message a `Capture` received."""

    topic: str
    payload: bytes
    retain: bool
    properties: Any

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.payload)


class Capture:
    """A paho subscriber on ``<prefix>/#`` that records every message.

    With ``persistent=True`` its session outlives a broker restart (the broker must have
    persistence): messages published while it reconnects are queued for it, not lost.
    """

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str = PREFIX,
        persistent: bool = False,
        client_id: str | None = None,
    ) -> None:
        self.prefix = prefix
        self.topic_filter = f"{prefix}/#"
        self.lock = threading.Lock()
        self.messages: list[Captured] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"capture-{free_port()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        properties = Properties(PacketTypes.CONNECT)
        if persistent:
            properties.SessionExpiryInterval = 600
        self.client.connect(host, port, clean_start=not persistent, properties=properties)
        self.client.loop_start()
        assert self.subscribed.wait(5), "capture did not subscribe"

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        if message.topic.startswith(f"{self.prefix}/reply/"):
            return  # command replies (no seq); the tests' requesters read them
        with self.lock:
            self.messages.append(
                Captured(message.topic, bytes(message.payload), message.retain, message.properties)
            )

    def on(self, suffix: str) -> list[Captured]:
        """Messages on ``<prefix>/<suffix>`` in arrival order."""
        topic = f"{self.prefix}/{suffix}"
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def all(self) -> list[Captured]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------------------------------
# A depot and a running uplink


DEPOT = """\
site:
  id: up-test
  limit_kw: 100
  phase_limit_a: 160
  meter: grid-meter
  timezone: Europe/Berlin
circuits:
  - {{id: feeder, limit_a: [100, 100, 90]}}
chargers:
  - {{id: CP1, circuit: feeder, max_current_a: 32, connectors: 2,
     password: cp1-password-0123456789}}
  - {{id: "CP+2", circuit: feeder, max_current_a: 32, password: cp2-password-0123456789}}
devices:
  - {{name: grid-meter, profile: eastron-sdm630, host: 127.0.0.1, port: 1502, unit_id: 1}}
ocpp:
  listen_host: 127.0.0.1
storage:
  path: {storage}
http:
  enabled: false
mqtt:
{mqtt}
"""


def depot_config(
    directory: Path, host: str, port: int, prefix: str = PREFIX, **mqtt: Any
) -> Config:
    """The test depot with its broker at host:port, its topic prefix and ``mqtt`` settings."""
    settings = {
        "host": host,
        "port": port,
        "topic_prefix": prefix,
        "summary_period_s": 0.2,
        **mqtt,
    }
    text = DEPOT.format(
        storage=directory / "sitectl.sqlite",
        mqtt=textwrap.indent(
            "\n".join(
                f"{k}: {json.dumps(str(v) if isinstance(v, Path) else v)}"
                for k, v in settings.items()
            ),
            "  ",
        ),
    )
    path = directory / "site.yaml"
    path.write_text(text)
    config, _ = load_config(path, environ={})
    return config


@dataclass
class Running:
    """An `Uplink` running in a task, with its state and store."""

    config: Config
    state: SiteState
    store: Store
    uplink: Uplink
    task: asyncio.Task[None]

    async def connected(self, timeout: float = 10) -> None:
        await wait_for(lambda: self.uplink.connected, timeout=timeout, message="uplink connected")

    async def drained(self, timeout: float = 10) -> None:
        await wait_for(
            lambda: self.uplink.outbox.count == 0 and not self.uplink._pending,
            timeout=timeout,
            message="outbox drained",
        )

    async def stop(self) -> None:
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@contextlib.asynccontextmanager
async def run_uplink(config: Config, **kwargs: Any) -> AsyncIterator[Running]:
    """Run an `Uplink` on `config` (store opened here) until the block ends."""
    store = Store(config.storage.path, config.storage.synchronous)
    state = SiteState(config)
    kwargs.setdefault("reconnect_delay_s", (0.1, 0.5))
    uplink = Uplink(config, state, store, **kwargs)
    task = asyncio.create_task(uplink.run(), name="uplink")
    running = Running(config, state, store, uplink, task)
    try:
        yield running
    finally:
        await running.stop()
        store.close()


# ------------------------------------------------------------------------------------------------
# A state with something in every field


SECRET_TAG = "RFID-04A2B9C1D3"


def rich_state(config: Config, now: datetime | None = None) -> SiteState:
    """The test depot in full flow: a session, measurements, readings, control, alarms."""
    now = now or datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    state = SiteState(config, clock=lambda: now)
    cp1 = state.chargers["CP1"]
    cp1.connected = True
    cp1.upstream_connected = True
    cp1.vendor, cp1.model, cp1.firmware_version = "Kempower", "T500", "1.4.2"
    cp1.limit_a = 32.0
    cp1.compliance = "noncompliant"
    connector = cp1.connectors[1]
    connector.status = "Charging"
    connector.current_a = (31.5, 31.9, None)
    connector.power_kw = 14.7
    connector.soc_percent = 55.5
    connector.measured_at = now
    connector.limit_a = 32.0
    connector.session = SessionState(
        session_id="CP1/1234",
        connector_id=1,
        started_at=now - timedelta(hours=1),
        transaction_id="1234",
        id_tag_hash=hash_id_tag(config.site.id, SECRET_TAG),
        meter_start_wh=1000.0,
        energy_wh=12_345.0,
        energy_wanted_kwh=80.0,
        departure=now + timedelta(hours=5),
        charger_id="CP1",
    )
    cp1.connectors[2].status = "Faulted"
    cp1.connectors[2].error_code = "GroundFailure"
    cp1.connectors[2].power_kw = float("nan")  # a charger's garbage must become null
    state.readings["grid-meter"] = Reading(
        device="grid-meter",
        ts=now,
        mono=0.0,
        quality=Quality.OK,
        current_a=(120.0, 118.5, 119.25),
        power_total_kw=82.5,
    )
    state.readings["tx-meter"] = Reading(
        device="tx-meter", ts=now, mono=0.0, quality=Quality.STALE, error="no answer"
    )
    state.control.cycles = 42
    state.control.last_cycle_at = now
    state.control.last_solve_s = 0.0314
    state.control.method = "fallback"
    state.control.status = "time_limit"
    state.control.fallback_count = 3
    state.control.consecutive_fallbacks = 2
    state.control.sessions_charging = 1
    state.control.sessions_paused = 0
    state.control.circuits["grid"] = CircuitStatus(
        limit_a=(150.0, 150.0, 150.0),
        measured_a=(120.0, 118.5, 119.25),
        non_ev_a=(88.5, 86.6, 119.25),
        planned_a=(120.0, 118.5, 119.25),
        meter_state="measured",
    )
    state.overrides["grid"] = LimitOverride(
        "grid", (150.0, 150.0, 150.0), now + timedelta(hours=1), source="mqtt"
    )
    # A grid operator's soft kW window in force, one announced, a silent source, and the
    # interventions they made (issue #20).
    from sitectl.limits import GridLimit, LimitEvent

    dso = GridLimit(
        "grid",
        "openadr:p1",
        now - timedelta(minutes=10),
        now + timedelta(hours=2),
        limit_kw=80.0,
        hard=False,
        reason="import capacity",
        ref="evt-1",
    )
    later = GridLimit("grid", "openadr:p1", now + timedelta(hours=3), limit_a=(90.0, 90.0, 90.0))
    state.limits.publish("openadr:p1", [dso, later], now - timedelta(minutes=10))
    state.limits.publish("14a:relay", [], now - timedelta(minutes=5), valid_until=now)
    changed = GridLimit(dso.node, dso.source, dso.start, dso.end, limit_kw=70.0, ref="evt-1")
    state.limit_events.extend(
        [
            LimitEvent(now - timedelta(minutes=10), "started", dso, seq=1),
            LimitEvent(now - timedelta(minutes=5), "changed", changed, dso, seq=2),
            LimitEvent(now, "ended", changed, seq=3),
        ]
    )
    state.alarms[("charger_noncompliant", "CP1")] = Alarm(
        "charger_noncompliant", "CP1", Severity.WARNING, "draws 40 A over its 32 A limit", now
    )
    ended = SessionState(
        session_id="CP+2/77",
        connector_id=1,
        started_at=now - timedelta(hours=3),
        transaction_id="77",
        id_tag_hash=hash_id_tag(config.site.id, SECRET_TAG),
        energy_wh=50_000.0,
        charger_id="CP+2",
        ended_at=now - timedelta(minutes=5),
    )
    state.ended_sessions.append(ended)
    return state


def seq_of(message: Captured) -> int | None:
    """The message's seq; ``None`` for the Last Will and for what is not ours (commands)."""
    try:
        data = message.data
    except ValueError:
        return None
    return data.get("seq") if isinstance(data, dict) else None


def assert_gapless(messages: list[Captured]) -> list[Captured]:
    """Every seq from the first to the last, in arrival order; exact duplicates allowed.

    Returns:
        The messages without duplicates (and without the Last Will, which has no seq).
    """
    unique: list[Captured] = []
    seen: dict[int, bytes] = {}
    for message in messages:
        seq = seq_of(message)
        if seq is None:
            continue
        if seq in seen:
            assert seen[seq] == message.payload, f"seq {seq} twice with different payloads"
            continue
        if unique:
            assert seq == seq_of(unique[-1]) + 1, (
                f"after seq {seq_of(unique[-1])} came {seq} ({message.topic})"
            )
        seen[seq] = message.payload
        unique.append(message)
    return unique


_counter = iter(range(1, 10**9))


def unique_prefix() -> str:
    """A topic prefix no other test uses on the shared broker (retained messages stay)."""
    return f"sitectl/up-test-{next(_counter)}-{free_port()}"
