"""Offline operation on real sockets: a stub CSMS that goes away and comes back."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from sitectl.sim.charger import SimCharger
from sitectl.sim.csms import StubCsms
from tests.helpers import wait_for
from tests.ocpp.conftest import PASSWORD, Recorder, depot_config


def calls(frames: list[str]) -> list[tuple[str, dict]]:
    """(action, payload) of the CALLs among frames."""
    parsed = [json.loads(f) for f in frames]
    return [(f[2], f[3]) for f in parsed if f[0] == 2]


async def outage(csms: StubCsms, server, identity: str = "CP1") -> None:
    await csms.stop()
    await wait_for(lambda: not server.links[identity].online, message="sitectl to notice")


async def back(csms: StubCsms, server, *identities: str) -> None:
    await csms.start()
    for identity in identities or ("CP1",):
        await wait_for(
            lambda i=identity: server.links[i].online,
            timeout=10,
            message=f"{identity} upstream to reconnect",
        )


async def drained(server) -> None:
    await wait_for(
        lambda: server.journal.pending() == 0, timeout=10, message="the journal to drain"
    )


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_session_inside_an_outage_reaches_the_csms_in_order(
    csms, start_server, version
) -> None:
    server, url = await start_server(
        depot_config(
            [{"id": "CP1", "ocpp_version": version}],
            csms.url,
            offline={"unknown_id_policy": "accept"},
        )
    )
    async with SimCharger("CP1", version, url, PASSWORD) as sim:
        await sim.boot()
        await outage(csms, server)
        sent_before = len(sim.sent())
        started = await sim.start_transaction(1, "BUS-1", 1000, transaction_id="tx-offline")
        tx = getattr(started, "transaction_id", None) or "tx-offline"
        for k in range(3):
            await sim.meter_values(1, [16.0, 16.0, 16.0], 2000 + k * 1000, transaction_id=tx)
        await sim.stop_transaction(tx, 6000)
        offline_frames = calls(sim.sent()[sent_before:])
        assert server.journal.pending("CP1") == 5
        await back(csms, server)
        await drained(server)
    received = calls(csms.frames("CP1", "in"))
    tx_actions = [
        (a, p)
        for a, p in received
        if a in ("StartTransaction", "MeterValues", "StopTransaction", "TransactionEvent")
    ]
    # Same messages, same order, same timestamps as the charger sent them.
    assert [a for a, _ in tx_actions] == [a for a, _ in offline_frames]
    for (_, up), (_, sent) in zip(tx_actions, offline_frames, strict=True):
        if version == "1.6":
            assert {k: v for k, v in up.items() if k != "transactionId"} == {
                k: v for k, v in sent.items() if k != "transactionId"
            }
        else:
            assert up == sent
    if version == "1.6":
        assert tx == -1
        csms_tx = {p["transactionId"] for a, p in tx_actions if a != "StartTransaction"}
        assert csms_tx == {1000}  # the id the CSMS issued for the replayed start


async def test_session_starting_online_ending_offline(csms, start_server) -> None:
    server, url = await start_server(depot_config([{"id": "CP1"}], csms.url))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        started = await sim.start_transaction(1, "BUS-1", 0)
        await outage(csms, server)
        await sim.meter_values(1, [10.0, 10.0, 10.0], 500, started.transaction_id)
        await sim.stop_transaction(started.transaction_id, 1000)
        await back(csms, server)
        await drained(server)
    up = calls(csms.frames("CP1", "in"))
    assert [a for a, _ in up if a != "BootNotification"] == [
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ]
    assert up[-1][1]["transactionId"] == started.transaction_id


async def test_session_starting_offline_ending_online(csms, start_server) -> None:
    config = depot_config([{"id": "CP1"}], csms.url, offline={"local_id_tags": ["BUS-1"]})
    server, url = await start_server(config)
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        await outage(csms, server)
        started = await sim.start_transaction(1, "BUS-1", 0)
        assert started.transaction_id == -1 and started.id_tag_info["status"] == "Accepted"
        await back(csms, server)
        await drained(server)
        # Online again: the charger still uses -1; the CSMS sees its own id.
        await sim.meter_values(1, [10.0, 10.0, 10.0], 500, -1)
        await sim.stop_transaction(-1, 1000)
    up = calls(csms.frames("CP1", "in"))
    start_answer = json.loads(next(f for f in csms.frames("CP1", "out") if '"transactionId"' in f))
    csms_id = start_answer[2]["transactionId"]
    assert [p["transactionId"] for a, p in up if a in ("MeterValues", "StopTransaction")] == [
        csms_id,
        csms_id,
    ]


async def test_three_chargers_interleaved_and_one_upstream_down_alone(csms, start_server) -> None:
    ids = ["CP1", "CP2", "CP3"]
    config = depot_config(
        [{"id": i} for i in ids], csms.url, offline={"unknown_id_policy": "accept"}
    )
    server, url = await start_server(config)
    sims = [await SimCharger(i, "1.6", url, PASSWORD).connect() for i in ids]
    try:
        for sim in sims:
            await sim.boot()
        await csms.stop()
        for identity in ids:
            await wait_for(lambda i=identity: not server.links[i].online, message=identity)
        started = [await sim.start_transaction(1, f"TAG-{sim.identity}", 0) for sim in sims]
        for k in range(3):
            for sim, s in zip(sims, started, strict=True):
                await sim.meter_values(1, [float(k)] * 3, 100 * (k + 1), s.transaction_id)
        for sim, s in zip(sims, started, strict=True):
            await sim.stop_transaction(s.transaction_id, 1000)
        await back(csms, server, *ids)
        await drained(server)
        for sim in sims:
            up = [a for a, _ in calls(csms.frames(sim.identity, "in")) if a != "BootNotification"]
            assert up == [
                "StartTransaction",
                "MeterValues",
                "MeterValues",
                "MeterValues",
                "StopTransaction",
            ], sim.identity
        # Now only CP2's upstream goes down: the others keep forwarding.
        csms.reject["CP2"] = 503
        await csms.sessions["CP2"].point._connection.ws.close()
        await wait_for(lambda: not server.links["CP2"].online, message="CP2 offline")
        await sims[1].heartbeat()  # answered locally
        before = len(csms.frames("CP1", "in"))
        await sims[0].heartbeat()
        assert len(csms.frames("CP1", "in")) == before + 1
        assert server.links["CP1"].online and server.links["CP3"].online
    finally:
        for sim in sims:
            await sim.close()


async def test_every_call_is_answered_within_2_s_while_offline(csms, start_server) -> None:
    server, url = await start_server(depot_config([{"id": "CP1"}], csms.url))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        await outage(csms, server)
        slowest = 0.0
        for call in (
            sim.heartbeat(),
            sim.status(1, "Preparing"),
            sim.authorize("X"),
            sim.start_transaction(1, "X", 0),
            sim.meter_values(1, [1.0], 10, -1),
            sim.stop_transaction(-1, 20),
            sim.boot(),
        ):
            start = time.perf_counter()
            await asyncio.wait_for(call, 2)
            slowest = max(slowest, time.perf_counter() - start)
        assert slowest < 2


async def test_charger_that_connects_during_an_outage_is_held(start_server) -> None:
    stub = StubCsms()
    await stub.start()
    await stub.stop()
    server, url = await start_server(depot_config([{"id": "CP1"}], stub.url))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        # Never accepted by the CSMS: Pending, not silently Accepted.
        assert (await sim.boot()).status == "Pending"
        await stub.start()
        await wait_for(lambda: server.links["CP1"].online, timeout=10, message="reconnect")
        # The boot answered locally is what the CSMS sees first.
        await wait_for(lambda: stub.frames("CP1", "in"), message="the replayed boot")
        assert calls(stub.frames("CP1", "in"))[0][0] == "BootNotification"
    await stub.stop()


async def test_close_mode_closes_and_the_charger_can_reconnect(csms, start_server) -> None:
    config = depot_config([{"id": "CP1"}], csms.url, offline={"mode": "close"})
    _, url = await start_server(config, Recorder())
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        await csms.stop()
        started = time.perf_counter()
        await wait_for(
            lambda: sim.ws.close_code is not None,
            timeout=2,
            message="the charger socket to close within 2 s",
        )
        assert time.perf_counter() - started < 2
    await csms.start()
    async with SimCharger("CP1", "1.6", url, PASSWORD) as again:
        assert (await again.boot()).status == "Accepted"


async def test_csms_refusing_a_replayed_start_stops_the_transaction(csms, start_server) -> None:
    alarms: list[tuple[str, str, str]] = []
    config = depot_config([{"id": "CP1"}], csms.url, offline={"unknown_id_policy": "accept"})
    server, url = await start_server(config, alarm=lambda *a: alarms.append(a))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        await outage(csms, server)
        csms.tags["STOLEN"] = "Blocked"
        started = await sim.start_transaction(1, "STOLEN", 0)
        assert started.id_tag_info["status"] == "Accepted"  # unknown offline: policy accept
        await back(csms, server)
        await wait_for(
            lambda: any(c == "RemoteStopTransaction" for c, _ in sim.handled.calls),
            message="sitectl to stop the refused transaction",
        )
        assert ("RemoteStopTransaction", {"transaction_id": -1}) in sim.handled.calls
        assert alarms and alarms[0][:2] == ("offline_tag_refused", "CP1")


async def test_replayed_message_refused_three_times_goes_to_dead_letters(
    csms, start_server
) -> None:
    alarms: list[tuple[str, str, str]] = []
    config = depot_config(
        [{"id": "CP1"}],
        csms.url,
        offline={"unknown_id_policy": "accept", "message_attempts": 3, "retry_interval_s": 0.05},
    )
    server, url = await start_server(config, alarm=lambda *a: alarms.append(a))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        await outage(csms, server)
        started = await sim.start_transaction(1, "BUS-1", 0)
        await sim.meter_values(1, [1.0] * 3, 100, started.transaction_id)
        await sim.stop_transaction(started.transaction_id, 200)
        csms.fail_actions["MeterValues"] = 3
        await back(csms, server)
        await drained(server)
    # The start and the stop got through; the meter value was tried 3 times, then set aside.
    up = [a for a, _ in calls(csms.frames("CP1", "in")) if a != "BootNotification"]
    assert up == [
        "StartTransaction",
        "MeterValues",
        "MeterValues",
        "MeterValues",
        "StopTransaction",
    ]
    [letter] = server.journal.dead_letters()
    assert letter["action"] == "MeterValues" and letter["attempts"] == 3
    assert [a[0] for a in alarms] == ["journal_dead_letter"]
