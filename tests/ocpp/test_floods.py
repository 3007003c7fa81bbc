"""Log floods and login guessing on the OCPP port stay bounded (issue #22.5)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from sitectl.ocpp.budget import LogBudget, LoginGuard
from sitectl.ocpp.upstream import basic_auth
from sitectl.sim.charger import SimCharger
from tests.helpers import wait_for
from tests.ocpp.conftest import PASSWORD, depot_config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_budget_passes_a_few_lines_then_summarises_the_rest() -> None:
    clock = Clock()
    budget = LogBudget(lines=3, window_s=60, clock=clock)
    passed = [budget.allow("a") for _ in range(1000)]
    assert passed[:2] == ["", ""] and "last of 3" in str(passed[2])
    assert passed[3:] == [None] * 997
    assert budget.allow("b") == ""  # another source has its own budget
    clock.now += 61
    assert budget.allow("a") == " (and 997 more like it in the last 61 s)"
    assert budget.pending("a") == 0


def test_the_login_guard_locks_one_address_and_identity_only() -> None:
    clock = Clock()
    guard = LoginGuard(max_failures=3, window_s=60, lockout_s=30, clock=clock)
    assert [guard.failed("10.0.0.9", "CP1") for _ in range(3)] == [None, None, 3]
    assert guard.locked("10.0.0.9", "CP1") == 30
    assert guard.locked("10.0.0.8", "CP1") == 0 and guard.locked("10.0.0.9", "CP2") == 0
    clock.now += 31
    assert guard.locked("10.0.0.9", "CP1") == 0


async def test_a_flood_of_malformed_frames_logs_a_few_lines(csms, start_server, caplog) -> None:
    _, url = await start_server(depot_config([{"id": "CP1"}], csms.url))
    caplog.set_level(logging.WARNING, logger="sitectl")
    async with connect(
        f"{url}/CP1",
        subprotocols=["ocpp1.6"],
        proxy=None,
        additional_headers={"Authorization": basic_auth("CP1", PASSWORD)},
    ) as ws:
        for k in range(2000):
            await ws.send(f'[2,"m{k}","Heartbeat",{{')
        for _ in range(2000):  # each is answered with a CALLERROR
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))[0] == 4
        await ws.send('[2,"ok","Heartbeat",{}]')
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))[:2] == [3, "ok"]  # still served
    await wait_for(lambda: "were not logged" in caplog.text, message="the closing summary")
    lines = [r for r in caplog.records if r.name.startswith("sitectl.ocpp.link")]
    assert 5 <= len(lines) <= 10, [r.getMessage() for r in lines]
    assert "1995 more bad frames from the charger were not logged" in caplog.text


async def test_an_unknown_identity_is_logged_truncated(csms, start_server, caplog) -> None:
    _, url = await start_server(depot_config([{"id": "CP1"}], csms.url))
    caplog.set_level(logging.WARNING, logger="sitectl")
    with pytest.raises(InvalidStatus) as info:
        await SimCharger("X" * 4000, "1.6", url, PASSWORD).connect()
    assert info.value.response.status_code == 404
    [line] = [r.getMessage() for r in caplog.records if "unknown charger" in r.getMessage()]
    assert len(line) < 200 and "(4000 characters)" in line


async def test_repeated_failed_logins_are_limited_and_alarmed(csms, start_server, caplog) -> None:
    alarms: list[tuple[str, str, str]] = []
    server, url = await start_server(
        depot_config([{"id": "CP1"}], csms.url), alarm=lambda *a: alarms.append(a)
    )
    events: list[tuple[str, str]] = []
    server.security_event = lambda type_, text: events.append((type_, text))
    caplog.set_level(logging.WARNING, logger="sitectl")
    statuses = []
    for _ in range(30):
        with pytest.raises(InvalidStatus) as info:
            await SimCharger("CP1", "1.6", url, "wrong-password-0000").connect()
        statuses.append(info.value.response.status_code)
    assert statuses == [401] * 5 + [429] * 25
    # Locked out: even the right password waits (a guesser learns nothing from it).
    with pytest.raises(InvalidStatus) as info:
        await SimCharger("CP1", "1.6", url, PASSWORD).connect()
    assert info.value.response.status_code == 429
    assert int(info.value.response.headers["Retry-After"]) > 0
    assert [(code, subject) for code, subject, _ in alarms] == [("ocpp_login_failures", "CP1")]
    assert "5 failed logins as CP1 from 127.0.0.1" in alarms[0][2]
    assert events == [("FailedLoginAttempts", f"OCPP: {alarms[0][2]}")]
    server_lines = [r for r in caplog.records if r.name == "sitectl.ocpp.server"]
    assert len(server_lines) <= 7  # five refusals, the security event, no line per attempt


async def _held(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def test_the_ocpp_port_caps_connections_per_address_and_in_all(
    csms, start_server, caplog
) -> None:
    server, url = await start_server(
        depot_config([{"id": "CP1"}, {"id": "CP2"}], csms.url),
        max_connections=5,
        max_connections_per_client=3,
    )
    port = server.port
    caplog.set_level(logging.WARNING, logger="sitectl")
    idle = [await _held(port, "127.0.0.2") for _ in range(3)]
    await wait_for(lambda: len(server.connections.open) == 3, message="three sockets")
    # A fourth from the same address is aborted before its handshake.
    reader, _ = await _held(port, "127.0.0.2")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    # A charger on another address still gets in...
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        idle.append(await _held(port, "127.0.0.3"))
        await wait_for(lambda: len(server.connections.open) == 5, message="five sockets")
        # ...up to the global cap.
        with pytest.raises((OSError, InvalidHandshake, TimeoutError)):
            await asyncio.wait_for(SimCharger("CP2", "1.6", url, PASSWORD).connect(), 5)
    for _, writer in idle:
        writer.close()
    await wait_for(lambda: not server.connections.open, message="the sockets to close")
    async with SimCharger("CP2", "1.6", url, PASSWORD) as sim:
        await sim.boot()
    refused = [r for r in caplog.records if "OCPP connection from" in r.getMessage()]
    assert 1 <= len(refused) <= 6
