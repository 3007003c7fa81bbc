"""The offline agent without sockets: local answers, journal, replay, id mapping, retries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sitectl.config import OfflineConfig
from sitectl.ocpp.auth import AuthCache
from sitectl.ocpp.journal import BootState, Journal
from sitectl.ocpp.offline import OfflineAgent
from sitectl.ocpp.schemas import validate_result
from sitectl.store import Store
from tests.ocpp.harness import Harness

START = {
    "connectorId": 1,
    "idTag": "BUS-7",
    "meterStart": 1000,
    "timestamp": "2026-11-27T01:00:00Z",
}


def meter(tx: int, wh: int, at: str) -> dict:
    return {
        "connectorId": 1,
        "transactionId": tx,
        "meterValue": [{"timestamp": at, "sampledValue": [{"value": str(wh), "unit": "Wh"}]}],
    }


class Depot:
    """A harness with an offline agent on a real SQLite store."""

    def __init__(
        self, tmp_path: Path, version: str = "1.6", standalone: bool = False, **offline
    ) -> None:
        self.store = Store(tmp_path / "db.sqlite")
        self.journal = (
            None if standalone else Journal(self.store, offline.pop("journal_max", 200_000))
        )
        self.auth = AuthCache(self.store, offline.pop("tags", []), offline.pop("unknown", "reject"))
        self.alarms: list[tuple[str, str]] = []
        self.h = Harness(version)
        self.config = OfflineConfig(**offline)
        self.agent = OfflineAgent(
            "CP1",
            version,
            self.h.router,
            self.journal,
            self.auth,
            self.config,
            alarm=lambda c, t: self.alarms.append((c, t)),
            wall_clock=lambda: datetime(2026, 11, 27, 3, 0, tzinfo=UTC),
        )
        self.h.agent = self.agent
        self.n = 0

    def call(self, action: str, payload: dict) -> list:
        """The charger sends a CALL; returns the frame it got back (if any)."""
        self.n += 1
        self.h.charger([2, f"c{self.n}", action, payload])
        answers = [json.loads(f) for f in self.h.to_charger()]
        return answers[-1] if answers else None

    def csms_answers(self, payload: dict) -> None:
        [frame] = self.h.to_csms()
        self.h.csms([3, json.loads(frame)[1], payload])

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def depot(tmp_path):
    made: list[Depot] = []

    def make(**kwargs) -> Depot:
        made.append(Depot(_sub(tmp_path, len(made)), **kwargs))
        return made[-1]

    yield make
    for d in made:
        d.close()


def _sub(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"d{n}"
    path.mkdir()
    return path


def test_offline_16_session_is_answered_locally_and_journaled(depot) -> None:
    d = depot()
    d.journal.set_boot_state("CP1", BootState(True, 120, None))
    d.auth.remember("BUS-7", {"status": "Accepted"})
    answers = {
        "Heartbeat": d.call("Heartbeat", {}),
        "BootNotification": d.call(
            "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}
        ),
        "StatusNotification": d.call(
            "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"}
        ),
        "Authorize": d.call("Authorize", {"idTag": "BUS-7"}),
        "StartTransaction": d.call("StartTransaction", START),
    }
    tx = answers["StartTransaction"][2]["transactionId"]
    answers["MeterValues"] = d.call("MeterValues", meter(tx, 5000, "2026-11-27T01:30:00Z"))
    answers["StopTransaction"] = d.call(
        "StopTransaction",
        {"transactionId": tx, "meterStop": 9000, "timestamp": "2026-11-27T02:00:00Z"},
    )
    assert d.h.to_csms() == []
    assert answers["Heartbeat"][2] == {"currentTime": "2026-11-27T03:00:00Z"}
    assert answers["BootNotification"][2]["status"] == "Accepted"
    assert answers["BootNotification"][2]["interval"] == 120
    assert answers["Authorize"][2] == {"idTagInfo": {"status": "Accepted"}}
    assert tx == -1  # a range no CSMS issues
    for action, answer in answers.items():
        assert answer[0] == 3, answer
        assert validate_result("1.6", action, answer[2]) is None, action
    # Transaction messages are in the journal, in order; the status is not.
    assert [e.action for e in d.journal.entries("CP1")] == [
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ]


def test_replay_in_order_with_original_timestamps_and_csms_ids(depot) -> None:
    d = depot()
    d.auth.remember("BUS-7", {"status": "Accepted"})
    tx = d.call("StartTransaction", START)[2]["transactionId"]
    d.call("MeterValues", meter(tx, 5000, "2026-11-27T01:30:00Z"))
    d.call(
        "StopTransaction",
        {"transactionId": tx, "meterStop": 9000, "timestamp": "2026-11-27T02:00:00Z"},
    )
    d.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"})
    d.h.set_online(True)
    [start] = [json.loads(f) for f in d.h.to_csms()]
    assert start[2:] == ["StartTransaction", START]  # identical payload, original timestamp
    d.h.csms([3, start[1], {"transactionId": 4711, "idTagInfo": {"status": "Accepted"}}])
    [mv] = [json.loads(f) for f in d.h.to_csms()]
    assert mv[2] == "MeterValues" and mv[3]["transactionId"] == 4711
    assert mv[3]["meterValue"][0]["timestamp"] == "2026-11-27T01:30:00Z"
    d.h.csms([3, mv[1], {}])
    [stop] = [json.loads(f) for f in d.h.to_csms()]
    assert stop[2] == "StopTransaction" and stop[3]["transactionId"] == 4711
    d.h.csms([3, stop[1], {}])
    # After the journal, the latest status of every connector.
    [status] = [json.loads(f) for f in d.h.to_csms()]
    assert status[2:] == [
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
    ]
    d.h.csms([3, status[1], {}])
    assert d.journal.pending() == 0 and d.h.to_csms() == []
    assert d.journal.transaction_ids("CP1") == {-1: 4711}
    # Answers to replayed messages never reach the charger.
    assert d.h.to_charger() == []


def test_live_transaction_messages_wait_behind_the_journal(depot) -> None:
    d = depot()
    tx = d.call("StartTransaction", START)[2]["transactionId"]
    d.h.set_online(True)
    [start] = [json.loads(f) for f in d.h.to_csms()]
    # The CSMS is slow; meanwhile the charger sends a meter value and a heartbeat.
    assert d.call("MeterValues", meter(tx, 2000, "2026-11-27T03:00:00Z"))[0] == 3  # local
    d.h.charger([2, "hb", "Heartbeat", {}])
    assert d.h.to_csms() == []  # the heartbeat queues behind the replay in flight, one slot
    d.h.csms([3, start[1], {"transactionId": 9, "idTagInfo": {"status": "Accepted"}}])
    frames = [json.loads(f) for f in d.h.to_csms()]
    assert [f[2] for f in frames] == ["Heartbeat"]
    d.h.csms([3, "hb", {"currentTime": "x"}])
    frames = [json.loads(f) for f in d.h.to_csms()]
    assert frames[0][2] == "MeterValues" and frames[0][3]["transactionId"] == 9
    d.h.csms([3, frames[0][1], {}])
    # Journal empty: now a live meter value with the local id goes straight up, rewritten.
    d.h.charger([2, "mv2", "MeterValues", meter(tx, 3000, "2026-11-27T03:05:00Z")])
    [live] = [json.loads(f) for f in d.h.to_csms()]
    assert live[1] == "mv2" and live[3]["transactionId"] == 9
    d.h.csms('[3,"mv2",{}]')
    assert d.h.to_charger()[-1] == '[3,"mv2",{}]'
    # And the CSMS's RemoteStop for its id reaches the charger with the charger's id.
    d.h.csms([2, "rs", "RemoteStopTransaction", {"transactionId": 9}])
    assert json.loads(d.h.to_charger()[-1])[3] == {"transactionId": -1}


def test_callerror_retries_with_growing_interval_then_dead_letter(depot) -> None:
    d = depot(message_attempts=3, retry_interval_s=60)
    d.call("SecurityEventNotification", {"type": "SettingSystemTime", "timestamp": "t"})
    d.call("Heartbeat", {})
    d.h.set_online(True)
    for attempt, wait in [(1, 60), (2, 120)]:
        [frame] = [json.loads(f) for f in d.h.to_csms()]
        d.h.csms([4, frame[1], "InternalError", "boom", {}])
        assert d.agent.next_deadline() == pytest.approx(d.h.now + wait), attempt
        d.h.advance(wait - 1)
        assert d.h.to_csms() == []
        d.h.advance(1)
    [frame] = [json.loads(f) for f in d.h.to_csms()]
    d.h.csms([4, frame[1], "InternalError", "boom", {}])
    assert d.journal.pending() == 0
    [letter] = d.journal.dead_letters()
    assert letter["action"] == "SecurityEventNotification" and letter["attempts"] == 3
    assert d.alarms[0][0] == "journal_dead_letter"


def test_timeout_is_retried_without_counting(depot) -> None:
    d = depot(message_attempts=1)
    d.call("SecurityEventNotification", {"type": "x", "timestamp": "t"})
    d.h.set_online(True)
    d.h.to_csms()
    d.h.advance(60)  # the CSMS lane's timeout
    d.h.advance(5)
    assert len(d.h.to_csms()) == 1
    assert d.journal.pending() == 1 and d.journal.dead_letters() == []


def test_refused_offline_start_is_stopped_and_alarmed(depot) -> None:
    d = depot(unknown="accept")
    tx = d.call("StartTransaction", START)[2]["transactionId"]
    assert tx == -1
    d.h.set_online(True)
    [start] = [json.loads(f) for f in d.h.to_csms()]
    d.h.csms([3, start[1], {"transactionId": 5, "idTagInfo": {"status": "Invalid"}}])
    [stop] = [json.loads(f) for f in d.h.to_charger()]
    assert stop[2:] == ["RemoteStopTransaction", {"transactionId": -1}]
    assert [code for code, _ in d.alarms] == ["offline_tag_refused"]
    # The CSMS's verdict is cached: the tag is refused offline from now on.
    assert d.auth.decide("CP1", "BUS-7")[0]["status"] == "Invalid"


@pytest.mark.parametrize(
    ("setup", "expected", "source"),
    [
        ("none", "Invalid", "policy"),
        ("policy-accept", "Accepted", "policy"),
        ("cache-accepted", "Accepted", "cache"),
        ("cache-blocked", "Blocked", "cache"),
        ("cache-expired", "Expired", "cache"),
        ("config", "Accepted", "config"),
        ("local-list-wins", "Blocked", "local_list"),
    ],
)
def test_offline_authorization_decisions(depot, setup, expected, source) -> None:
    d = depot(
        unknown="accept" if setup == "policy-accept" else "reject",
        tags=["BUS-7"] if setup == "config" else [],
    )
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    if setup == "cache-accepted":
        d.auth.remember("BUS-7", {"status": "Accepted"})
    if setup == "cache-blocked":
        d.auth.remember("BUS-7", {"status": "Blocked"})
    if setup == "cache-expired":
        d.auth.remember("BUS-7", {"status": "Accepted", "expiryDate": past})
    if setup == "local-list-wins":
        d.auth.remember("BUS-7", {"status": "Accepted"})
        d.h.set_online(True)
        d.h.csms(
            [
                2,
                "sl",
                "SendLocalList",
                {
                    "listVersion": 2,
                    "updateType": "Full",
                    "localAuthorizationList": [
                        {"idTag": "BUS-7", "idTagInfo": {"status": "Blocked"}}
                    ],
                },
            ]
        )
        d.h.charger('[3,"sl",{"status":"Accepted"}]')
        d.h.set_online(False)
    assert d.auth.decide("CP1", "BUS-7") == (
        {"status": expected} | ({"expiry": past} if setup == "cache-expired" else {}),
        source,
    )
    assert d.call("Authorize", {"idTag": "BUS-7"})[2]["idTagInfo"]["status"] == expected


def test_boot_never_accepted_is_pending_not_accepted(depot) -> None:
    d = depot()
    answer = d.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
    assert answer[2]["status"] == "Pending"
    # When the CSMS is back the boot goes up first.
    d.h.set_online(True)
    [boot] = [json.loads(f) for f in d.h.to_csms()]
    assert boot[2] == "BootNotification"
    d.h.csms([3, boot[1], {"status": "Accepted", "currentTime": "x", "interval": 90}])
    assert d.journal.boot_state("CP1") == BootState(True, 90, None)


def test_csms_only_requests_get_a_callerror_offline(depot) -> None:
    d = depot()
    answer = d.call("DataTransfer", {"vendorId": "acme"})
    assert answer[0] == 4 and answer[2] == "InternalError"
    assert "CSMS is unreachable" in answer[3]


def test_a_call_in_flight_when_the_csms_drops_is_journaled_and_answered(depot) -> None:
    d = depot()
    d.h.set_online(True)
    d.h.charger([2, "s1", "StartTransaction", START])
    assert len(d.h.to_csms()) == 1
    d.h.set_online(False)
    [answer] = [json.loads(f) for f in d.h.to_charger()]
    assert answer[1] == "s1" and answer[2]["transactionId"] == -1
    assert [e.action for e in d.journal.entries("CP1")] == ["StartTransaction"]


def test_journal_full_drops_every_other_meter_value_never_start_or_stop(depot) -> None:
    d = depot(journal_max=6)
    tx = d.call("StartTransaction", START)[2]["transactionId"]
    for k in range(8):
        d.call("MeterValues", meter(tx, 1000 + k, f"2026-11-27T01:0{k}:00Z"))
    d.call("StopTransaction", {"transactionId": tx, "meterStop": 9000, "timestamp": "t"})
    kinds = [e.kind for e in d.journal.entries("CP1")]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert len(kinds) <= 6 + 1
    assert d.journal.dropped > 0
    kept = [
        e.payload["meterValue"][0]["sampledValue"][0]["value"]
        for e in d.journal.entries("CP1")
        if e.kind == "meter"
    ]
    assert kept == sorted(kept)  # order kept


def test_201_offline_transaction_events_and_transaction_status(depot) -> None:
    d = depot(version="2.0.1")
    d.auth.remember("T1", {"status": "Accepted"})
    started = {
        "eventType": "Started",
        "timestamp": "2026-11-27T01:00:00Z",
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "tx-9"},
        "evse": {"id": 1, "connectorId": 1},
        "idToken": {"idToken": "T1", "type": "ISO14443"},
    }
    answer = d.call("TransactionEvent", started)
    assert answer[2] == {"idTokenInfo": {"status": "Accepted"}}
    assert validate_result("2.0.1", "TransactionEvent", answer[2]) is None
    ended = {
        "eventType": "Ended",
        "timestamp": "2026-11-27T02:00:00Z",
        "triggerReason": "EVDeparted",
        "seqNo": 1,
        "transactionInfo": {"transactionId": "tx-9"},
    }
    assert d.call("TransactionEvent", ended)[2] == {}
    d.h.set_online(True)
    [first] = [json.loads(f) for f in d.h.to_csms()]
    # GetTransactionStatus while the queue is not empty: sitectl answers for its queue.
    d.h.csms([2, "gts", "GetTransactionStatus", {"transactionId": "tx-9"}])
    [status] = [json.loads(f) for f in d.h.to_csms() if '"gts"' in f]
    assert status[2] == {"messagesInQueue": True, "ongoingIndicator": False}
    assert first[3] == started  # `offline` flag and seqNo untouched
    d.h.csms([3, first[1], {}])
    [second] = [json.loads(f) for f in d.h.to_csms()]
    assert second[3] == ended
    d.h.csms([3, second[1], {}])
    # Queue empty: the question goes to the charger, which knows its own queue.
    d.h.csms([2, "gts2", "GetTransactionStatus", {}])
    assert json.loads(d.h.to_charger()[-1])[2] == "GetTransactionStatus"


def test_standalone_accepts_boot_and_journals_nothing(depot) -> None:
    d = depot(standalone=True, tags=["BUS-7"])
    assert (
        d.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})[2]["status"]
        == "Accepted"
    )
    start = d.call("StartTransaction", START)[2]
    assert start["idTagInfo"] == {"status": "Accepted"} and start["transactionId"] == -1
    assert d.call("StartTransaction", START)[2]["transactionId"] == -2


def test_csms_calls_pass_through_rewriters_and_a_broken_one_is_ignored(depot) -> None:
    d = depot()
    seen = []

    def relocate(identity, version, action, payload):
        seen.append((identity, version, action))
        if action == "UpdateFirmware":
            return dict(payload, location="http://sitectl.local/fw/abc")
        return None

    def broken(identity, version, action, payload):
        raise RuntimeError("bug")

    d.agent.rewriters += [relocate, broken]
    d.h.set_online(True)
    request = {
        "location": "https://vendor.example/fw.bin",
        "retrieveDate": "2026-11-27T00:00:00Z",
        "retries": 3,
    }
    d.h.csms([2, "u1", "UpdateFirmware", request])
    forwarded = json.loads(d.h.to_charger()[-1])
    # Only the location changed; everything else passes through.
    assert forwarded[3] == dict(request, location="http://sitectl.local/fw/abc")
    d.h.charger('[3,"u1",{}]')  # one call in flight toward the charger at a time
    d.h.csms('[2,"r1","Reset",{"type":"Soft"}]')
    assert d.h.to_charger()[-1] == '[2,"r1","Reset",{"type":"Soft"}]'  # byte for byte
    assert seen == [("CP1", "1.6", "UpdateFirmware"), ("CP1", "1.6", "Reset")]
