"""VDV 463 server: a depot-system client written from the public schemas alone (issue #19.3).

The client below knows only the vendored 1.0.0 schema files (it validates every frame it gets
with them, with its own format checks) and the frame layout they define; it talks to a real
`VdvServer` on a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from optimizer.lp import solve
from optimizer.verify import verify
from sitectl.config import Config, load_config
from sitectl.control.fleet import Fleet
from sitectl.control.meters import MeterSupervisor
from sitectl.control.snapshot import ChargerMemory, ProblemBuilder, charger_node
from sitectl.ocpp.observe import hash_id_tag
from sitectl.state import PlanForecast, PlanStep, SessionPlan, SessionState, SiteState
from sitectl.vdv.server import VdvServer

NOW = datetime.now(UTC).replace(
    hour=20, minute=0, second=0, microsecond=0
)  # injected clock: today 20:00 UTC, never a literal date
TODAY, TOMORROW = NOW.date().isoformat(), (NOW + timedelta(days=1)).date().isoformat()
SCHEMAS = Path(__file__).resolve().parents[2] / "sitectl" / "vdv" / "schemas"
PRESYSTEM = "urn:example:bms:depot-north"
PASSWORD = "presystem-password-1"

CONFIG = f"""\
site: {{id: depot, limit_kw: 500, phase_limit_a: 400}}
circuits:
  - {{id: feeder, limit_a: 400, non_ev_max_a: 10}}
chargers:
  - {{id: CP1, circuit: feeder, max_current_a: 200, password: password-cp1-0000, connectors: 2}}
storage: {{path: s.sqlite}}
fleet:
  vehicles:
    - {{id: bus-17, id_tags: [TAG17], battery_kwh: 400, vdv_vehicle_id: "V17"}}
    - {{id: bus-18, id_tags: [TAG18]}}
  vdv463:
    enabled: true
    listen_host: 127.0.0.1
    username: bms
    password: {PASSWORD}
    info_period_s: 1
"""

# ------------------------------------------------------------------------------------------------
# The client: schemas and frame layout only.

FORMATS = jsonschema.FormatChecker(())


@FORMATS.checks("date-time")
def _date_time(value: object) -> bool:
    pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"
    return not isinstance(value, str) or re.fullmatch(pattern, value) is not None


@FORMATS.checks("uuid")
def _uuid(value: object) -> bool:
    pattern = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    return not isinstance(value, str) or re.fullmatch(pattern, value) is not None


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    return (
        not isinstance(value, str) or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:\S*$", value) is not None
    )


def check(name: str, instance: Any) -> None:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft4Validator(schema, format_checker=FORMATS).validate(instance)


def stamp() -> str:
    return NOW.isoformat().replace("+00:00", "Z")


class Client:
    """A depot system (BMS) speaking VDV 463 1.0.0."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.informations: list[list[Any]] = []

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        check(f"{action}Request", payload)
        message_id = str(uuid.uuid4())
        await self.ws.send(json.dumps([1, "BMS", PRESYSTEM, stamp(), message_id, action, payload]))
        return await self.answer(message_id)

    async def send_raw(self, text: str) -> list[Any]:
        await self.ws.send(text)
        return await self.answer(None)

    async def answer(self, message_id: str | None) -> list[Any]:
        """The next response or error (answering our requests to the server on the way)."""
        while True:
            frame = await self.frame()
            if frame[0] == 1:
                continue
            if message_id is None or frame[4] == message_id:
                return frame

    async def frame(self) -> list[Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        check("MessageStructure", frame)
        kind, _, _, _, message_id, action, payload = frame
        if kind == 1:
            check(f"{action}Request", payload)
            self.informations.append(frame)
            await self.ws.send(json.dumps([2, "BMS", PRESYSTEM, stamp(), message_id, action, {}]))
        elif kind == 2:
            check(f"{action}Response", payload)
        else:
            assert kind == 3 and isinstance(payload.get("errorMessage"), str), frame
        return frame

    async def information(self, matching: Any) -> dict[str, Any]:
        """The next ProvideChargingInformation payload for which `matching` is true."""
        async with asyncio.timeout(5):
            while True:
                frame = await self.frame()
                if frame[0] == 1 and matching(frame[6]):
                    return frame[6]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ------------------------------------------------------------------------------------------------
# The server side.


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "site.yaml"
    path.write_text(CONFIG)
    return load_config(path, environ={})[0]


@pytest.fixture
async def server(config: Config) -> AsyncIterator[VdvServer]:
    state = SiteState(config, clock=lambda: NOW)
    state.chargers["CP1"].connected = True
    vdv = VdvServer(config, state, Fleet(config, state), port=0, clock=lambda: NOW)
    task = asyncio.create_task(vdv.run())
    await asyncio.wait_for(vdv.ready.wait(), 5)
    yield vdv
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def client(server: VdvServer, auth: str | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": auth or basic("bms", PASSWORD)}
    url = f"ws://127.0.0.1:{server.port}/vdv463"
    async with connect(url, subprotocols=["v1.463.vdv.de"], additional_headers=headers) as ws:
        assert ws.subprotocol == "v1.463.vdv.de"
        yield Client(ws)


def plug_in(server: VdvServer, connector: int, tag: str) -> SessionState:
    session = SessionState(
        f"tx-{connector}",
        connector,
        NOW - timedelta(minutes=5),
        charger_id="CP1",
        id_tag_hash=hash_id_tag("depot", tag),
    )
    connector_state = server.state.chargers["CP1"].connectors[connector]
    connector_state.status, connector_state.power_kw = "Charging", 44.0
    connector_state.session = session
    server.state.notify("session_started", session.session_id)
    return session


def charging_request(vehicle: str, **data: Any) -> dict[str, Any]:
    return {
        "chargingRequestList": [
            {
                "vehicleId": vehicle,
                "chargingRequestId": "urn:example:request:1",
                "chargingProcessId": "urn:example:process:1",
                "priority": 5,
                "chargingInstruction": "Normal",
                "chargingRequestData": {
                    "minTargetSoc": 50,
                    "maxTargetSoc": 90,
                    "expectedSocAtArrival": 20,
                    "requestedTimeForDeparture": (NOW + timedelta(hours=8))
                    .isoformat()
                    .replace("+00:00", "Z"),
                    **data,
                },
            }
        ]
    }


async def test_a_depot_system_drives_a_need_and_receives_the_prediction(
    server: VdvServer,
) -> None:
    session = plug_in(server, 1, "TAG17")
    async with client(server) as bms:
        boot = await bms.call("BootNotification", {"presystem": "BMS"})
        assert boot[0] == 2 and boot[6] == {"status": "Accepted"}
        assert boot[2] == PRESYSTEM and boot[5] == "BootNotification"
        reply = await bms.call("ProvideChargingRequests", charging_request("V17"))
        assert reply[0] == 2 and reply[6] == {}
        # The need, as the session_needs command would set it: (90 − 20) % of 400 kWh.
        assert session.energy_wanted_kwh == pytest.approx(280.0)
        assert session.departure == NOW + timedelta(hours=8)
        assert session.vehicle_priority == 5
        # The control loop's plan for it: 40 kW for 8 h (10 kWh per 15-min step).
        steps = tuple(
            PlanStep(NOW + timedelta(minutes=15 * k), 900.0, 58.0, 40.0) for k in range(32)
        )
        forecast = PlanForecast(
            "on_time",
            "",
            phases=3,
            steps=steps,
            planned_kwh=320.0,
            remaining_kwh=280.0,
            ready_at=NOW + timedelta(hours=7),
        )
        server.state.control.sessions["CP1/1"] = SessionPlan(
            NOW + timedelta(hours=8), "fleet", 280.0, "fleet", True, 58.0, forecast=forecast
        )

        def predicted(payload: dict[str, Any]) -> bool:
            point = payload["depotInfoList"][0]["chargingStationInfoList"][0][
                "chargingPointInfoList"
            ][0]
            return "chargingProcessInfo" in point

        info = await bms.information(predicted)
    station = info["depotInfoList"][0]["chargingStationInfoList"][0]
    assert station["chargingStationStatus"] == "Available"
    point = station["chargingPointInfoList"][0]
    assert point["chargingPointStatus"] == "Occupied"
    assert point["vehicleInfo"]["vehicleId"] == "V17"
    process = point["chargingProcessInfo"]
    assert process["chargingProcessId"] == "urn:example:process:1"
    assert process["chargingRequestId"] == "urn:example:request:1"
    prediction = process["chargingPredictionData"]
    # Minimum: (50 − 20) % of 400 = 120 kWh at 10 kWh a step: 3 h; final: 280 kWh, 7 h.
    assert prediction["chargingPredictionDataMinSoc"] == {
        "requestedMinSoc": 50,
        "predictedTime": f"{TODAY}T23:00:00.000Z",
    }
    assert prediction["chargingPredictionDataFinalSoc"] == {
        "predictedFinalSoc": 90,
        "predictedTime": f"{TOMORROW}T03:00:00.000Z",
    }
    # The free connector is reported too, without a vehicle.
    assert station["chargingPointInfoList"][1]["chargingPointStatus"] in (
        "Available",
        "Unavailable",
    )


BAD_FRAMES = [
    ("not-json", "[1, 'BMS'", "not JSON"),
    (
        "six-slots",
        json.dumps(
            [1, "BMS", PRESYSTEM, f"{TODAY}T20:00:00Z", str(uuid.uuid4()), "BootNotification"]
        ),
        "MessageStructure",
    ),
    (
        "type-4",
        json.dumps(
            [
                4,
                "BMS",
                PRESYSTEM,
                f"{TODAY}T20:00:00Z",
                str(uuid.uuid4()),
                "BootNotification",
                {"presystem": "BMS"},
            ]
        ),
        "MessageStructure",
    ),
    (
        "bad-uuid",
        json.dumps(
            [
                1,
                "BMS",
                PRESYSTEM,
                f"{TODAY}T20:00:00Z",
                "17",
                "BootNotification",
                {"presystem": "BMS"},
            ]
        ),
        "MessageStructure",
    ),
    (
        "bad-payload",
        json.dumps(
            [
                1,
                "BMS",
                PRESYSTEM,
                f"{TODAY}T20:00:00Z",
                str(uuid.uuid4()),
                "BootNotification",
                {"presystem": "ERP"},
            ]
        ),
        "BootNotificationRequest",
    ),
    (
        "missing-target",
        json.dumps(
            [
                1,
                "BMS",
                PRESYSTEM,
                f"{TODAY}T20:00:00Z",
                str(uuid.uuid4()),
                "ProvideChargingRequests",
                {
                    "chargingRequestList": [
                        {
                            "vehicleId": "V17",
                            "chargingRequestId": "urn:r:1",
                            "chargingRequestData": {"minTargetSoc": 50},
                        }
                    ]
                },
            ]
        ),
        "maxTargetSoc",
    ),
    (
        "wrong-direction",
        json.dumps(
            [
                1,
                "BMS",
                PRESYSTEM,
                f"{TODAY}T20:00:00Z",
                str(uuid.uuid4()),
                "ProvideChargingInformation",
                {
                    "depotInfoList": [
                        {
                            "depotId": "urn:d",
                            "chargingStationInfoList": [
                                {
                                    "chargingStationId": "urn:s",
                                    "chargingStationStatus": "Available",
                                    "chargingPointInfoList": [
                                        {
                                            "chargingPointId": "urn:p",
                                            "chargingPointStatus": "Available",
                                        }
                                    ],
                                }
                            ],
                        }
                    ]
                },
            ]
        ),
        "not to it",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [b[1:] for b in BAD_FRAMES], ids=[b[0] for b in BAD_FRAMES]
)
async def test_a_malformed_frame_gets_an_error_and_the_connection_lives(
    server: VdvServer, text: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(server) as bms, client(server) as other:
        error = await bms.send_raw(text)
        assert error[0] == 3 and message in error[6]["errorMessage"], error
        assert "VDV 463: refused a frame" in caplog.text
        # The same connection and another one still work.
        assert (await bms.call("BootNotification", {"presystem": "BMS"}))[6] == {
            "status": "Accepted"
        }
        assert (await other.call("BootNotification", {"presystem": "ITCS"}))[0] == 2


@pytest.mark.parametrize(
    ("vehicle", "data", "message"),
    [
        ("V99", {}, "unknown vehicleId 'V99'"),
        ("bus-18", {}, "no battery capacity"),
        ("V17", {"minTargetSoc": 95}, "minTargetSoc 95 is above maxTargetSoc 90"),
        ("V17", {"maxTargetSoc": 150}, "not a SoC"),
        ("V17", {"requestedTimeForDeparture": f"{TODAY}T19:00:00Z"}, "in the past"),
    ],
)
async def test_a_request_sitectl_cannot_plan_is_refused_whole(
    server: VdvServer, vehicle: str, data: dict[str, Any], message: str
) -> None:
    session = plug_in(server, 1, "TAG17")
    payload = charging_request(vehicle, **data)
    payload["chargingRequestList"].insert(0, charging_request("V17")["chargingRequestList"][0])
    async with client(server) as bms:
        error = await bms.call("ProvideChargingRequests", payload)
    assert error[0] == 3 and message in error[6]["errorMessage"], error
    assert session.energy_wanted_kwh is None  # all or nothing: the good one is not applied


async def test_a_charging_point_id_binds_a_session_without_an_id_tag(server: VdvServer) -> None:
    session = plug_in(server, 2, "UNKNOWN-TAG")
    request = charging_request("V17")
    request["chargingRequestList"][0]["chargingPointId"] = "urn:sitectl:depot:CP1:2"
    async with client(server) as bms:
        assert (await bms.call("ProvideChargingRequests", request))[0] == 2
        request["chargingRequestList"][0]["chargingPointId"] = "urn:sitectl:depot:CP9:1"
        error = await bms.call("ProvideChargingRequests", request)
    assert session.vehicle_id == "bus-17" and session.energy_wanted_kwh == pytest.approx(280)
    assert error[0] == 3 and "unknown chargingPointId" in error[6]["errorMessage"]


@pytest.mark.parametrize(
    ("auth", "subprotocols", "path", "status"),
    [
        (basic("bms", "wrong-password"), ["v1.463.vdv.de"], "/vdv463", 401),
        ("Bearer " + PASSWORD, ["v1.463.vdv.de"], "/vdv463", 401),
        (basic("bms", PASSWORD), ["ocpp1.6"], "/vdv463", 400),
        (basic("bms", PASSWORD), ["v1.463.vdv.de"], "/other", 404),
    ],
    ids=["wrong-password", "not-basic", "no-subprotocol", "wrong-path"],
)
async def test_a_bad_handshake_is_refused(
    server: VdvServer, auth: str, subprotocols: list[str], path: str, status: int
) -> None:
    url = f"ws://127.0.0.1:{server.port}{path}"
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            url, subprotocols=subprotocols, additional_headers={"Authorization": auth}
        ):
            pass
    assert info.value.response.status_code == status
    if status == 401:
        assert "Basic" in info.value.response.headers["WWW-Authenticate"]


def test_sitectl_run_builds_the_vdv_server_when_enabled(config: Config, tmp_path: Path) -> None:
    from sitectl.app import build_components
    from sitectl.store import Store

    store = Store(tmp_path / "s.sqlite")
    try:
        names = [c.name for c in build_components(config, SiteState(config), store)]
        assert "vdv463" in names
        off = config.model_copy(deep=True)
        off.fleet.vdv463.enabled = False
        assert "vdv463" not in [c.name for c in build_components(off, SiteState(off), store)]
    finally:
        store.close()


async def test_with_tls_the_depot_system_connects_over_wss_only(tmp_path: Path) -> None:
    import ssl

    from tests.ocpp.certs import Pki

    pki = Pki(tmp_path)
    issued = pki.issue("sitectl", server=True)
    text = CONFIG.replace("    info_period_s: 1\n", "    info_period_s: 1\n    tls: true\n")
    text += f"ocpp:\n  tls_cert_file: {issued.cert}\n  tls_key_file: {issued.key}\n"
    path = tmp_path / "site.yaml"
    path.write_text(text)
    cfg = load_config(path, environ={})[0]
    state = SiteState(cfg, clock=lambda: NOW)
    vdv = VdvServer(cfg, state, Fleet(cfg, state), port=0, clock=lambda: NOW)
    task = asyncio.create_task(vdv.run())
    try:
        await asyncio.wait_for(vdv.ready.wait(), 5)
        trust = ssl.create_default_context(cafile=str(pki.ca.cert))
        headers = {"Authorization": basic("bms", PASSWORD)}
        url = f"wss://127.0.0.1:{vdv.port}/vdv463"
        async with connect(
            url, subprotocols=["v1.463.vdv.de"], additional_headers=headers, ssl=trust
        ) as ws:
            assert ws.subprotocol == "v1.463.vdv.de"
            await asyncio.wait_for(await ws.ping(), 5)  # the socket is up over TLS
        # Plain ws:// to the TLS port is no handshake at all.
        with pytest.raises((OSError, TimeoutError, InvalidHandshake, ConnectionClosed)):
            async with connect(
                f"ws://127.0.0.1:{vdv.port}/vdv463",
                subprotocols=["v1.463.vdv.de"],
                additional_headers=headers,
                open_timeout=3,
            ):
                pass
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# Preconditioning (issue #19.3): its power is reserved on the vehicle's charger in the plan.

PRECONDITION_DEPARTURE = NOW + timedelta(hours=8)


def _z(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _built(server: VdvServer):
    memory = {"CP1": ChargerMemory(failsafe_installed=True)}
    builder = ProblemBuilder(server.config)
    return builder, builder.build(server.state, MeterSupervisor(5, 0, 1), memory, NOW, 100.0)


async def test_manual_preconditioning_is_reserved_before_departure(server: VdvServer) -> None:
    session = plug_in(server, 1, "TAG17")
    request: dict[str, Any] = charging_request("V17")
    request["chargingRequestList"][0]["manualPreconditioning"] = {
        "hvacPreconditioningStartTime": _z(PRECONDITION_DEPARTURE - timedelta(minutes=30)),
        "hvacAuxiliaryConsumerPower": 8000,  # W
        "systemPreconditioningStartTime": _z(PRECONDITION_DEPARTURE - timedelta(minutes=45)),
        "systemAuxiliaryConsumerPower": 4000,
    }
    async with client(server) as bms:
        reply = await bms.call("ProvideChargingRequests", request)
    assert reply[0] == 2 and reply[6] == {}
    assert session.preconditioning == (
        (PRECONDITION_DEPARTURE - timedelta(minutes=30), PRECONDITION_DEPARTURE, 8.0),
        (PRECONDITION_DEPARTURE - timedelta(minutes=45), PRECONDITION_DEPARTURE, 4.0),
    )
    builder, built = _built(server)
    problem = built.problem
    (load,) = [x for x in problem.loads if x.id == "precondition:CP1/1"]
    assert load.node == charger_node("CP1")
    ends = builder.horizon.ends_s
    starts = [0.0, *ends[:-1]]
    window = [
        k
        for k, (a, b) in enumerate(zip(starts, ends, strict=True))
        if a < 8 * 3600 and b > 8 * 3600 - 45 * 60
    ]
    amps = 12_000 / (230 * 3)  # both windows overlap the step(s) before the departure
    for k, value in enumerate(load.current_a[0]):
        assert value == pytest.approx(amps if k in window else 0.0)
    # The plan leaves the reserved current free under the charger's 200 A on those steps.
    answer = solve(problem)
    assert answer.method == "lp" and verify(problem, answer) == []
    row = answer.plan_a[[s.id for s in problem.sessions].index("CP1/1")]
    assert np.all(row[window] <= 200 - amps + 1e-6)
    assert row[0] == pytest.approx(200.0)  # before the window: the charger's whole maximum


async def test_automatic_preconditioning_uses_the_vehicles_configured_power(
    server: VdvServer,
) -> None:
    session = plug_in(server, 1, "TAG17")
    request: dict[str, Any] = charging_request("V17")
    request["chargingRequestList"][0]["automaticPreconditioning"] = {
        "preconditioningRequest": "HotWaterAndHeating",
        "requestedFinishTime": _z(PRECONDITION_DEPARTURE),
    }
    async with client(server) as bms:
        assert (await bms.call("ProvideChargingRequests", request))[0] == 2
    # bus-17 configures no preconditioning power: nothing can be reserved.
    assert session.preconditioning == ()
    assert not [x for x in _built(server)[1].problem.loads if x.id.startswith("precondition")]


async def test_a_negative_preconditioning_power_is_refused_and_nothing_reserved(
    server: VdvServer,
) -> None:
    session = plug_in(server, 1, "TAG17")
    request: dict[str, Any] = charging_request("V17")
    request["chargingRequestList"][0]["manualPreconditioning"] = {
        "hvacPreconditioningStartTime": _z(PRECONDITION_DEPARTURE - timedelta(minutes=30)),
        "hvacAuxiliaryConsumerPower": -8000,
        "systemPreconditioningStartTime": _z(PRECONDITION_DEPARTURE - timedelta(minutes=45)),
        "systemAuxiliaryConsumerPower": 4000,
    }
    async with client(server) as bms:
        error = await bms.call("ProvideChargingRequests", request)
        # The connection lives on: a good request afterwards is applied.
        good = await bms.call("ProvideChargingRequests", charging_request("V17"))
    assert error[0] == 3 and "AuxiliaryConsumerPower" in str(error[6]), error
    assert good[0] == 2
    assert session.preconditioning == ()
