"""SiteState kept current from observed OCPP traffic: both versions' payload shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from ocpp.v16 import call as call16

from sitectl.ocpp.composite import InstalledProfile, composite_limit_a
from sitectl.ocpp.observe import (
    REMOTE_START_BIND_S,
    StateObserver,
    hash_id_tag,
    parse_sampled_values,
)
from sitectl.ocpp.router import Origin, RequestSeen, ResponseSeen
from sitectl.sim.charger import SimCharger
from sitectl.state import Change, SessionState, SiteState
from tests.helpers import wait_for
from tests.ocpp.conftest import PASSWORD, depot_config


@pytest.fixture
def observed():
    config = depot_config(
        [{"id": "CP1", "connectors": 2}, {"id": "CP2", "ocpp_version": "2.0.1"}], None
    )
    state = SiteState(config)
    changes: list[Change] = []
    state.subscribe(changes.append)
    observer = StateObserver(state)

    def feed(identity: str, *events) -> None:
        observer.link_events(SimpleNamespace(identity=identity), list(events))

    return state, feed, changes


def req(action, payload, origin=Origin.CHARGER):
    return RequestSeen(origin, "m", action, payload)


def res(action, request, response, origin=Origin.CHARGER):
    return ResponseSeen(origin, "m", action, request, response)


def test_boot_both_versions(observed) -> None:
    state, feed, _ = observed
    feed(
        "CP1",
        res(
            "BootNotification",
            {"chargePointVendor": "ABB", "chargePointModel": "T", "firmwareVersion": "1.2"},
            {"status": "Accepted", "interval": 300, "currentTime": "x"},
        ),
    )
    feed(
        "CP2",
        res(
            "BootNotification",
            {
                "chargingStation": {"vendorName": "Kempower", "model": "S", "firmwareVersion": "9"},
                "reason": "PowerUp",
            },
            {"status": "Pending", "interval": 60, "currentTime": "x"},
        ),
    )
    one, two = state.chargers["CP1"], state.chargers["CP2"]
    assert (one.vendor, one.model, one.firmware_version, one.boot_accepted) == (
        "ABB",
        "T",
        "1.2",
        True,
    )
    assert (two.vendor, two.model, two.boot_accepted, two.boot_interval_s) == (
        "Kempower",
        "S",
        False,
        60,
    )


def test_status_both_versions(observed) -> None:
    state, feed, changes = observed
    feed(
        "CP1",
        req(
            "StatusNotification",
            {"connectorId": 2, "status": "Faulted", "errorCode": "GroundFailure"},
        ),
    )
    feed(
        "CP1",
        req(
            "StatusNotification", {"connectorId": 0, "status": "Available", "errorCode": "NoError"}
        ),
    )
    feed(
        "CP2",
        req(
            "StatusNotification",
            {"timestamp": "x", "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1},
        ),
    )
    assert state.chargers["CP1"].connectors[2].status == "Faulted"
    assert state.chargers["CP1"].connectors[2].error_code == "GroundFailure"
    assert state.chargers["CP2"].connectors[1].status == "Occupied"
    assert Change("connector", "CP1/2") in changes


def test_16_session_with_meter_values(observed) -> None:
    state, feed, changes = observed
    start = {"connectorId": 1, "idTag": "RFID-1", "meterStart": 10_000, "timestamp": "x"}
    feed(
        "CP1",
        res("StartTransaction", start, {"transactionId": 42, "idTagInfo": {"status": "Accepted"}}),
    )
    session = state.chargers["CP1"].connectors[1].session
    assert session.transaction_id == "42"
    assert session.id_tag_hash == hash_id_tag("test", "RFID-1") != "RFID-1"
    feed(
        "CP1",
        req(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": 42,
                "meterValue": [
                    {
                        "timestamp": "x",
                        "sampledValue": [
                            {
                                "value": "12.5",
                                "measurand": "Current.Import",
                                "phase": "L1",
                                "unit": "A",
                            },
                            {
                                "value": "12.0",
                                "measurand": "Current.Import",
                                "phase": "L2",
                                "unit": "A",
                            },
                            {
                                "value": "0",
                                "measurand": "Current.Import",
                                "phase": "L3",
                                "unit": "A",
                            },
                            {"value": "8.3", "measurand": "Power.Active.Import", "unit": "kW"},
                            {"value": "12.5", "unit": "kWh"},
                            {"value": "55", "measurand": "SoC", "unit": "Percent"},
                        ],
                    }
                ],
            },
        ),
    )
    connector = state.chargers["CP1"].connectors[1]
    assert connector.current_a == (12.5, 12.0, 0.0)
    assert connector.power_kw == 8.3 and connector.soc_percent == 55
    assert session.energy_wh == 2500
    feed(
        "CP1", req("StopTransaction", {"transactionId": 42, "meterStop": 14_000, "timestamp": "x"})
    )
    assert connector.session is None and session.energy_wh == 4000
    kinds = [c.kind for c in changes]
    assert (
        kinds.index("session_started") < kinds.index("measurement") < kinds.index("session_ended")
    )


def test_16_rejected_start_opens_no_session(observed) -> None:
    state, feed, _ = observed
    feed(
        "CP1",
        res(
            "StartTransaction",
            {"connectorId": 1, "idTag": "X", "meterStart": 0, "timestamp": "x"},
            {"transactionId": 7, "idTagInfo": {"status": "Invalid"}},
        ),
    )
    assert state.chargers["CP1"].connectors[1].session is None


def test_201_transaction_events_and_charging_needs(observed) -> None:
    state, feed, _ = observed
    feed(
        "CP2",
        req(
            "TransactionEvent",
            {
                "eventType": "Started",
                "timestamp": "x",
                "triggerReason": "Authorized",
                "seqNo": 0,
                "transactionInfo": {"transactionId": "abc"},
                "evse": {"id": 1, "connectorId": 1},
                "idToken": {"idToken": "T", "type": "ISO14443"},
                "meterValue": [
                    {
                        "timestamp": "x",
                        "sampledValue": [
                            {
                                "value": 1.5,
                                "measurand": "Energy.Active.Import.Register",
                                "unitOfMeasure": {"unit": "Wh", "multiplier": 3},
                            }
                        ],
                    }
                ],
            },
        ),
    )
    connector = state.chargers["CP2"].connectors[1]
    assert connector.session.meter_start_wh == 1500
    feed(
        "CP2",
        req(
            "NotifyEVChargingNeeds",
            {
                "evseId": 1,
                "chargingNeeds": {
                    "requestedEnergyTransfer": "AC_three_phase",
                    "acChargingParameters": {
                        "energyAmount": 40000,
                        "evMinCurrent": 6,
                        "evMaxCurrent": 16,
                        "evMaxVoltage": 400,
                    },
                },
            },
        ),
    )
    assert connector.session.energy_wanted_kwh == 40
    assert connector.session.ev_max_current_a == 16
    # Updated events carry no evse: the transaction id finds the connector.
    feed(
        "CP2",
        req(
            "TransactionEvent",
            {
                "eventType": "Updated",
                "timestamp": "x",
                "triggerReason": "MeterValuePeriodic",
                "seqNo": 1,
                "transactionInfo": {"transactionId": "abc"},
                "meterValue": [
                    {
                        "timestamp": "x",
                        "sampledValue": [
                            {"value": 16.0, "measurand": "Current.Import", "phase": "L1-N"},
                            {"value": 11500, "measurand": "Energy.Active.Import.Register"},
                        ],
                    }
                ],
            },
        ),
    )
    assert connector.current_a == (16.0, None, None)
    assert connector.session.energy_wh == 10000
    feed(
        "CP2",
        req(
            "TransactionEvent",
            {
                "eventType": "Ended",
                "timestamp": "x",
                "triggerReason": "EVDeparted",
                "seqNo": 2,
                "transactionInfo": {"transactionId": "abc"},
            },
        ),
    )
    assert connector.session is None


def test_csms_profiles_recorded_cleared_and_conflicts_alarmed(observed) -> None:
    state, feed, changes = observed
    profile = {
        "chargingProfileId": 5,
        "stackLevel": 2,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 20}],
        },
    }
    request = {"connectorId": 1, "csChargingProfiles": profile}
    feed("CP1", res("SetChargingProfile", request, {"status": "Accepted"}, Origin.CSMS))
    assert state.chargers["CP1"].csms_profiles[5].profile["chargingSchedule"]
    # sitectl's own profiles (origin LOCAL) are never recorded as CSMS bounds.
    feed(
        "CP1",
        res(
            "SetChargingProfile",
            {"connectorId": 1, "csChargingProfiles": dict(profile, chargingProfileId=6)},
            {"status": "Accepted"},
            Origin.LOCAL,
        ),
    )
    assert set(state.chargers["CP1"].csms_profiles) == {5}
    conflict = dict(profile, chargingProfileId=9, stackLevel=8)
    feed(
        "CP1",
        res(
            "SetChargingProfile",
            {"connectorId": 0, "csChargingProfiles": conflict},
            {"status": "Accepted"},
            Origin.CSMS,
        ),
    )
    assert ("csms_profile_conflict", "CP1") in state.alarms
    feed("CP1", res("ClearChargingProfile", {}, {"status": "Accepted"}, Origin.CSMS))
    assert state.chargers["CP1"].csms_profiles == {}
    assert Change("profiles_cleared", "CP1") in changes


def test_odd_payload_is_logged_and_skipped(observed, caplog) -> None:
    state, feed, _ = observed
    feed(
        "CP1",
        req("StatusNotification", {"connectorId": "one", "status": 5}),
        req("StatusNotification", {"connectorId": 1, "status": "Charging", "errorCode": "NoError"}),
    )
    assert "could not read StatusNotification payload" in caplog.text
    assert state.chargers["CP1"].connectors[1].status == "Charging"


def test_sampled_values_ignore_garbage() -> None:
    assert parse_sampled_values([{"sampledValue": [{"value": "NaN"}, {"value": "abc"}, "x"]}]) == {}


async def test_state_follows_a_real_session_through_the_proxy(csms, start_server) -> None:
    config = depot_config([{"id": "CP1"}], csms.url)
    state = SiteState(config)
    _, url = await start_server(config, StateObserver(state))
    charger = state.chargers["CP1"]
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        assert charger.connected and charger.upstream_connected and charger.boot_accepted
        started = await sim.start_transaction(1, "TAG", 500)
        await sim.meter_values(1, [10.0, 10.5, 11.0], 1500, started.transaction_id)
        assert charger.connectors[1].current_a == (10.0, 10.5, 11.0)
        assert charger.connectors[1].session.energy_wh == 1000
    await wait_for(lambda: not charger.connected, message="the disconnect to be observed")
    assert not charger.upstream_connected


async def test_recent_frames_are_kept_with_credentials_redacted(csms, start_server) -> None:
    from ocpp.v16 import call as call16

    config = depot_config([{"id": "CP1"}], csms.url)
    state = SiteState(config)
    _, url = await start_server(config, StateObserver(state))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        await csms.call(
            "CP1", call16.ChangeConfiguration(key="AuthorizationKey", value="0123456789abcdef0123")
        )
    frames = list(state.chargers["CP1"].recent_frames)
    texts = [text for _, _, _, text in frames]
    assert any('"BootNotification"' in t for t in texts)
    assert [(side, direction) for _, side, direction, t in frames if '"BootNotification"' in t] == [
        ("charger", "in"),
        ("csms", "out"),
    ]
    assert not any("0123456789abcdef0123" in t for t in texts)
    # Only the value goes: the frame stays readable for commissioning.
    assert any('"key":"AuthorizationKey","value":"<redacted>"' in t for t in texts)


# After a restart of sitectl: sessions under way are found again (issue #16).


def restored(state: SiteState, charger: str, connector: int, transaction_id: str) -> SessionState:
    """A session the store kept from the last run (what ActiveSessions.load puts in)."""
    session = SessionState(
        f"{charger}/{transaction_id}",
        connector,
        state.clock(),
        transaction_id=transaction_id,
        meter_start_wh=1000.0,
        energy_wh=5000.0,
        energy_wanted_kwh=80.0,
        need_source="command",
        charger_id=charger,
        origin="restored",
    )
    state.restored_sessions[(charger, connector)] = session
    return session


def status(connector: int, value: str):
    return req(
        "StatusNotification", {"connectorId": connector, "status": value, "errorCode": "NoError"}
    )


def meter_values(connector: int, transaction_id, amps: float, register_wh: float):
    payload = {
        "connectorId": connector,
        "meterValue": [
            {
                "timestamp": "x",
                "sampledValue": [
                    {"value": str(amps), "measurand": "Current.Import", "phase": "L1"},
                    {"value": str(register_wh), "unit": "Wh"},
                ],
            }
        ],
    }
    if transaction_id is not None:
        payload["transactionId"] = transaction_id
    return req("MeterValues", payload)


def test_16_stored_session_is_restored_by_status_and_keeps_its_need(observed) -> None:
    state, feed, changes = observed
    kept = restored(state, "CP1", 1, "42")
    feed("CP1", status(1, "Charging"))
    session = state.chargers["CP1"].connectors[1].session
    assert session is kept and session.origin == "restored"
    assert session.energy_wanted_kwh == 80 and state.restored_sessions == {}
    assert Change("session_restored", "CP1/42") in changes
    feed("CP1", meter_values(1, 42, 16.0, 9000.0))
    assert session.energy_wh == 8000  # register minus the stored meter start
    # The vehicle leaves: Available ends the restored session.
    feed("CP1", status(1, "Available"))
    assert state.chargers["CP1"].connectors[1].session is None
    assert state.ended_sessions[-1] is kept


def test_16_unknown_transaction_in_meter_values_is_adopted(observed) -> None:
    state, feed, _ = observed
    restored(state, "CP1", 1, "42")  # the connector has since moved on to transaction 43
    feed("CP1", meter_values(1, 43, 16.0, 20_000.0))
    session = state.chargers["CP1"].connectors[1].session
    assert session.transaction_id == "43" and session.origin == "adopted"
    assert session.energy_wanted_kwh is None  # unknown need: charges until the car stops
    assert state.restored_sessions == {}
    assert [s.transaction_id for s in state.ended_sessions] == ["42"]
    # Its StopTransaction later closes it as usual.
    feed(
        "CP1", req("StopTransaction", {"transactionId": 43, "meterStop": 21_000, "timestamp": "x"})
    )
    assert state.chargers["CP1"].connectors[1].session is None


def test_16_transaction_ended_while_sitectl_was_down_is_closed(observed) -> None:
    state, feed, _ = observed
    restored(state, "CP1", 2, "7")
    # The charger sends the StopTransaction it queued while sitectl was down.
    feed("CP1", req("StopTransaction", {"transactionId": 7, "meterStop": 4000, "timestamp": "x"}))
    assert state.restored_sessions == {}
    assert state.ended_sessions[-1].transaction_id == "7"
    assert state.ended_sessions[-1].energy_wh == 3000


def test_16_a_status_alone_restores_nothing_it_cannot_match(observed) -> None:
    state, feed, _ = observed
    feed("CP1", status(1, "Charging"))  # no stored session, no transaction id yet
    connector = state.chargers["CP1"].connectors[1]
    assert connector.session is None and connector.status == "Charging"


def test_201_updated_event_without_evse_after_a_restart_is_placed(observed) -> None:
    state, feed, _ = observed
    event = {
        "eventType": "Updated",
        "timestamp": "x",
        "triggerReason": "MeterValuePeriodic",
        "seqNo": 7,
        "transactionInfo": {"transactionId": "tx-9", "chargingState": "Charging"},
        "meterValue": [
            {
                "timestamp": "x",
                "sampledValue": [{"value": 20.0, "measurand": "Current.Import", "phase": "L1-N"}],
            }
        ],
    }
    feed("CP2", req("TransactionEvent", event))  # CP2 has one EVSE: it can only be that one
    connector = state.chargers["CP2"].connectors[1]
    assert connector.session.transaction_id == "tx-9" and connector.session.origin == "adopted"
    assert connector.current_a == (20.0, None, None)
    feed("CP2", req("TransactionEvent", dict(event, eventType="Ended", seqNo=8)))
    assert connector.session is None


LEAVES = (datetime.now(UTC) + timedelta(hours=9)).replace(microsecond=0)


def test_201_charging_needs_of_a_dc_vehicle_and_its_departure(observed) -> None:
    state, feed, _ = observed
    feed(
        "CP2",
        req(
            "TransactionEvent",
            {
                "eventType": "Started",
                "timestamp": "x",
                "triggerReason": "Authorized",
                "seqNo": 0,
                "transactionInfo": {"transactionId": "dc"},
                "evse": {"id": 1, "connectorId": 1},
            },
        ),
        req(
            "NotifyEVChargingNeeds",
            {
                "evseId": 1,
                "chargingNeeds": {
                    "requestedEnergyTransfer": "DC",
                    "departureTime": LEAVES.isoformat().replace("+00:00", "Z"),
                    "dcChargingParameters": {
                        "evMaxCurrent": 300,
                        "evMaxVoltage": 800,
                        "energyAmount": 250_000,
                        "stateOfCharge": 35,
                    },
                },
            },
        ),
    )
    session = state.chargers["CP2"].connectors[1].session
    assert session.energy_wanted_kwh == 250 and session.need_source == "vehicle"
    assert session.departure == LEAVES and session.departure_source == "vehicle"
    assert state.chargers["CP2"].connectors[1].soc_percent == 35  # for the fleet's SoC targets


def test_sampled_values_read_every_way_chargers_report() -> None:
    found = parse_sampled_values(
        [
            {
                "sampledValue": [
                    {"value": "14", "measurand": "Current.Import"},  # no phase
                    {"value": "16", "measurand": "Current.Offered"},
                    {
                        "value": "2.3",
                        "measurand": "Power.Active.Import",
                        "phase": "L1",
                        "unit": "kW",
                    },
                    {
                        "value": "2.2",
                        "measurand": "Power.Active.Import",
                        "phase": "L2",
                        "unit": "kW",
                    },
                    {"value": "229", "measurand": "Voltage", "phase": "L1-N"},
                    {"value": "400", "measurand": "Voltage", "phase": "L1-L2"},  # not a phase one
                    {
                        "value": "99",
                        "measurand": "Current.Import",
                        "phase": "L1",
                        "location": "Inlet",
                    },  # the charger's own supply: not the vehicle's
                ]
            }
        ]
    )
    assert found == {
        "current_phaseless_a": 14.0,
        "offered_a": 16.0,
        "power_kw": pytest.approx(4.5),
        "voltage_v": 229.0,
    }


TX_PROFILE = {
    "chargingProfileId": 77,
    "stackLevel": 1,
    "chargingProfilePurpose": "TxProfile",
    "chargingProfileKind": "Relative",
    "chargingSchedule": {
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}],
    },
}


def test_remote_start_profile_bounds_the_transaction_it_begins_and_ends_with_it(observed) -> None:
    state, feed, _ = observed
    charger = state.chargers["CP1"]
    remote = {"idTag": "T", "connectorId": 2, "chargingProfile": TX_PROFILE}
    feed("CP1", res("RemoteStartTransaction", remote, {"status": "Accepted"}, Origin.CSMS))
    assert charger.csms_profiles == {}  # no transaction yet
    # A session on the other connector is not the remote start's.
    start = {"connectorId": 1, "idTag": "X", "meterStart": 0, "timestamp": "x"}
    feed(
        "CP1",
        res("StartTransaction", start, {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}),
    )
    assert charger.csms_profiles == {}
    start = {"connectorId": 2, "idTag": "T", "meterStart": 0, "timestamp": "x"}
    feed(
        "CP1",
        res("StartTransaction", start, {"transactionId": 2, "idTagInfo": {"status": "Accepted"}}),
    )
    bound = charger.csms_profiles[77]
    assert (bound.connector_id, bound.purpose, bound.profile["transactionId"]) == (
        2,
        "TxProfile",
        "2",
    )
    assert charger.remote_start_profile is None
    feed("CP1", req("StopTransaction", {"transactionId": 2, "meterStop": 5, "timestamp": "x"}))
    assert charger.csms_profiles == {}


def test_remote_start_profile_refused_late_or_local_is_not_a_bound(observed) -> None:
    state, feed, _ = observed
    charger = state.chargers["CP2"]
    request = {
        "idToken": {"idToken": "T", "type": "ISO14443"},
        "remoteStartId": 1,
        "chargingProfile": dict(TX_PROFILE, id=78),
    }
    feed("CP2", res("RequestStartTransaction", request, {"status": "Rejected"}, Origin.CSMS))
    feed("CP2", res("RequestStartTransaction", request, {"status": "Accepted"}, Origin.LOCAL))
    assert charger.remote_start_profile is None
    feed("CP2", res("RequestStartTransaction", request, {"status": "Accepted"}, Origin.CSMS))
    # Too long ago: the charger has given up on it; a later session is someone else's.
    connector_id, profile, at = charger.remote_start_profile
    charger.remote_start_profile = (
        connector_id,
        profile,
        at - timedelta(seconds=REMOTE_START_BIND_S + 1),
    )
    feed(
        "CP2",
        req(
            "TransactionEvent",
            {
                "eventType": "Started",
                "timestamp": "x",
                "triggerReason": "Authorized",
                "seqNo": 0,
                "transactionInfo": {"transactionId": "t9"},
                "evse": {"id": 1, "connectorId": 1},
            },
        ),
    )
    assert charger.csms_profiles == {} and charger.remote_start_profile is None


async def test_a_remote_start_profile_through_the_proxy_caps_the_session(
    csms, start_server
) -> None:
    config = depot_config([{"id": "CP1"}], csms.url)
    state = SiteState(config)
    _, url = await start_server(config, StateObserver(state))
    charger = state.chargers["CP1"]
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        result = await csms.call(
            "CP1",
            call16.RemoteStartTransaction(
                id_tag="TAG",
                connector_id=1,
                charging_profile={
                    "charging_profile_id": 77,
                    "stack_level": 1,
                    "charging_profile_purpose": "TxProfile",
                    "charging_profile_kind": "Relative",
                    "charging_schedule": {
                        "charging_rate_unit": "A",
                        "charging_schedule_period": [{"start_period": 0, "limit": 10}],
                    },
                },
            ),
        )
        assert result.status == "Accepted"
        await wait_for(lambda: charger.remote_start_profile is not None)
        started = await sim.start_transaction(1, "TAG", 0)
        session = charger.connectors[1].session
        installed = [
            InstalledProfile(p.connector_id, p.profile, p.received_at)
            for p in charger.csms_profiles.values()
        ]
        limit = composite_limit_a(
            installed,
            1,
            state.clock(),
            transaction_id=session.transaction_id,
            transaction_start=session.started_at,
        )
        assert session.transaction_id == str(started.transaction_id)
        assert limit == 10
