"""sitectl's own security events on MQTT (issue #22.10): one message per kind and window.

The unit tests drive `SecurityFeed` with a hand-run clock and timers; the end-to-end test
floods the local HTTP server (a real socket) with wrong tokens from many loopback addresses
and reads ``<prefix>/security`` from the real test mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
from pydantic import SecretStr

from sitectl.http.server import HttpServer
from sitectl.security_events import INVALID_FIRMWARE, INVALID_LOGIN, SecurityEventLog
from sitectl.uplink.messages import Kind, Message, Topics, encode, with_seq
from sitectl.uplink.security import MAX_KINDS, SecurityFeed
from tests.helpers import wait_for
from tests.uplink.support import Capture, depot_config, run_uplink, unique_prefix

SCHEMA = Path(__file__).resolve().parents[2] / "sitectl" / "uplink" / "schemas" / "security.json"
TOKEN = "http-token-0123456789abcdef"


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


class Timers:
    """call_later by hand: `fire` runs what is due."""

    def __init__(self) -> None:
        self.due: list[Callable[[], None]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> Any:
        self.due.append(callback)
        timers = self

        class Handle:
            def cancel(self) -> None:
                if callback in timers.due:
                    timers.due.remove(callback)

        return Handle()

    def fire(self) -> None:
        due, self.due = self.due, []
        for callback in due:
            callback()


def feed() -> tuple[SecurityFeed, SecurityEventLog, list[Message], Timers]:
    now = datetime.now(UTC)
    events = SecurityEventLog(clock=lambda: now)
    sent: list[Message] = []
    timers = Timers()
    security = SecurityFeed(Topics("p"), sent.append, lambda: now + timedelta(seconds=1), timers)
    events.listeners.append(security.on_event)
    return security, events, sent, timers


def test_a_flood_is_one_message_at_once_and_one_per_window_with_the_count() -> None:
    security, events, sent, timers = feed()
    for n in range(1000):
        events.record(INVALID_LOGIN, f"HTTP: 10 wrong tokens from 10.0.{n // 256}.{n % 256}")
    assert [m.body["count"] for m in sent] == [1]
    timers.fire()  # the window ends: the other 999 in one message
    assert [m.body["count"] for m in sent] == [1, 999]
    assert sent[1].body["tech_info"].endswith("10.0.3.231") and security.folded == 999
    timers.fire()  # a quiet window ends silently...
    assert len(sent) == 2 and not timers.due
    events.record(INVALID_LOGIN, "again")  # ...and the next event goes out at once
    assert [m.body["count"] for m in sent] == [1, 999, 1]
    assert {m.kind for m in sent} == {Kind.SECURITY} and {m.topic for m in sent} == {"p/security"}
    assert not any(m.retain for m in sent)
    check = validator()
    for message in sent:
        wire = json.loads(with_seq(encode(message.body), 3))
        assert not list(check.iter_errors(wire)), wire


def test_critical_events_and_other_types_have_their_own_window() -> None:
    _, events, sent, timers = feed()
    for _ in range(50):
        events.record(INVALID_LOGIN, "minor")
    events.record(INVALID_FIRMWARE, "bad image", critical=True)
    events.record(INVALID_FIRMWARE, "bad image")
    assert [(m.body["type"], m.body["critical"]) for m in sent] == [
        (INVALID_LOGIN, False),
        (INVALID_FIRMWARE, True),
        (INVALID_FIRMWARE, False),
    ]
    for n in range(MAX_KINDS * 2):  # types sitectl does not raise: bounded all the same
        events.record(f"Made{n}", "x")
    assert len(sent) <= MAX_KINDS + 1
    timers.fire()
    assert sum(m.body["count"] for m in sent) == 52 + MAX_KINDS * 2


def test_a_stop_sends_what_the_open_windows_counted() -> None:
    security, events, sent, timers = feed()
    for _ in range(5):
        events.record(INVALID_LOGIN, "x")
    security.flush()
    assert [m.body["count"] for m in sent] == [1, 4] and not timers.due


async def _wrong_tokens(port: int, source: str, attempts: int) -> list[int]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as client:
        statuses = []
        for n in range(attempts):
            async with client.post(
                f"http://127.0.0.1:{port}/api/overrides",
                headers={"Authorization": f"Bearer wrong-{n}"},
                json={},
            ) as response:
                statuses.append(response.status)
        return statuses


async def test_a_failed_login_flood_gives_a_bounded_number_of_security_messages(
    tmp_path, mosquitto
) -> None:
    prefix = unique_prefix()
    config = depot_config(tmp_path, mosquitto.host, mosquitto.port, prefix)
    http = {"listen_host": "127.0.0.1", "token": SecretStr(TOKEN), "open_reads": False}
    config = config.model_copy(update={"http": config.http.model_copy(update=http)})
    capture = Capture(mosquitto.host, mosquitto.port, prefix)
    window_s = 2.0
    addresses = [f"127.0.0.{k}" for k in range(10, 40)]  # 30 guessers, 12 wrong tokens each
    try:
        async with run_uplink(config, security_window_s=window_s) as running:
            await running.connected()
            server = HttpServer(config, running.state, port=0)
            task = asyncio.create_task(server.run())
            await asyncio.wait_for(server.ready.wait(), 10)
            started = time.monotonic()
            results = await asyncio.gather(*(_wrong_tokens(server.port, a, 12) for a in addresses))
            flood_s = time.monotonic() - started
            # Each address is locked out after 10: one FailedLoginAttempts event each.
            assert all(r == [401] * 10 + [429] * 2 for r in results), results[0]
            assert len(running.state.security_events.events()) == len(addresses)

            def counted() -> int:
                return sum(m.data["count"] for m in capture.on("security"))

            await wait_for(
                lambda: counted() == len(addresses),
                timeout=window_s * 2 + 10,
                message="every event counted on MQTT",
            )
            task.cancel()
        messages = [m.data for m in capture.on("security")]
        check = validator()
        for body in messages:
            assert not list(check.iter_errors(body)), body
        assert {m["type"] for m in messages} == {INVALID_LOGIN}
        assert messages[0]["count"] == 1
        # One at once, then at most one per window the flood lasted (and the closing one).
        assert len(messages) <= 2 + math.ceil(flood_s / window_s), (flood_s, messages)
        assert len(messages) < len(addresses) // 3
        assert all(not m.retain for m in capture.on("security"))
    finally:
        capture.close()
