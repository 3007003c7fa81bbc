"""The router without sockets: exact frames in, exact frames out."""

from __future__ import annotations

import json

import pytest

from sitectl.ocpp.router import (
    _TRANSITIONS,
    ForwardTimeout,
    Lane,
    LocalCallAborted,
    LocalCallError,
    LocalCallResult,
    LocalCallTimeout,
    LocalProtocolError,
    Origin,
    PeerProtocolError,
    RequestSeen,
    ResponseSeen,
    Side,
    SlotState,
)
from tests.ocpp.harness import Harness

BOOT = '[2,"b1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]'
PROFILE = {
    "connectorId": 0,
    "csChargingProfiles": {
        "chargingProfileId": 900001,
        "stackLevel": 8,
        "chargingProfilePurpose": "ChargePointMaxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 13.8}],
        },
    },
}


def test_charger_call_and_csms_answer_pass_byte_for_byte() -> None:
    h = Harness()
    h.charger(BOOT)
    assert h.to_csms() == [BOOT]
    answer = (
        '[3, "b1", {"status": "Accepted", "currentTime": "2026-01-01T00:00:00Z", '
        '"interval": 300}]'
    )  # odd spacing must survive
    h.csms(answer)
    assert h.to_charger() == [answer]
    events = h.take_events()
    assert events[0] == RequestSeen(
        Origin.CHARGER,
        "b1",
        "BootNotification",
        {"chargePointVendor": "V", "chargePointModel": "M"},
    )
    assert isinstance(events[1], ResponseSeen) and events[1].response["interval"] == 300


def test_csms_call_goes_to_charger_and_answer_back() -> None:
    h = Harness()
    h.csms('[2,"c1","GetConfiguration",{}]')
    assert h.to_charger() == ['[2,"c1","GetConfiguration",{}]']
    h.charger('[3,"c1",{"configurationKey":[]}]')
    assert h.to_csms() == ['[3,"c1",{"configurationKey":[]}]']


def test_local_call_answer_is_consumed_not_forwarded() -> None:
    h = Harness()
    message_id = h.local("SetChargingProfile", PROFILE)
    assert message_id == "L1"
    [frame] = h.to_charger()
    assert json.loads(frame)[:3] == [2, "L1", "SetChargingProfile"]
    h.charger('[3,"L1",{"status":"Accepted"}]')
    assert h.to_csms() == []
    assert h.take_events() == [LocalCallResult("L1", "SetChargingProfile", {"status": "Accepted"})]


def test_local_and_csms_calls_never_overlap_toward_the_charger() -> None:
    h = Harness()
    h.local("SetChargingProfile", PROFILE)
    h.to_charger()
    h.csms('[2,"c1","RemoteStartTransaction",{"idTag":"T1"}]')
    assert h.to_charger() == [], "a second CALL must wait for the first answer"
    h.local("GetConfiguration", {})
    h.charger('[3,"L1",{"status":"Accepted"}]')
    # Arrival order: the CSMS call was queued before sitectl's second call.
    assert h.to_charger() == ['[2,"c1","RemoteStartTransaction",{"idTag":"T1"}]']
    h.charger('[3,"c1",{"status":"Accepted"}]')
    assert h.to_csms() == ['[3,"c1",{"status":"Accepted"}]']
    assert [json.loads(f)[1] for f in h.to_charger()] == ["L2"]


def test_a_csms_call_goes_ahead_of_sitectls_queued_calls() -> None:
    # Issue #17: sitectl's own calls (fail-safe, probe, composite checks) delayed the CSMS's.
    h = Harness()
    h.local("SetChargingProfile", PROFILE)
    h.to_charger()
    h.local("GetConfiguration", {})
    h.local("GetConfiguration", {})
    h.csms('[2,"c1","RemoteStartTransaction",{"idTag":"T1"}]')
    h.csms('[2,"c2","RemoteStartTransaction",{"idTag":"T2"}]')
    assert h.to_charger() == [], "the call in flight is never overtaken"
    h.charger('[3,"L1",{"status":"Accepted"}]')
    assert [json.loads(f)[1] for f in h.to_charger()] == ["c1"]
    h.charger('[3,"c1",{"status":"Accepted"}]')
    assert [json.loads(f)[1] for f in h.to_charger()] == ["c2"]  # the CSMS's own order kept
    h.charger('[3,"c2",{"status":"Accepted"}]')
    assert [json.loads(f)[1] for f in h.to_charger()] == ["L2"]


def test_timeout_frees_the_slot_and_reports() -> None:
    h = Harness(charger_timeout_s=10)
    h.local("GetConfiguration", {})
    h.csms('[2,"c1","Reset",{"type":"Soft"}]')
    h.to_charger()
    assert h.router.next_deadline() == 10
    h.advance(9.9)
    assert h.to_charger() == []
    h.advance(0.1)
    assert LocalCallTimeout("L1", "GetConfiguration") in h.take_events()
    assert h.to_charger() == ['[2,"c1","Reset",{"type":"Soft"}]']
    # A late answer to the expired call is dropped and reported, not forwarded.
    h.charger('[3,"L1",{"configurationKey":[]}]')
    assert h.to_csms() == []
    [event] = h.take_events()
    assert isinstance(event, PeerProtocolError) and "unknown or expired" in event.description


def test_forwarded_call_timeout_is_reported() -> None:
    h = Harness(csms_timeout_s=5)
    h.charger(BOOT)
    h.to_csms()
    h.advance(5)
    assert ForwardTimeout(Side.CSMS, "b1", "BootNotification") in h.take_events()
    assert h.router.next_deadline() is None


def test_local_call_error_event() -> None:
    h = Harness()
    h.local("GetConfiguration", {})
    h.charger('[4,"L1","NotSupported","nope",{}]')
    assert h.take_events() == [LocalCallError("L1", "GetConfiguration", "NotSupported", "nope", {})]


def test_abort_local_keeps_forwarded_calls() -> None:
    h = Harness()
    h.local("GetConfiguration", {})
    h.csms('[2,"c1","Reset",{"type":"Soft"}]')
    h.local("GetConfiguration", {})
    h.router.abort_local("charger disconnected")
    events = h.router.events_received()
    assert events == [
        LocalCallAborted("L1", "GetConfiguration", "charger disconnected"),
        LocalCallAborted("L2", "GetConfiguration", "charger disconnected"),
    ]
    assert h.router.queued(Side.CHARGER) == 1


def test_invalid_own_call_raises_before_sending() -> None:
    h = Harness()
    bad = {"connectorId": 0, "csChargingProfiles": {"chargingProfileId": 1}}
    with pytest.raises(LocalProtocolError, match="SetChargingProfile payload is not valid OCPP"):
        h.local("SetChargingProfile", bad)
    assert h.to_charger() == []
    with pytest.raises(LocalProtocolError, match=r"no OCPP 1\.6 schema"):
        h.local("NoSuchAction", {})


def test_decimal_limits_validate() -> None:
    # 13.8 is not a multiple of 0.1 in binary floating point; the schema check uses decimals.
    Harness().local("SetChargingProfile", PROFILE)


@pytest.mark.parametrize(
    ("version", "frame", "reply_code"),
    [
        ("1.6", '[2,"x1","Heartbeat",{', "FormationViolation"),
        ("2.0.1", '[2,"x1","Heartbeat",{', "FormatViolation"),
        ("1.6", '[2,"x1","Heartbeat"]', "FormationViolation"),
        ("2.0.1", '[2,"x1",7,{}]', "FormatViolation"),
        ("1.6", '[9,"x1","Heartbeat",{}]', "FormationViolation"),
        ("2.0.1", '[9,"x1","Heartbeat",{}]', "MessageTypeNotSupported"),
        ("2.0.1", '[4,"x1","GenericError"]', "FormatViolation"),
    ],
    ids=[
        "1.6-json",
        "2.0.1-json",
        "1.6-missing",
        "2.0.1-action-type",
        "1.6-type",
        "2.0.1-type",
        "2.0.1-short-error",
    ],
)
@pytest.mark.parametrize("side", [Side.CHARGER, Side.CSMS])
def test_malformed_frame_with_readable_id_gets_callerror(
    version: str, frame: str, reply_code: str, side: Side
) -> None:
    h = Harness(version)
    if side is Side.CHARGER:
        h.charger(frame)
        replies, other = h.to_charger(), h.to_csms()
    else:
        h.csms(frame)
        replies, other = h.to_csms(), h.to_charger()
    assert other == []
    assert len(replies) == 1
    assert json.loads(replies[0])[:3] == [4, "x1", reply_code]
    [event] = h.take_events()
    assert isinstance(event, PeerProtocolError) and event.side is side


@pytest.mark.parametrize(
    "frame",
    ["not json at all", "{}", "[]", '[2, 17, "Heartbeat", {}]', b"\xff\xfe", '"just a string"'],
)
def test_malformed_frame_without_id_is_dropped_and_reported(frame) -> None:
    h = Harness()
    h.charger(frame if isinstance(frame, str) else frame.decode("latin-1"))
    assert h.to_charger() == [] and h.to_csms() == []
    [event] = h.take_events()
    assert isinstance(event, PeerProtocolError)


def test_malformed_answer_to_inflight_call_is_not_answered() -> None:
    h = Harness()
    h.csms('[2,"c1","Reset",{"type":"Soft"}]')
    h.to_charger()
    h.charger('[3,"c1",{"status":')  # broken answer: can't CALLERROR an answer
    assert h.to_charger() == [] and h.to_csms() == []


def test_vendor_and_signed_frames_pass_through_untouched() -> None:
    h = Harness("2.0.1")
    vendor = (
        '[2,"v1","DataTransfer",{"vendorId":"com.acme","messageId":"x","data":"{}",'
        '"customData":{"vendorId":"acme","extra":[1,2]}}]'
    )
    h.charger(vendor)
    assert h.to_csms() == [vendor]
    h.csms('[3,"v1",{"status":"Accepted"}]')
    assert h.to_charger() == ['[3,"v1",{"status":"Accepted"}]']
    signed = '[2,"s1","BootNotification-Signed",{"payload":"eyJhbGciOi...","sig":"abc"}]'
    h.charger(signed)
    assert h.to_csms() == [signed]


def test_21_send_frames_pass_through() -> None:
    h = Harness("2.1")
    h.charger('[6,"s1","NotifyPeriodicEventStream",{"id":1,"pending":0,"basetime":"x","data":[]}]')
    assert len(h.to_csms()) == 1


def test_lane_transition_table_rejects_impossible_events() -> None:
    lane = Lane(Side.CHARGER, 1.0)
    with pytest.raises(LocalProtocolError, match="can't handle 'answer' when the lane"):
        lane.transition("answer")
    lane.transition("send")
    assert lane.state is SlotState.AWAITING_REPLY
    with pytest.raises(LocalProtocolError):
        lane.transition("send")
    # Every state can be left: nothing gets stuck.
    assert {state for state, _ in _TRANSITIONS} == set(SlotState)


def test_a_withdrawn_queued_call_is_never_written_and_one_in_flight_stays() -> None:
    h = Harness()
    first = h.local("SetChargingProfile", PROFILE)
    second = h.local("SetChargingProfile", PROFILE)
    assert len(h.to_charger()) == 1  # one in flight, the second queued
    assert not h.router.withdraw_local(first)  # in flight: already written, stays
    assert h.router.withdraw_local(second)
    assert not h.router.withdraw_local(second)
    h.charger([3, first, {"status": "Accepted"}])
    assert h.to_charger() == []  # the withdrawn one is not sent after the answer
