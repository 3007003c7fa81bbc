"""Offline operation of one charger: local answers, the journal, and ordered replay.

The agent is the router's `Divert` policy plus the code that answers held calls. Rules:

- ``hold`` mode (the depot default; a documented deviation from OCPP 2.0.1 Part 4 §6.3): while the
  CSMS connection is down, every charger CALL is answered here, within milliseconds.
  Transaction-related messages are journaled and committed *before* the local answer goes out.
- While the journal of a charger is not empty, that charger's live transaction messages are
  journaled behind it too (reference O6: new transaction messages wait until the queue is
  empty); other messages are forwarded as usual.
- Once the CSMS is back the journal is replayed strictly in order, one message at a time, each
  waiting for its answer: first a BootNotification that was answered locally, then the journal,
  then the latest status of every connector (StatusNotification is not journaled).
- OCPP 1.6 transactions started offline get negative local ids. Going up, later MeterValues and
  StopTransaction carry the CSMS's id; coming down, RemoteStopTransaction and TxProfiles carry
  the charger's id (reference O9).
- A CALLERROR is retried after ``retry_interval_s`` × the attempts so far, up to
  ``message_attempts``; then the message goes to the dead letters with an alarm and the queue goes
  on. A timeout is retried without counting (reference O7).
- Standalone (no CSMS configured): everything is answered here and nothing is journaled.
- A transaction message the journal cannot store (disk full, read-only, I/O error) is answered
  with a CALLERROR InternalError saying so, never with a CallResult: the charger keeps a
  transaction message it got no result for in its own queue and sends it again (OCPP 1.6
  §3.7.1, 2.0.1 E13; reference O7/O8: store before acknowledging). The first such failure
  raises ``store_failed`` (`store_failed` callback); the log says it within a budget.

The agent touches the store (a local SQLite file) but no socket and no clock of its own: the
link calls it with ``now`` after every router input.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sitectl.config import OfflineConfig
from sitectl.ocpp.auth import AuthCache, normalise_info, to_version
from sitectl.ocpp.budget import LogBudget
from sitectl.ocpp.frames import Call, error_code
from sitectl.ocpp.journal import BootState, Entry, Journal
from sitectl.ocpp.router import (
    FORWARD,
    HOLD,
    CallHeld,
    Decision,
    Event,
    LocalCallAborted,
    LocalCallError,
    LocalCallResult,
    LocalCallTimeout,
    Origin,
    PendingCall,
    RequestSeen,
    ResponseSeen,
    Route,
    Router,
    Side,
)

__all__ = ["CsmsRewriter", "OfflineAgent", "local_answer_actions"]

#: (identity, version, action, payload) -> a replacement payload, or None to leave it.
CsmsRewriter = Callable[[str, str, str, dict[str, Any]], dict[str, Any] | None]

log = logging.getLogger(__name__)

# Messages answered with an empty payload when the CSMS cannot answer (their responses have no
# required field in the 1.6 and 2.0.1 schemas).
_EMPTY_ANSWERS = frozenset(
    {
        "StatusNotification",
        "MeterValues",
        "FirmwareStatusNotification",
        "DiagnosticsStatusNotification",
        "SignedFirmwareStatusNotification",
        "LogStatusNotification",
        "SecurityEventNotification",
        "NotifyEvent",
        "NotifyReport",
        "NotifyMonitoringReport",
        "NotifyCustomerInformation",
        "NotifyChargingLimit",
        "ClearedChargingLimit",
        "ReportChargingProfiles",
        "PublishFirmwareStatusNotification",
        "ReservationStatusUpdate",
        "NotifyDisplayMessages",
        "StopTransaction",
        "TransactionEvent",
    }
)
_STATUS_ANSWERS = {"NotifyEVChargingNeeds": "Accepted", "NotifyEVChargingSchedule": "Accepted"}


def local_answer_actions() -> frozenset[str]:
    """Actions sitectl can answer itself (others get a CALLERROR while offline)."""
    return (
        _EMPTY_ANSWERS
        | set(_STATUS_ANSWERS)
        | {"Heartbeat", "BootNotification", "Authorize", "StartTransaction"}
    )


@dataclass
class _Inflight:
    """What the replay is waiting for."""

    message_id: str
    kind: str  # "boot", "entry", "status"
    entry: Entry | None = None
    connector: int | None = None


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class OfflineAgent:
    """One charger's offline behaviour.

    Args:
        identity: the charge point identity.
        version: the negotiated OCPP version.
        router: the charger's router (the agent installs itself as its `Divert`).
        journal: the journal; ``None`` when no CSMS is configured (standalone).
        auth: the site's authorization cache.
        config: the ``ocpp.offline`` settings.
        alarm: raises an alarm: ``alarm(code, text)``.
        wall_clock: UTC now, for answers such as Heartbeat.
        store_failed: told of a journal write that failed (raises ``store_failed``).
    """

    def __init__(
        self,
        identity: str,
        version: str,
        router: Router,
        journal: Journal | None,
        auth: AuthCache,
        config: OfflineConfig,
        alarm: Callable[[str, str], None] = lambda code, text: None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rewriters: list[CsmsRewriter] | None = None,
        charger_rewriters: list[CsmsRewriter] | None = None,
        store_failed: Callable[[sqlite3.Error], None] = lambda exc: None,
    ) -> None:
        self.identity = identity
        self._store_failed = store_failed
        self._unstored_log = LogBudget(lines=3, window_s=60.0)
        #: Transaction messages refused because the journal could not store them.
        self.unstored = 0
        self.version = version
        self.router = router
        self.journal = journal
        self.auth = auth
        self.config = config
        self._alarm = alarm
        self._wall_clock = wall_clock
        self.standalone = journal is None
        self.hold = config.mode == "hold" or self.standalone
        self.online = False
        self._inflight: _Inflight | None = None
        self._retry_at: float | None = None
        self._latest_status: dict[int, dict[str, Any]] = {}
        self._statuses_owed: list[int] = []
        self._tx: dict[int, int | None] = journal.transaction_ids(identity) if journal else {}
        self._own_calls: set[str] = set()
        #: Called with (identity, version, action, payload) for every CSMS call; a returned
        #: payload replaces the forwarded one (the firmware cache rewrites UpdateFirmware).
        self.rewriters: list[CsmsRewriter] = list(rewriters or [])
        #: The same for the charger's calls to the CSMS (the profile guard restores the stack
        #: levels it moved in ReportChargingProfiles).
        self.charger_rewriters: list[CsmsRewriter] = list(charger_rewriters or [])
        router.divert = self

    # Divert policy: pure, in memory.

    def charger_call(self, call: PendingCall) -> Decision:
        if self.standalone or (self.hold and not self.online):
            return HOLD
        rewritten = self._rewrite_charger_call(call)
        if rewritten is not None:
            return rewritten
        if not self.hold:
            return FORWARD
        if self._transactional(call) and self.journal.pending(self.identity) > 0:
            return HOLD
        if self.version == "1.6" and call.action in ("MeterValues", "StopTransaction"):
            local = _int(call.payload.get("transactionId"))
            if local is not None and local < 0:
                csms_id = self._tx.get(local)
                if csms_id is None:
                    return HOLD  # its start has not reached the CSMS yet
                payload = dict(call.payload, transactionId=csms_id)
                return Decision(
                    Route.FORWARD, Call(call.message_id, call.action, payload).serialize()
                )
        return FORWARD

    def _rewrite_charger_call(self, call: PendingCall) -> Decision | None:
        """A charger call a rewriter changes, forwarded; ``None`` for the usual policy.

        Transactional calls are never rewritten: they keep the journal's order and replay.
        """
        if not self.charger_rewriters or self._transactional(call):
            return None
        payload = self._rewritten(self.charger_rewriters, call.action, call.payload)
        if payload is call.payload:
            return None
        return Decision(Route.FORWARD, Call(call.message_id, call.action, payload).serialize())

    def _rewritten(
        self, rewriters: list[CsmsRewriter], action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """`payload` through every rewriter (the same object when none changed it)."""
        for rewrite in rewriters:
            try:
                payload = rewrite(self.identity, self.version, action, payload) or payload
            except Exception:  # a rewriter's bug must not stop the call
                log.exception(
                    "%s: rewriting %s failed; forwarding it unchanged", self.identity, action
                )
        return payload

    def csms_call(self, call: PendingCall) -> Decision:
        payload = call.payload
        if self.version == "1.6" and self._tx:
            payload = self._local_for(call) or payload
        payload = self._rewritten(self.rewriters, call.action, payload)
        if payload is not call.payload:
            return Decision(Route.FORWARD, Call(call.message_id, call.action, payload).serialize())
        if (
            call.action == "GetTransactionStatus"
            and self.journal is not None
            and self.journal.pending(self.identity) > 0
        ):
            return HOLD
        return FORWARD

    def _local_for(self, call: PendingCall) -> dict[str, Any] | None:
        """A CSMS call rewritten to the charger's local transaction id, if it needs one."""
        reverse = {csms: local for local, csms in self._tx.items() if csms is not None}
        if call.action == "RemoteStopTransaction":
            local = reverse.get(_int(call.payload.get("transactionId")))
            if local is not None:
                return dict(call.payload, transactionId=local)
        if call.action == "SetChargingProfile":
            profile = call.payload.get("csChargingProfiles") or {}
            local = reverse.get(_int(profile.get("transactionId")))
            if local is not None:
                return dict(call.payload, csChargingProfiles=dict(profile, transactionId=local))
        return None

    def _transactional(self, call: PendingCall | Entry) -> bool:
        return self._journal_kind(call.action, call.payload) is not None

    def _journal_kind(self, action: str, payload: dict[str, Any]) -> str | None:
        """The journal kind of a message the CSMS must eventually see, else ``None``."""
        if action == "SecurityEventNotification":
            return "security"
        if self.version == "1.6":
            if action == "StartTransaction":
                return "start"
            if action == "StopTransaction":
                return "stop"
            if action == "MeterValues" and payload.get("transactionId") is not None:
                return "meter"  # O5: transaction-related meter values
            return None
        if action == "TransactionEvent":
            return {"Started": "tx_started", "Ended": "tx_ended"}.get(
                payload.get("eventType", ""), "tx_updated"
            )
        return None

    # Connection state.

    def set_online(self, online: bool, now: float) -> None:
        """The CSMS connection came up or went down."""
        if online == self.online:
            return
        self.online = online
        if online:
            self._retry_at = None
            self._statuses_owed = sorted(self._latest_status)
            self.pump(now)
        else:
            self._inflight = None

    # Events from the router.

    def handle(self, events: list[Event], now: float) -> None:
        """React to router events; call after every router input (then drain the router)."""
        for event in events:
            if isinstance(event, CallHeld):
                self._answer(event)
            elif isinstance(
                event, LocalCallResult | LocalCallError | LocalCallTimeout | LocalCallAborted
            ):
                self._replay_answer(event, now)
            elif (
                isinstance(event, ResponseSeen)
                and event.response is not None
                and not event.answered_locally
            ):
                self._learn(event)
            elif (
                isinstance(event, RequestSeen)
                and event.action == "StatusNotification"
                and event.origin is Origin.CHARGER
            ):
                self._remember_status(event.payload)
        self.pump(now)

    def next_deadline(self) -> float | None:
        """When a retry is due (the link wakes the agent then)."""
        return self._retry_at if self.online and self._inflight is None else None

    # Local answers.

    def _answer(self, event: CallHeld) -> None:
        if event.origin is Origin.CSMS:
            self._answer_csms(event)
            return
        action, payload = event.action, event.payload
        try:
            answer = self._local_answer(action, payload)
        except sqlite3.Error as exc:
            self._unstorable(event, exc)
            return
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "%s: cannot answer %s locally (%s); answering with a CALLERROR",
                self.identity,
                action,
                exc,
            )
            self.router.error_held(
                Side.CHARGER, event.message_id, error_code(self.version, "format"), str(exc)
            )
            return
        if answer is None:
            log.warning(
                "%s: %s needs the CSMS, which is unreachable: CALLERROR", self.identity, action
            )
            self.router.error_held(
                Side.CHARGER,
                event.message_id,
                error_code(self.version, "internal"),
                f"the CSMS is unreachable; {action} cannot be answered locally",
            )
            return
        self.router.answer_held(Side.CHARGER, event.message_id, answer)

    def _unstorable(self, event: CallHeld, exc: sqlite3.Error) -> None:
        """A transaction message the journal cannot keep: not accepted, the charger retries."""
        self.unstored += 1
        self._store_failed(exc)
        note = self._unstored_log.allow("store")
        if note is not None:
            log.error(
                "%s: %s cannot be stored (%s): answered with a CALLERROR, the charger keeps "
                "it and sends it again%s",
                self.identity,
                event.action,
                exc,
                note,
            )
        self.router.error_held(
            Side.CHARGER,
            event.message_id,
            error_code(self.version, "internal"),
            f"sitectl cannot store this {event.action} (its store fails): not accepted, "
            "send it again later",
        )

    def _local_answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        kind = None if self.standalone else self._journal_kind(action, payload)
        now_text = _utc_iso(self._wall_clock())
        if action == "StartTransaction":
            return self._start_16(payload)
        if kind is not None:
            # Journal first: the charger's answer must not go out before the message is safe.
            tx = payload.get("transactionId")
            if tx is None:
                tx = (payload.get("transactionInfo") or {}).get("transactionId")
            self.journal.append(
                self.identity, action, payload, kind, None if tx is None else str(tx)
            )
        if action == "Heartbeat":
            return {"currentTime": now_text}
        if action == "BootNotification":
            return self._boot(payload, now_text)
        if action == "Authorize":
            return self._id_info(self._tag_of(payload))
        if action == "StatusNotification":
            self._remember_status(payload)
            return {}
        if action in ("StopTransaction", "TransactionEvent"):
            tag = self._tag_of(payload)
            return self._id_info(tag) if tag else {}
        if action in _EMPTY_ANSWERS:
            return {}
        if action in _STATUS_ANSWERS:
            return {"status": _STATUS_ANSWERS[action]}
        return None

    def _start_16(self, payload: dict[str, Any]) -> dict[str, Any]:
        tag = payload["idTag"]
        if self.journal is not None:
            local_id = self.journal.append_start(self.identity, payload)
        else:
            local_id = min(-1, min(self._tx, default=0) - 1)
        self._tx[local_id] = None
        info, source = self.auth.decide(self.identity, tag)
        log.info(
            "%s: StartTransaction answered locally: transaction %d, %s (%s)",
            self.identity,
            local_id,
            info["status"],
            source,
        )
        return {"transactionId": local_id, "idTagInfo": to_version("1.6", info)}

    def _boot(self, payload: dict[str, Any], now_text: str) -> dict[str, Any]:
        if self.standalone:
            return {"status": "Accepted", "currentTime": now_text, "interval": 300}
        state = self.journal.boot_state(self.identity)
        if state is not None and state.accepted:
            # The CSMS should still learn of this boot: sent first when it is back.
            self.journal.set_boot_state(self.identity, BootState(True, state.interval_s, payload))
            return {"status": "Accepted", "currentTime": now_text, "interval": state.interval_s}
        policy = self.config.never_accepted_boot
        status = {"pending": "Pending", "rejected": "Rejected", "accepted": "Accepted"}[policy]
        log.warning(
            "%s: booted while the CSMS is unreachable and was never accepted by it: "
            "answering %s (offline.never_accepted_boot)",
            self.identity,
            status,
        )
        self.journal.set_boot_state(
            self.identity,
            BootState(status == "Accepted", 60 if status != "Accepted" else 300, payload),
        )
        return {
            "status": status,
            "currentTime": now_text,
            "interval": 60 if status != "Accepted" else 300,
        }

    def _tag_of(self, payload: dict[str, Any]) -> str | None:
        if "idTag" in payload:
            return payload["idTag"]
        token = payload.get("idToken")
        return token.get("idToken") if isinstance(token, dict) else None

    def _id_info(self, tag: str | None) -> dict[str, Any]:
        if tag is None:
            return {}
        info, source = self.auth.decide(self.identity, tag)
        log.info("%s: id tag decided locally: %s (%s)", self.identity, info["status"], source)
        key = "idTagInfo" if self.version == "1.6" else "idTokenInfo"
        return {key: to_version(self.version, info)}

    def _answer_csms(self, event: CallHeld) -> None:
        # GetTransactionStatus (E14): truthful about sitectl's own queue for this charger.
        assert self.journal is not None
        entries = self.journal.entries(self.identity)
        wanted = event.payload.get("transactionId")
        relevant = [e for e in entries if wanted is None or e.tx == wanted]
        answer: dict[str, Any] = {"messagesInQueue": bool(relevant)}
        if wanted is not None:
            answer["ongoingIndicator"] = not any(e.kind == "tx_ended" for e in relevant)
        self.router.answer_held(Side.CSMS, event.message_id, answer)

    def _remember_status(self, payload: dict[str, Any]) -> None:
        connector = payload.get("connectorId") if self.version == "1.6" else payload.get("evseId")
        if isinstance(connector, int):
            self._latest_status[connector] = payload

    # Learning from the CSMS's answers.

    def _learn(self, event: ResponseSeen) -> None:
        response = event.response or {}
        if event.origin is Origin.CSMS:
            if event.action == "SendLocalList" and response.get("status") == "Accepted":
                self._local_list(event.request)
            return
        info = response.get("idTagInfo") or response.get("idTokenInfo")
        tag = self._tag_of(event.request)
        if info and tag:
            self.auth.remember(tag, info)
        if event.action == "BootNotification" and self.journal is not None:
            self._record_boot(response)

    def _record_boot(self, response: dict[str, Any]) -> None:
        accepted = response.get("status") == "Accepted"
        interval = int(response.get("interval") or 300)
        self.journal.set_boot_state(self.identity, BootState(accepted, interval, None))

    def _local_list(self, request: dict[str, Any]) -> None:
        entries: list[tuple[str, dict[str, Any] | None]] = []
        for item in request.get("localAuthorizationList") or []:
            token = item.get("idTag") or (item.get("idToken") or {}).get("idToken")
            info = item.get("idTagInfo") or item.get("idTokenInfo")
            if token:
                entries.append((token, normalise_info(info) if info else None))
        full = request.get("updateType") == "Full"
        self.auth.update_local_list(self.identity, entries, full)

    # Replay.

    def pump(self, now: float) -> None:
        """Send the next message owed to the CSMS, if the CSMS is there and nothing waits."""
        if self.journal is None or not self.online or self._inflight is not None:
            return
        if self._retry_at is not None and now < self._retry_at:
            return
        self._retry_at = None
        boot = self.journal.boot_state(self.identity)
        if boot is not None and boot.pending_boot is not None:
            self._send("boot", "BootNotification", boot.pending_boot, now)
            return
        while (entry := self.journal.next(self.identity)) is not None:
            payload = self._replay_payload(entry)
            if payload is not None:
                self._send("entry", entry.action, payload, now, entry=entry)
                return
        while self._statuses_owed:
            connector = self._statuses_owed.pop(0)
            payload = self._latest_status.pop(connector, None)
            if payload is not None:
                self._send("status", "StatusNotification", payload, now, connector=connector)
                return

    def _replay_payload(self, entry: Entry) -> dict[str, Any] | None:
        """The payload as the CSMS must see it, or ``None`` if it was set aside."""
        if self.version != "1.6" or entry.action not in ("MeterValues", "StopTransaction"):
            return entry.payload
        local = _int(entry.payload.get("transactionId"))
        if local is None or local >= 0:
            return entry.payload
        csms_id = self._tx.get(local)
        if csms_id is None:
            reason = f"its StartTransaction (local id {local}) never got a CSMS id"
            self.journal.dead_letter(entry, reason, entry.attempts)
            self._alarm("journal_dead_letter", f"{entry.action} set aside: {reason}")
            return None
        return dict(entry.payload, transactionId=csms_id)

    def _send(
        self,
        kind: str,
        action: str,
        payload: dict[str, Any],
        now: float,
        entry: Entry | None = None,
        connector: int | None = None,
    ) -> None:
        message_id = self.router.send_call(action, payload, now, toward=Side.CSMS)
        self._own_calls.add(message_id)
        self._inflight = _Inflight(message_id, kind, entry, connector)

    def _replay_answer(self, event: Event, now: float) -> None:
        inflight = self._inflight
        if inflight is None or event.message_id != inflight.message_id:  # type: ignore[union-attr]
            self._own_calls.discard(event.message_id)  # type: ignore[union-attr]
            return
        self._inflight = None
        self._own_calls.discard(inflight.message_id)
        if isinstance(event, LocalCallAborted):
            return  # the CSMS went away; sent again when it is back
        if isinstance(event, LocalCallTimeout):
            self._retry_at = now + min(self.config.retry_interval_s, 5.0)
            return
        if isinstance(event, LocalCallError):
            self._replay_failed(inflight, f"{event.code}: {event.description}", now)
            return
        assert isinstance(event, LocalCallResult)
        if inflight.kind == "boot":
            self._record_boot(event.payload)
            if event.payload.get("status") != "Accepted":
                self._alarm(
                    "boot_not_accepted",
                    f"the CSMS answered the replayed BootNotification with "
                    f"{event.payload.get('status')}",
                )
        elif inflight.kind == "entry" and inflight.entry is not None:
            self._delivered(inflight.entry, event.payload, now)

    def _replay_failed(self, inflight: _Inflight, reason: str, now: float) -> None:
        if inflight.kind != "entry" or inflight.entry is None:
            log.warning(
                "%s: the CSMS refused replayed %s: %s", self.identity, inflight.kind, reason
            )
            if inflight.kind == "boot":
                self._record_boot({"status": "Rejected"})
            return
        entry = inflight.entry
        attempts = self.journal.failed(entry)
        if attempts >= self.config.message_attempts:
            self.journal.dead_letter(entry, reason, attempts)
            self._alarm(
                "journal_dead_letter",
                f"{entry.action} (journal #{entry.seq}) set aside after {attempts} "
                f"CALLERRORs: {reason}",
            )
            return
        # OCPP 1.6 §3.7.1: wait the retry interval times the transmissions so far.
        self._retry_at = now + self.config.retry_interval_s * attempts
        log.warning(
            "%s: the CSMS refused replayed %s (attempt %d): %s; retrying in %.0f s",
            self.identity,
            entry.action,
            attempts,
            reason,
            self.config.retry_interval_s * attempts,
        )

    def _delivered(self, entry: Entry, response: dict[str, Any], now: float) -> None:
        csms_id = None
        if entry.action == "StartTransaction" and entry.tx is not None:
            csms_id = int(response["transactionId"])
            self._tx[int(entry.tx)] = csms_id
            log.info(
                "%s: offline transaction %s is %d at the CSMS", self.identity, entry.tx, csms_id
            )
        self.journal.delivered(entry, csms_id)  # one transaction with the id map
        info = response.get("idTagInfo") or response.get("idTokenInfo")
        tag = self._tag_of(entry.payload)
        if info and tag:
            self.auth.remember(tag, info)
        status = (info or {}).get("status", "Accepted")
        if entry.kind in ("start", "tx_started") and status != "Accepted":
            self._deauthorized(entry, status, now)

    def _deauthorized(self, entry: Entry, status: str, now: float) -> None:
        """The CSMS refused a tag that was accepted offline (reference O10)."""
        tx = entry.tx
        still_running = not any(
            e.kind in ("stop", "tx_ended") and e.tx == tx
            for e in self.journal.entries(self.identity)
        )
        self._alarm(
            "offline_tag_refused",
            f"the CSMS answered {status} for the tag of transaction {tx}, accepted "
            "offline" + ("; stopping it" if still_running else ""),
        )
        if not still_running or tx is None:
            return
        if self.version == "1.6":
            message_id = self.router.send_call(
                "RemoteStopTransaction", {"transactionId": int(tx)}, now
            )
        else:
            message_id = self.router.send_call("RequestStopTransaction", {"transactionId": tx}, now)
        self._own_calls.add(message_id)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return None
