"""The demo's broker: its own mosquitto on a free port, ``--mqtt HOST:PORT``, or no MQTT.

Never the machine's port 1883: whatever listens there may be someone else's broker.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from sitectl.cli import build_parser
from sitectl.sim import DEMO_CONFIG
from sitectl.sim.broker import (
    BrokerError,
    LocalMosquitto,
    find_mosquitto,
    parse_address,
    pick_broker,
)
from sitectl.sim.demo import DemoParts, prepare_config, run_demo
from tests.helpers import wait_for

DEMO = DEMO_CONFIG


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def round_trip(host: str, port: int) -> bytes:
    """Publish and receive one message through the broker at host:port."""
    got: list[bytes] = []
    received, subscribed = threading.Event(), threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_subscribe = lambda *args: subscribed.set()

    def on_message(client, userdata, message) -> None:
        got.append(message.payload)
        received.set()

    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    try:
        client.subscribe("demo/test", qos=1)
        assert subscribed.wait(5)
        client.publish("demo/test", b"hello", qos=1).wait_for_publish(5)
        assert received.wait(5)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def test_parse_address() -> None:
    assert parse_address("broker.example:8883") == ("broker.example", 8883)
    assert parse_address("127.0.0.1") == ("127.0.0.1", 1883)
    assert parse_address("[::1]:1884") == ("::1", 1884)
    for bad, why in ((":1883", "HOST:PORT"), ("h:x", "not a number"), ("h:70000", "1-65535")):
        with pytest.raises(ValueError, match=why):
            parse_address(bad)
    args = build_parser().parse_args(["demo", "--mqtt", "10.0.0.5:1884"])
    assert args.mqtt == ("10.0.0.5", 1884)
    assert build_parser().parse_args(["demo"]).mqtt is None


def test_the_demo_starts_its_own_mosquitto_on_a_free_port(tmp_path: Path) -> None:
    choice = pick_broker(None, tmp_path)
    try:
        assert choice.own is not None and choice.address is not None
        host, port = choice.address
        assert host == "127.0.0.1" and port != 1883
        assert "the demo's own mosquitto" in choice.note and f":{port}" in choice.note
        assert round_trip(host, port) == b"hello"
    finally:
        choice.stop()
    assert not accepts(host, port)


def test_an_asked_for_broker_is_used_and_nothing_started(tmp_path: Path) -> None:
    choice = pick_broker(("broker.example", 1884), tmp_path, binary="/nonexistent")
    assert choice.address == ("broker.example", 1884) and choice.own is None
    assert "--mqtt" in choice.note
    assert not (tmp_path / "mosquitto.conf").exists()


def test_without_mosquitto_the_demo_runs_without_mqtt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("sitectl.sim.broker.find_mosquitto", lambda: None)
    choice = pick_broker(None, tmp_path)
    assert choice.address is None and choice.own is None
    assert "mosquitto is not installed" in choice.note and "--mqtt" in choice.note
    config = prepare_config(DEMO, tmp_path, mqtt=None)
    assert config.mqtt.enabled is False  # never the placeholder 127.0.0.1:1883 of demo.yaml


def test_a_mosquitto_that_exits_is_said(tmp_path: Path) -> None:
    broken = tmp_path / "mosquitto"
    broken.write_text("#!/bin/sh\necho 'Error: Address already in use' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(BrokerError, match="Address already in use"):
        LocalMosquitto(tmp_path / "b", binary=str(broken)).start()
    choice = pick_broker(None, tmp_path / "c", binary=str(broken))
    assert choice.address is None and choice.note.startswith("off: mosquitto exited")


async def test_the_demo_publishes_into_its_own_broker() -> None:
    assert find_mosquitto() is not None, "mosquitto is not installed; run scripts/test"
    out = io.StringIO()
    parts: list[DemoParts] = []
    demo = asyncio.create_task(
        run_demo(DEMO, chargers=2, speed=120, out=out, on_ready=parts.append)
    )
    try:
        await wait_for(lambda: bool(parts), timeout=30, message="the demo to start")
        config = parts[0].config
        assert config.mqtt.enabled and config.mqtt.port != 1883
        first = out.getvalue().splitlines()[0]
        assert f"MQTT: 127.0.0.1:{config.mqtt.port} (the demo's own mosquitto)" in first
        assert f"mosquitto_sub -V mqttv5 -h 127.0.0.1 -p {config.mqtt.port}" in out.getvalue()
        summaries: list[dict] = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = lambda c, u, m: summaries.append(json.loads(m.payload))
        client.connect(config.mqtt.host, config.mqtt.port)
        client.subscribe(f"{config.topic_prefix}/summary", qos=1)
        client.loop_start()
        try:
            await wait_for(lambda: bool(summaries), timeout=20, message="a summary")
        finally:
            client.disconnect()
            client.loop_stop()
        parts[0].app.stop()
        assert await asyncio.wait_for(demo, 60) == 0
    finally:
        if not demo.done():
            demo.cancel()
    assert not accepts("127.0.0.1", config.mqtt.port)  # the demo's broker went with it
