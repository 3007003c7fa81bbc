"""The uplink against a real mosquitto: birth, summaries, state changes, commands, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sitectl.control.phase_test import PhaseTests
from sitectl.firmware import FirmwareCache, FirmwareServer, RolloutManager
from sitectl.state import SessionState, Severity
from sitectl.uplink.client import Received
from tests.helpers import wait_for
from tests.uplink.support import (
    Capture,
    assert_gapless,
    depot_config,
    run_uplink,
    unique_prefix,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "sitectl" / "uplink" / "schemas"
KIND_OF_TOPIC = {"status": "status", "summary": "summary", "sessions": "session", "alarms": "alarm"}


def schema_errors(capture: Capture) -> list[str]:
    errors = []
    for message in capture.all():
        level = message.topic[len(capture.prefix) + 1 :].split("/")[0]
        kind = "charger" if level == "chargers" else KIND_OF_TOPIC.get(level)
        if kind is None:
            continue
        schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
        errors += [
            f"{message.topic}: {e.message}"
            for e in jsonschema.Draft202012Validator(schema).iter_errors(message.data)
        ]
    return errors


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def capture(mosquitto, capture_factory, prefix) -> Capture:
    return capture_factory(mosquitto.host, mosquitto.port, prefix=prefix)


@pytest.fixture
def config(tmp_path, mosquitto, prefix):
    return depot_config(tmp_path, mosquitto.host, mosquitto.port, prefix)


async def test_birth_then_summaries_with_consecutive_seq(config, capture, capture_factory) -> None:
    async with run_uplink(config) as running:
        await wait_for(lambda: len(capture.on("summary")) >= 4, message="four summaries")
        status = capture.on("status")[0].data
        assert status["status"] == "online"
        assert status["version"] and status["started_at"].endswith("Z")
        assert status["epoch"] == running.store.epoch  # issue #22.13: resets are visible
        unique = assert_gapless(capture.all())
        assert unique[0].topic.endswith("/status")  # the birth comes first
        assert [seq for seq in (m.data["seq"] for m in unique)] == list(range(1, len(unique) + 1))
        # A late subscriber finds the status and every charger's state retained.
        late = capture_factory(config.mqtt.host, config.mqtt.port, prefix=config.topic_prefix)
        await wait_for(lambda: len([m for m in late.all() if m.retain]) >= 3, message="retained")
        retained = {m.topic: m.data for m in late.all() if m.retain}
        assert retained[f"{config.topic_prefix}/status"]["status"] == "online"
        assert retained[f"{config.topic_prefix}/chargers/CP1"]["connectors"][0]["status"]
        assert f"{config.topic_prefix}/chargers/CP%2B2" in retained
        assert not schema_errors(capture)
        await running.stop()
    offline = capture.on("status")[-1].data
    assert offline["status"] == "offline" and offline["reason"] == "shutdown"
    assert_gapless(capture.all())


async def test_changes_are_published_at_once(config, capture) -> None:
    async with run_uplink(config) as running:
        await running.connected()
        state = running.state
        await wait_for(lambda: capture.on("chargers/CP1"), message="CP1's first state")

        state.chargers["CP1"].connected = True
        state.notify("charger_connected", "CP1")
        await wait_for(
            lambda: capture.on("chargers/CP1")[-1].data["connected"], message="CP1 connected"
        )

        connector = state.chargers["CP1"].connectors[1]
        connector.session = SessionState(
            "CP1/55", 1, state.clock(), "55", id_tag_hash="0123456789abcdef", charger_id="CP1"
        )
        state.notify("session_started", "CP1/55")
        await wait_for(lambda: capture.on("sessions"), message="session started")
        started = capture.on("sessions")[0].data
        assert (started["event"], started["session_id"], started["energy_kwh"]) == (
            "started",
            "CP1/55",
            0.0,
        )

        session = connector.session
        session.energy_wh = 21_000.0
        session.ended_at = state.clock()
        connector.session = None
        state.ended_sessions.append(session)
        state.notify("session_ended", "CP1/55")
        await wait_for(lambda: len(capture.on("sessions")) == 2, message="session stopped")
        stopped = capture.on("sessions")[1].data
        assert stopped["event"] == "stopped" and stopped["energy_kwh"] == 21.0
        assert "duration_s" in stopped
        await wait_for(
            lambda: (
                capture.on("summary") and capture.on("summary")[-1].data["energy_today_kwh"] == 21
            ),
            message="energy today in the summary",
        )

        state.raise_alarm("meter_stale", "grid-meter", Severity.WARNING, "no reading for 10 s")
        state.clear_alarm("meter_stale", "grid-meter")
        await wait_for(lambda: len(capture.on("alarms")) == 2, message="alarm raised, cleared")
        raised, cleared = (m.data for m in capture.on("alarms"))
        assert (raised["event"], raised["code"], raised["subject"]) == (
            "raised",
            "meter_stale",
            "grid-meter",
        )
        assert cleared["event"] == "cleared" and cleared["text"] == "no reading for 10 s"

        # A measurement alone waits for the summary period, and only a change is published.
        states_before = len(capture.on("chargers/CP1"))
        connector.power_kw = 11.0
        state.notify("measurement", "CP1/1")
        await wait_for(lambda: len(capture.on("chargers/CP1")) == states_before + 1, message="draw")
        assert capture.on("chargers/CP1")[-1].data["power_kw"] == 11.0
        summaries = len(capture.on("summary"))
        await wait_for(lambda: len(capture.on("summary")) >= summaries + 3, message="summaries")
        assert len(capture.on("chargers/CP1")) == states_before + 1  # nothing changed since
        assert_gapless(capture.all())
        assert not schema_errors(capture)


async def test_a_broker_down_at_start_delays_nothing(tmp_path, broker) -> None:
    broker.stop()
    config = depot_config(tmp_path, broker.host, broker.port, outage_summary_period_s=60)
    started = time.monotonic()
    async with run_uplink(config) as running:
        # The event loop keeps turning while paho retries in its thread: a timer due in 0.2 s
        # fires on time.
        fired = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, fired.set)
        await asyncio.wait_for(fired.wait(), 1.0)
        assert time.monotonic() - started < 1.0
        await wait_for(lambda: running.uplink.outbox.stats()["thinned_summaries"] >= 2)
        assert not running.task.done()
        broker.start()
        await running.connected()
        await running.drained()
        assert running.uplink.outbox.seq >= 4  # charger states, a summary, the birth


# ------------------------------------------------------------------------------------------------
# Commands


class Requester:
    """An MQTT 5 client that sends commands with a ResponseTopic and CorrelationData."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.prefix = prefix
        self.reply_topic = f"{prefix}/reply/test"  # under the default allowed reply prefix
        self.replies: dict[bytes, dict] = {}
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(self.reply_topic, qos=1)
        assert subscribed.wait(5)
        self._n = 0

    def _on_message(self, client, userdata, message) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        with self.lock:
            self.replies[correlation] = json.loads(message.payload)

    def send(
        self,
        name: str,
        payload: bytes | dict,
        retain: bool = False,
        topic: str | None = None,
        response: bool = True,
    ) -> bytes:
        self._n += 1
        correlation = f"req-{self._n}".encode()
        properties = Properties(PacketTypes.PUBLISH)
        if response:
            properties.ResponseTopic = self.reply_topic
        properties.CorrelationData = correlation
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(
            topic or f"{self.prefix}/cmd/{name}", data, qos=1, retain=retain, properties=properties
        ).wait_for_publish(5)
        return correlation

    async def reply(self, correlation: bytes) -> dict:
        await wait_for(lambda: correlation in self.replies, message=f"reply to {correlation}")
        with self.lock:
            return self.replies[correlation]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def commanding(config, mosquitto, capture):
    requester = Requester(mosquitto.host, mosquitto.port, config.topic_prefix)
    async with run_uplink(config) as running:
        await running.connected()
        await wait_for(lambda: capture.on("status"), message="birth")
        yield running, requester
    requester.close()


async def test_command_override_and_clear(commanding, caplog) -> None:
    running, requester = commanding
    with caplog.at_level(logging.INFO, logger="sitectl.uplink"):
        reply = await requester.reply(
            requester.send("override", {"node": "feeder", "limit_a": 50, "expires_in_s": 300})
        )
    assert reply["ok"] is True and reply["limit_a"] == [50.0, 50.0, 50.0]
    assert reply["ts"].endswith("Z")
    assert running.state.overrides["feeder"].limit_a == (50.0, 50.0, 50.0)
    assert "MQTT command override: ok" in caplog.text
    # On the limit board as the source operator:mqtt, until it expires.
    (window,) = running.state.limits.in_force(running.state.clock())
    assert (window.source, window.node, window.limit_a) == ("operator:mqtt", "feeder", (50.0,) * 3)
    assert window.end == running.state.overrides["feeder"].expires_at
    reply = await requester.reply(requester.send("clear_override", {"node": "feeder"}))
    assert reply == {**reply, "ok": True, "cleared": True}
    assert "feeder" not in running.state.overrides
    assert running.state.limits.sources() == []


async def test_command_session_needs(commanding) -> None:
    running, requester = commanding
    connector = running.state.chargers["CP1"].connectors[2]
    connector.session = SessionState("CP1/9", 2, running.state.clock(), "9", charger_id="CP1")
    departure = (datetime.now(UTC) + timedelta(hours=4)).replace(microsecond=0)
    reply = await requester.reply(
        requester.send(
            "session_needs",
            {
                "charger": "CP1",
                "connector": 2,
                "departure": departure.isoformat(),
                "energy_kwh": 90,
            },
        )
    )
    assert reply["ok"] is True, reply
    assert connector.session.departure == departure
    assert connector.session.energy_wanted_kwh == 90


async def test_command_republish(commanding, capture) -> None:
    _, requester = commanding
    births = len(capture.on("status"))
    states = len(capture.on("chargers/CP1"))
    reply = await requester.reply(requester.send("republish", b""))
    assert reply == {**reply, "ok": True, "status": True, "chargers": 2, "summary": True}
    await wait_for(lambda: len(capture.on("status")) == births + 1, message="birth again")
    await wait_for(lambda: len(capture.on("chargers/CP1")) == states + 1, message="CP1 again")
    assert_gapless(capture.all())


async def test_command_firmware_reaches_the_rollouts(commanding, tmp_path) -> None:
    running, requester = commanding
    config = running.config
    firmware = config.firmware.model_copy(
        update={"base_url": "http://192.0.2.1:8080", "cache_dir": tmp_path / "fw"}
    )
    fw_config = config.model_copy(update={"firmware": firmware})
    cache = FirmwareCache(running.store, firmware)

    async def call(*args, **kwargs):
        raise AssertionError("a charger was called")

    running.uplink.rollouts = RolloutManager(
        running.store, running.state, cache, FirmwareServer(cache, fw_config), call, fw_config
    )
    url = "https://vendor.example/t500-2.1.bin"
    reply = await requester.reply(
        requester.send("firmware", {"action": "start", "url": url, "targets": ["CP1"]})
    )
    assert reply["ok"] is True, reply
    assert reply["rollout"]["chargers"][0] == {**reply["rollout"]["chargers"][0], "state": "queued"}
    listed = await requester.reply(requester.send("firmware", {"action": "list"}))
    assert [r["url"] for r in listed["rollouts"]] == [url]
    refused = await requester.reply(
        requester.send("firmware", {"action": "start", "url": url, "targets": ["CP1"]})
    )
    assert refused["ok"] is False and refused["field"] == "targets", refused
    stopped = await requester.reply(
        requester.send("firmware", {"action": "stop", "rollout_id": reply["rollout"]["id"]})
    )
    assert stopped["rollout"]["state"] == "stopped"


async def test_command_detect_phases_reaches_the_phase_tests(commanding) -> None:
    running, requester = commanding
    running.uplink.phase_tests = PhaseTests(running.config, running.state)
    running.state.chargers["CP1"].connected = True
    reply = await requester.reply(requester.send("detect_phases", {"charger": "CP1"}))
    assert reply["ok"] is True, reply
    assert reply["test"]["state"] == "no_session" and reply["test"]["done"] is True
    status = await requester.reply(
        requester.send("detect_phases", {"charger": "CP1", "action": "status"})
    )
    assert status["test"]["requested_at"] == reply["test"]["requested_at"]


@pytest.mark.parametrize(
    ("name", "payload", "kwargs", "field", "words"),
    [
        ("override", {"node": "grid", "limit_a": 500, "expires_in_s": 60}, {}, "limit_a", "rating"),
        ("override", b"{not json", {}, None, "not valid JSON"),
        ("override", b"[]", {}, None, "JSON object"),
        ("override", {"node": "grid", "limit_a": "many"}, {}, "limit_a", "number"),
        ("override", b"{" + b" " * 20_000 + b"}", {}, None, "at most"),
        ("reboot", {}, {}, None, "unknown command 'reboot'"),
        ("firmware", {"action": "list"}, {}, None, "not available"),
        ("detect_phases", {"charger": "CP1"}, {}, None, "not available"),
        (
            "override",
            {"node": "grid", "limit_a": 1, "expires_in_s": 9},
            {"retain": True},
            None,
            "retained",
        ),
        (
            "session_needs",
            {"charger": "CP1", "connector": 1, "energy_kwh": 5},
            {},
            "connector",
            "no session",
        ),
    ],
)
async def test_command_refusals(commanding, caplog, name, payload, kwargs, field, words) -> None:
    running, requester = commanding
    with caplog.at_level(logging.WARNING, logger="sitectl.uplink"):
        reply = await requester.reply(requester.send(name, payload, **kwargs))
    assert reply["ok"] is False and reply["field"] == field and words in reply["error"], reply
    assert "refused" in caplog.text
    assert running.state.overrides == {}
    assert not running.task.done()
    if kwargs.get("retain"):  # clean up the retained command on the shared broker
        requester.client.publish(
            f"{requester.prefix}/cmd/{name}", b"", retain=True
        ).wait_for_publish(5)


async def test_command_from_outside_the_prefix_is_refused(commanding, caplog) -> None:
    running, requester = commanding
    # The broker only delivers what we subscribed to; hand the uplink a stray message directly.
    with caplog.at_level(logging.WARNING, logger="sitectl.uplink"):
        running.uplink._on_events(
            [Received("elsewhere/cmd/override", b"{}", False, requester.reply_topic, b"stray")]
        )
        reply = await requester.reply(b"stray")
    assert reply["ok"] is False and "outside" in reply["error"]
    assert "refused" in caplog.text


async def test_command_without_response_topic_is_ignored(commanding, caplog) -> None:
    running, requester = commanding
    with caplog.at_level(logging.WARNING, logger="sitectl.uplink"):
        requester.send(
            "override", {"node": "grid", "limit_a": 1, "expires_in_s": 9}, response=False
        )
        await wait_for(lambda: "without a ResponseTopic" in caplog.text, message="log line")
    assert running.state.overrides == {}


async def test_commands_disabled(tmp_path, mosquitto, capture, prefix, caplog, monkeypatch) -> None:
    config = depot_config(tmp_path, mosquitto.host, mosquitto.port, prefix, commands_enabled=False)
    requester = Requester(mosquitto.host, mosquitto.port, prefix)
    try:
        with caplog.at_level(logging.INFO, logger="sitectl.uplink"):
            async with run_uplink(config) as running:
                await running.connected()
                assert "MQTT commands are disabled" in caplog.text
                requester.send("override", {"node": "grid", "limit_a": 1, "expires_in_s": 9})
                summaries = len(capture.on("summary"))
                await wait_for(lambda: len(capture.on("summary")) >= summaries + 3)
                assert requester.replies == {}
                assert running.state.overrides == {}
    finally:
        requester.close()


async def test_qos_0_flows_too(tmp_path, mosquitto, capture, prefix) -> None:
    config = depot_config(tmp_path, mosquitto.host, mosquitto.port, prefix, qos=0)
    async with run_uplink(config) as running:
        await wait_for(lambda: len(capture.on("summary")) >= 3, message="summaries at QoS 0")
        await running.drained()  # with QoS 0, a message leaves the outbox once it is written
    assert_gapless(capture.all())
