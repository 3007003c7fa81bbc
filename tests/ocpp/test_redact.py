"""Frames kept for /api/chargers/{id}: no credential or id token reaches an open read (#22.1)."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient, TestServer
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from pydantic import SecretStr

from sitectl.http.server import HttpServer
from sitectl.ocpp.observe import StateObserver, hash_id_tag
from sitectl.ocpp.redact import redact_frame
from sitectl.sim.charger import SimCharger
from sitectl.state import SiteState
from tests.ocpp.conftest import PASSWORD, depot_config

TOKEN = "http-token-0123456789abcdef"
#: Every secret the frames below carry; none may be in a redacted frame.
SECRETS = (
    "vpn-pass-0001",
    "vpn-key-0002",
    "apn-pass-0003",
    "4711",
    "basic-auth-password-0004",
    "0123456789abcdef0123",
    "RFID-TAG-0005",
    "RFID-LOCAL-0006",
    "DE-ABC-C12345678-X",
    "secret vendor payload",
    "url-user:url-pass",
)


def test_each_kind_of_secret_is_redacted_by_field() -> None:
    frames = [
        [
            2,
            "1",
            "SetNetworkProfile",
            {
                "configurationSlot": 1,
                "connectionData": {
                    "ocppCsmsUrl": "wss://url-user:url-pass@csms.example/ocpp",
                    "vpn": {
                        "server": "vpn.example",
                        "user": "u",
                        "password": "vpn-pass-0001",
                        "key": "vpn-key-0002",
                        "type": "IPSec",
                    },
                    "apn": {"apn": "internet", "apnPassword": "apn-pass-0003", "simPin": 4711},
                },
            },
        ],
        [
            2,
            "2",
            "SetVariables",
            {
                "setVariableData": [
                    {
                        "component": {"name": "SecurityCtrlr"},
                        "variable": {"name": "BasicAuthPassword"},
                        "attributeValue": "basic-auth-password-0004",
                    }
                ]
            },
        ],
        [
            2,
            "3",
            "ChangeConfiguration",
            {"key": "AuthorizationKey", "value": "0123456789abcdef0123"},
        ],
        [
            3,
            "4",
            {
                "configurationKey": [
                    {"key": "AuthorizationKey", "readonly": False, "value": "0123456789abcdef0123"}
                ]
            },
        ],
        [2, "5", "StartTransaction", {"connectorId": 1, "idTag": "RFID-TAG-0005"}],
        [3, "5", {"idTagInfo": {"status": "Accepted", "parentIdTag": "RFID-TAG-0005"}}],
        [
            2,
            "6",
            "SendLocalList",
            {
                "listVersion": 2,
                "updateType": "Full",
                "localAuthorizationList": [{"idTag": "RFID-LOCAL-0006"}],
            },
        ],
        [
            2,
            "7",
            "TransactionEvent",
            {"eventType": "Started", "idToken": {"idToken": "DE-ABC-C12345678-X", "type": "eMAID"}},
        ],
        [2, "8", "DataTransfer", {"vendorId": "acme", "data": "secret vendor payload"}],
        [3, "8", {"status": "Accepted", "data": "secret vendor payload"}],
        [4, "9", "InternalError", "", {"idTag": "RFID-TAG-0005"}],
        [
            2,
            "10",
            "NotifyReport",
            {
                "reportData": [
                    {
                        "component": {"name": "SecurityCtrlr"},
                        "variable": {"name": "BasicAuthPassword"},
                        "variableAttribute": [{"value": "basic-auth-password-0004"}],
                    }
                ]
            },
        ],
    ]
    shown = [redact_frame(json.dumps(frame), "site") for frame in frames]
    leaked = [(s, text) for text in shown for s in SECRETS if s in text]
    assert not leaked
    # What is not secret stays readable for commissioning.
    assert '"server":"vpn.example"' in shown[0] and "csms.example/ocpp" in shown[0]
    assert '"BasicAuthPassword"' in shown[1]
    assert f'"#{hash_id_tag("site", "RFID-TAG-0005")}"' in shown[4]
    assert "1 entries" in shown[6]
    assert redact_frame('[2,"1","Heartbeat",{}]', "site") == '[2,"1","Heartbeat",{}]'
    assert redact_frame("not json RFID-TAG-0005", "site").startswith("[not JSON")
    assert redact_frame("[" * 5000 + "]" * 5000, "site").startswith("[")


async def test_open_reads_show_no_secret_and_raw_frames_need_the_token(csms, start_server) -> None:
    cfg = depot_config([{"id": "CP1"}, {"id": "CP2", "ocpp_version": "2.0.1"}], csms.url)
    cfg = cfg.model_copy(update={"http": cfg.http.model_copy(update={"token": SecretStr(TOKEN)})})
    state = SiteState(cfg)
    observer = StateObserver(state)
    _, url = await start_server(cfg, observer)
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim16:
        await sim16.boot()
        await sim16.start_transaction(1, "RFID-TAG-0005", 0)
        await csms.call(
            "CP1", call16.ChangeConfiguration(key="AuthorizationKey", value="0123456789abcdef0123")
        )
        await csms.call("CP1", call16.DataTransfer(vendor_id="acme", data="secret vendor payload"))
    async with SimCharger("CP2", "2.0.1", url, PASSWORD) as sim201:
        await sim201.boot()
        await csms.call(
            "CP2",
            call201.SetNetworkProfile(
                configuration_slot=1,
                connection_data={
                    "ocpp_version": "OCPP20",
                    "ocpp_transport": "JSON",
                    "ocpp_csms_url": "wss://csms.example/ocpp",
                    "message_timeout": 30,
                    "security_profile": 2,
                    "ocpp_interface": "Wireless0",
                    "vpn": {
                        "server": "vpn.example",
                        "user": "u",
                        "password": "vpn-pass-0001",
                        "key": "vpn-key-0002",
                        "type": "IPSec",
                    },
                    "apn": {
                        "apn": "internet",
                        "apn_password": "apn-pass-0003",
                        "sim_pin": 4711,
                        "apn_authentication": "AUTO",
                    },
                },
            ),
        )
        await csms.call(
            "CP2",
            call201.SetVariables(
                set_variable_data=[
                    {
                        "component": {"name": "SecurityCtrlr"},
                        "variable": {"name": "BasicAuthPassword"},
                        "attribute_value": "basic-auth-password-0004",
                    }
                ]
            ),
        )
    server = HttpServer(cfg, state, raw_frames=observer.raw_frames)
    async with TestClient(TestServer(server.app)) as client:
        texts = ""
        for identity in ("CP1", "CP2"):
            detail = await (await client.get(f"/api/chargers/{identity}")).json()
            texts += json.dumps(detail)
        assert "SetNetworkProfile" in texts and "DataTransfer" in texts and "vpn.example" in texts
        assert [s for s in SECRETS if s in texts] == []
        refused = await client.get("/api/chargers/CP2?raw=true")
        assert refused.status == 401
        raw = await client.get(
            "/api/chargers/CP2?raw=true", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert raw.status == 200
        assert "vpn-pass-0001" in json.dumps(await raw.json())
