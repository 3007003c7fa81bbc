"""Find the sessions under way again when a charger (re)connects after a restart of sitectl.

A charger does not resend what sitectl missed while it was down: a 1.6 charger sends the next
MeterValues of its transaction within its sample interval (often 60 s or more), a 2.0.1 charger
the next TransactionEvent, and neither resends its connector statuses on a new WebSocket. Until
then the connector's session is unknown. So on every connection sitectl asks (issue #16):

- 1.6: ``TriggerMessage`` ``StatusNotification`` and ``MeterValues`` per connector (1.6 §5.17;
  triggered MeterValues carry the ``transactionId`` of a transaction under way);
- 2.0.1: ``GetTransactionStatus`` for each session the store kept (2.0.1 E14:
  ``ongoingIndicator`` says whether it is still under way), and ``TriggerMessage``
  ``StatusNotification`` and ``TransactionEvent`` per EVSE (F06).

A restored session the charger does not confirm within `confirm_s` of connecting is ended (with
a warning): the connector, if it is still in use, is budgeted by the floor rule and its alarm
until its transaction shows up. A charger that ignores the triggers costs nothing but a log line;
one mute charger delays only its own recovery (each charger is recovered in its own task).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sitectl.ocpp.link import CallFailed
from sitectl.state import Change, SiteState

__all__ = ["SessionRecovery"]

log = logging.getLogger(__name__)

Caller = Callable[..., Awaitable[dict[str, Any]]]


class SessionRecovery:
    """Asks every charger that connects for its connector statuses and transactions.

    Args:
        state: the site state (restored sessions, connection changes).
        call: sends one of sitectl's own calls: ``call(identity, action, payload, timeout)``.
        end_restored: ends a restored session sitectl cannot confirm any more
            (``StateObserver.end_restored``).
        confirm_s: how long after connecting a restored session may stay unconfirmed.
        call_timeout_s: how long to wait for each answer.
    """

    name = "session-recovery"

    def __init__(
        self,
        state: SiteState,
        call: Caller,
        end_restored: Callable[[str, int, str], bool],
        confirm_s: float = 120.0,
        call_timeout_s: float = 10.0,
    ) -> None:
        self.state = state
        self.call = call
        self.end_restored = end_restored
        self.confirm_s = confirm_s
        self.call_timeout_s = call_timeout_s
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        state.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        if change.kind == "charger_connected":
            self._pending.put_nowait(change.subject)

    async def run(self) -> None:
        """Recover each charger that connects; runs until cancelled."""
        try:
            while True:
                identity = await self._pending.get()
                previous = self._tasks.get(identity)
                if previous is not None:
                    previous.cancel()  # reconnected: start over on the new connection
                self._tasks[identity] = asyncio.create_task(
                    self.recover(identity), name=f"recover {identity}"
                )
        finally:
            for task in self._tasks.values():
                task.cancel()

    async def recover(self, identity: str) -> None:
        """Ask one charger what is under way, then end restored sessions it did not confirm."""
        charger = self.state.chargers.get(identity)
        if charger is None:
            return
        try:
            if charger.ocpp_version == "2.0.1":
                await self._ask_201(identity)
            else:
                await self._ask_16(identity)
            await asyncio.sleep(self.confirm_s)
        except asyncio.CancelledError:
            raise
        except Exception:  # one charger's odd answer must not stop the others' recovery
            log.exception("%s: session recovery failed", identity)
            return
        if not charger.connected:
            return  # gone again: it is asked anew when it comes back
        for (charger_id, connector_id), session in list(self.state.restored_sessions.items()):
            if charger_id != identity:
                continue
            log.warning(
                "%s/%d: session %s from before the restart was not confirmed by the charger "
                "within %g s: ended (a connector still in use is budgeted as unknown)",
                identity,
                connector_id,
                session.session_id,
                self.confirm_s,
            )
            self.end_restored(identity, connector_id, "not confirmed after a restart")

    async def _ask_16(self, identity: str) -> None:
        connectors = sorted(self.state.chargers[identity].connectors)
        for connector_id in connectors:
            await self._try(
                identity,
                "TriggerMessage",
                {"requestedMessage": "StatusNotification", "connectorId": connector_id},
            )
        for connector_id in connectors:
            await self._try(
                identity,
                "TriggerMessage",
                {"requestedMessage": "MeterValues", "connectorId": connector_id},
            )

    async def _ask_201(self, identity: str) -> None:
        charger = self.state.chargers[identity]
        for (charger_id, connector_id), session in list(self.state.restored_sessions.items()):
            if charger_id != identity or not session.transaction_id:
                continue
            answer = await self._try(
                identity, "GetTransactionStatus", {"transactionId": session.transaction_id}
            )
            if (
                answer is not None
                and answer.get("ongoingIndicator") is False
                and not answer.get("messagesInQueue")
            ):
                # Ended while sitectl was down and nothing left to tell: the Ended event was
                # delivered to no one sitectl could see (or is lost); close it now.
                self.end_restored(identity, connector_id, "the charger reports it ended")
        for evse_id in sorted(charger.connectors):
            await self._try(
                identity,
                "TriggerMessage",
                {
                    "requestedMessage": "StatusNotification",
                    "evse": {"id": evse_id, "connectorId": 1},
                },
            )
            await self._try(
                identity,
                "TriggerMessage",
                {"requestedMessage": "TransactionEvent", "evse": {"id": evse_id}},
            )

    async def _try(
        self, identity: str, action: str, payload: dict[str, Any]
    ) -> dict[str, Any] | None:
        try:
            answer = await self.call(identity, action, payload, self.call_timeout_s)
        except (CallFailed, TimeoutError) as exc:
            log.info("%s: %s %s not answered: %s", identity, action, payload, exc)
            return None
        status = answer.get("status")
        if status not in (None, "Accepted"):
            log.info("%s: %s %s answered %s", identity, action, payload, status)
        return answer
