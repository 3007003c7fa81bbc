"""The OCPP proxy on real sockets: simulated chargers ↔ sitectl ↔ a stub CSMS, both versions."""

from __future__ import annotations

import asyncio
import json

import pytest
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sitectl.ocpp.link import CallErrorResponse, ChargerOffline
from sitectl.ocpp.router import LocalProtocolError, RequestSeen, ResponseSeen
from sitectl.ocpp.upstream import basic_auth
from sitectl.sim.charger import SimCharger
from sitectl.sim.csms import StubCsms
from tests.helpers import wait_for
from tests.ocpp.conftest import PASSWORD, Recorder, depot_config

PROFILE16 = {
    "connectorId": 0,
    "csChargingProfiles": {
        "chargingProfileId": 900001,
        "stackLevel": 8,
        "chargingProfilePurpose": "ChargePointMaxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
        },
    },
}


def calls_of(frames: list[str]) -> list[str]:
    return [json.loads(f)[2] for f in frames if json.loads(f)[0] == 2]


async def full_session(sim: SimCharger) -> None:
    await sim.boot()
    await sim.status(1, "Available")
    await sim.authorize("TAG-1")
    started = await sim.start_transaction(1, "TAG-1", 1000, transaction_id="tx-201")
    tx = getattr(started, "transaction_id", None) or "tx-201"
    await sim.status(1, "Charging")
    await sim.meter_values(1, [16.0, 16.0, 16.0], 2500, transaction_id=tx)
    await sim.stop_transaction(tx, 4000)
    await sim.status(1, "Available")


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_full_session_reaches_the_csms_byte_for_byte(csms, start_server, version) -> None:
    recorder = Recorder()
    config = depot_config([{"id": "CP1", "ocpp_version": version}], csms.url)
    _, url = await start_server(config, listener=recorder)
    async with SimCharger("CP1", version, url, PASSWORD) as sim:
        await full_session(sim)
        # Exactly what the charger sent, in order, arrived at the CSMS, and vice versa.
        assert csms.frames("CP1", "in") == sim.sent()
        assert sim.received() == csms.frames("CP1", "out")
    assert len(sim.sent()) == 8
    seen = [e for _, e in recorder.events if isinstance(e, ResponseSeen)]
    assert [e.action for e in seen][:2] == ["BootNotification", "StatusNotification"]
    assert all(isinstance(e, RequestSeen | ResponseSeen) for _, e in recorder.events)


async def test_identity_is_percent_encoded_upstream_as_the_charger_sent_it(
    csms, start_server
) -> None:
    config = depot_config([{"id": "RDAM 123"}], csms.url)
    _, url = await start_server(config)
    async with SimCharger("RDAM 123", "1.6", url, PASSWORD) as sim:
        await sim.boot()
    assert csms.history[-1].path == "/csms/RDAM%20123"
    # The charger's own Basic credentials go upstream (upstream_password defaults to them).
    assert csms.history[-1].headers["Authorization"] == basic_auth("RDAM 123", PASSWORD)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_csms_initiated_calls_reach_the_charger(csms, start_server, version) -> None:
    _, url = await start_server(depot_config([{"id": "CP1", "ocpp_version": version}], csms.url))
    async with SimCharger("CP1", version, url, PASSWORD) as sim:
        await sim.boot()
        if version == "1.6":
            result = await csms.call("CP1", call16.RemoteStartTransaction(id_tag="T1"))
            assert result.status == "Accepted"
            config = await csms.call(
                "CP1", call16.GetConfiguration(key=["ChargeProfileMaxStackLevel"])
            )
            assert config.configuration_key[0]["value"] == "10"
            assert (await csms.call("CP1", call16.Reset(type="Soft"))).status == "Accepted"
            assert [c for c, _ in sim.handled.calls] == [
                "RemoteStartTransaction",
                "GetConfiguration",
                "Reset",
            ]
        else:
            result = await csms.call(
                "CP1",
                call201.GetVariables(
                    get_variable_data=[
                        {
                            "component": {"name": "SmartChargingCtrlr"},
                            "variable": {"name": "RateUnit"},
                        }
                    ]
                ),
            )
            assert result.get_variable_result[0]["attribute_value"] == "A"
            assert (await csms.call("CP1", call201.Reset(type="Immediate"))).status == "Accepted"
        assert csms.frames("CP1", "out") == sim.received()


async def test_local_call_and_csms_call_are_never_outstanding_together(csms, start_server) -> None:
    server, url = await start_server(depot_config([{"id": "CP1"}], csms.url))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        sim.answer_delay_s = 0.3  # the profile is answered slowly
        local = asyncio.create_task(server.call("CP1", "SetChargingProfile", PROFILE16))
        await wait_for(
            lambda: any(c == "SetChargingProfile" for c, _ in sim.handled.calls),
            message="the local profile to reach the charger",
        )
        remote = await csms.call("CP1", call16.GetConfiguration())
        assert (await local) == {"status": "Accepted"}
        assert remote.configuration_key
        # The charger saw the CSMS call only after it had answered sitectl's call.
        order = [
            (d, json.loads(t)[0])
            for d, t in sim.frames
            if json.loads(t)[0] in (2, 3) and not (d == "out" and json.loads(t)[0] == 2)
        ]
        outstanding = 0
        for direction, kind in order:
            if direction == "in" and kind == 2:
                outstanding += 1
                assert outstanding == 1, f"two calls outstanding: {sim.frames}"
            elif direction == "out" and kind == 3:
                outstanding -= 1
        # sitectl's own answer never went upstream.
        assert "SetChargingProfile" not in calls_of(csms.frames("CP1", "out"))
        assert all(
            '"Accepted"}' not in f or "SetChargingProfile" not in f
            for f in csms.frames("CP1", "in")
        )
        assert len(csms.frames("CP1", "in")) == 2  # boot + GetConfiguration answer


async def test_local_call_errors_are_typed(csms, start_server) -> None:
    server, url = await start_server(depot_config([{"id": "CP1"}, {"id": "CP2"}], csms.url))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        with pytest.raises(CallErrorResponse) as info:
            await server.call("CP1", "GetLocalListVersion", {})  # the sim has no handler
        assert info.value.code == "NotImplemented"
        with pytest.raises(LocalProtocolError):
            await server.call("CP1", "SetChargingProfile", {"connectorId": 0})
        with pytest.raises(ChargerOffline):
            await server.call("CP2", "GetConfiguration", {})


async def test_reconnect_replaces_the_old_connection(csms, start_server) -> None:
    recorder = Recorder()
    server, url = await start_server(depot_config([{"id": "CP1"}], csms.url), recorder)
    first = await SimCharger("CP1", "1.6", url, PASSWORD).connect()
    await first.boot()
    second = await SimCharger("CP1", "1.6", url, PASSWORD).connect()
    try:
        await wait_for(lambda: first.ws.close_code is not None, message="the old socket to close")
        assert first.ws.close_code == 1000
        assert first.ws.close_reason == "replaced by a new connection"
        await second.boot()
        assert server.links["CP1"].charger_ws.remote_address is not None
        assert len([s for s in csms.history if s.identity == "CP1"]) == 2
        await wait_for(lambda: len(csms.sessions) == 1, message="the old upstream to close")
    finally:
        await second.close()
        await first.close()


async def test_unknown_identity_is_404_before_the_upgrade(csms, start_server) -> None:
    _, url = await start_server(depot_config([{"id": "CP1"}], csms.url))
    with pytest.raises(InvalidStatus) as info:
        await SimCharger("NOPE", "1.6", url, PASSWORD).connect()
    assert info.value.response.status_code == 404
    assert csms.history == []  # never reached the CSMS


@pytest.mark.parametrize("password", ["wrong-password-000", None])
async def test_bad_or_missing_password_is_401(csms, start_server, password) -> None:
    _, url = await start_server(depot_config([{"id": "CP1"}], csms.url))
    with pytest.raises(InvalidStatus) as info:
        await SimCharger("CP1", "1.6", url, password).connect()
    assert info.value.response.status_code == 401
    assert csms.history == []


async def test_basic_user_must_be_the_identity(csms, start_server) -> None:
    _, url = await start_server(depot_config([{"id": "CP1"}, {"id": "CP2"}], csms.url))
    with pytest.raises(InvalidStatus) as info:
        await connect(
            f"{url}/CP1",
            subprotocols=["ocpp1.6"],
            proxy=None,
            additional_headers={"Authorization": basic_auth("CP2", PASSWORD)},
        )
    assert info.value.response.status_code == 401


@pytest.mark.parametrize("status", [401, 404])
async def test_csms_refusal_is_mirrored_to_the_charger(start_server, status) -> None:
    async with StubCsms(reject={"CP1": status}) as stub:
        _, url = await start_server(depot_config([{"id": "CP1"}], stub.url))
        with pytest.raises(InvalidStatus) as info:
            await SimCharger("CP1", "1.6", url, PASSWORD).connect()
        assert info.value.response.status_code == status


async def test_unreachable_csms_gives_503_in_close_mode(start_server, caplog) -> None:
    stub = StubCsms()
    await stub.start()
    url_of_dead_csms = stub.url
    await stub.stop()
    config = depot_config([{"id": "CP1"}], url_of_dead_csms, offline={"mode": "close"})
    _, url = await start_server(config)
    with pytest.raises(InvalidStatus) as info:
        await SimCharger("CP1", "1.6", url, PASSWORD).connect()
    assert info.value.response.status_code == 503
    assert "refused the connection" in caplog.text


@pytest.mark.parametrize(
    ("charger_offers", "csms_accepts", "expected"),
    [
        (["ocpp2.0.1", "ocpp1.6"], ["ocpp1.6"], "ocpp1.6"),
        (["ocpp1.6", "ocpp2.0.1"], ["ocpp2.0.1", "ocpp1.6"], "ocpp2.0.1"),
        (["ocpp2.0.1"], ["ocpp1.6"], None),
    ],
    ids=["csms-picks-1.6", "csms-preference-wins", "no-common-protocol"],
)
async def test_subprotocol_is_what_the_csms_chose(
    start_server, charger_offers, csms_accepts, expected
) -> None:
    async with StubCsms(subprotocols=csms_accepts) as stub:
        _, url = await start_server(depot_config([{"id": "CP1"}], stub.url))
        ws = await connect(
            f"{url}/CP1",
            subprotocols=charger_offers,
            proxy=None,
            additional_headers={"Authorization": basic_auth("CP1", PASSWORD)},
        )
        try:
            assert ws.subprotocol == expected
            # The CSMS was offered exactly what the charger offered.
            offered = stub.history[-1].headers["Sec-WebSocket-Protocol"]
            assert [p.strip() for p in offered.split(",")] == charger_offers
            if expected is None:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 1002
        finally:
            await ws.close()


async def test_permessage_deflate_on_both_legs(csms, start_server) -> None:
    server, url = await start_server(depot_config([{"id": "CP1"}], csms.url))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        assert "permessage-deflate" in sim.ws.response.headers.get("Sec-WebSocket-Extensions")
        assert "permessage-deflate" in csms.history[-1].headers["Sec-WebSocket-Extensions"]
        upstream = server.links["CP1"].upstream_ws
        assert "permessage-deflate" in upstream.response.headers["Sec-WebSocket-Extensions"]


async def test_malformed_frames_get_callerror_and_others_keep_working(
    csms, start_server, caplog
) -> None:
    _, url = await start_server(depot_config([{"id": "CP1"}, {"id": "CP2"}], csms.url))
    async with (
        SimCharger("CP1", "1.6", url, PASSWORD) as bad,
        SimCharger("CP2", "1.6", url, PASSWORD) as good,
    ):
        await bad.ws.send('[2,"m1","Heartbeat",{')  # broken JSON, readable id
        await bad.ws.send('[2,"m2"]')  # missing fields
        await bad.ws.send('["x"]')  # unreadable: dropped
        await wait_for(lambda: len(bad.received()) >= 2, message="two CALLERRORs")
        errors = [json.loads(f) for f in bad.received()]
        assert [(e[0], e[1], e[2]) for e in errors] == [
            (4, "m1", "FormationViolation"),
            (4, "m2", "FormationViolation"),
        ]
        await good.boot()
        await bad.heartbeat()  # the bad charger's connection still works
        assert csms.frames("CP1", "in") == [bad.sent()[-1]]  # only the valid heartbeat
        assert "bad frame from the charger" in caplog.text


async def test_malformed_frame_from_csms_is_answered_to_the_csms(csms, start_server) -> None:
    _, url = await start_server(depot_config([{"id": "CP1", "ocpp_version": "2.0.1"}], csms.url))
    async with SimCharger("CP1", "2.0.1", url, PASSWORD) as sim:
        await sim.boot()
        await csms.sessions["CP1"].point._connection.ws.send('[9,"z1","Reset",{}]')
        await wait_for(
            lambda: any('"z1"' in f for f in csms.frames("CP1", "in")),
            message="the CSMS to get a CALLERROR",
        )
        reply = json.loads(next(f for f in csms.frames("CP1", "in") if '"z1"' in f))
        assert reply[:3] == [4, "z1", "MessageTypeNotSupported"]
        assert all('"z1"' not in f for f in sim.received())


async def test_oversized_frame_closes_only_that_charger(csms, start_server) -> None:
    config = depot_config([{"id": "CP1"}, {"id": "CP2"}], csms.url, max_frame_bytes=4096)
    _, url = await start_server(config)
    async with (
        SimCharger("CP1", "1.6", url, PASSWORD) as big,
        SimCharger("CP2", "1.6", url, PASSWORD) as other,
    ):
        await big.boot()
        await big.ws.send(
            json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "y" * 10_000}])
        )
        await wait_for(lambda: big.ws.close_code is not None, message="the big charger closed")
        assert big.ws.close_code == 1009
        await other.boot()
        await wait_for(lambda: "CP1" not in csms.sessions, message="CP1's upstream closed")


async def test_dead_charger_is_detected_and_its_upstream_closed(csms, start_server) -> None:
    config = depot_config([{"id": "CP1"}], csms.url, ping_interval_s=0.2, ping_timeout_s=0.3)
    server, url = await start_server(config)
    sim = await SimCharger("CP1", "1.6", url, PASSWORD).connect(ping_interval=None)
    try:
        await sim.boot()
        sim.ws.transport.pause_reading()  # stops answering pings, like a dead charger
        await wait_for(
            lambda: "CP1" not in server.links,
            timeout=10,
            message="sitectl to drop the dead charger",
        )
        await wait_for(lambda: "CP1" not in csms.sessions, message="its upstream to close")
    finally:
        sim.ws.transport.resume_reading()
        await sim.close()


async def test_upstream_loss_closes_the_charger_in_close_mode(csms, start_server) -> None:
    config = depot_config([{"id": "CP1"}], csms.url, offline={"mode": "close"})
    recorder = Recorder()
    _, url = await start_server(config, recorder)
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        await csms.stop()
        await wait_for(
            lambda: sim.ws.close_code is not None,
            timeout=2,
            message="the charger socket to close within 2 s",
        )
        assert sim.ws.close_code == 1001
    assert recorder.upstream == [("CP1", True), ("CP1", False)]
