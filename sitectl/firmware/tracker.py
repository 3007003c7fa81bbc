"""Per-charger record of firmware traffic: updates asked for, statuses and security events.

A `LinkListener` beside the state observer (both get every router event; `FanoutListener` passes
them to several). It only reads: the notifications themselves are forwarded to the CSMS unchanged
by the proxy (F2: the local controller never invents or suppresses them; F11: security events are
forwarded, never suppressed). Kept in memory, bounded per charger, for the API and the dashboard.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sitectl.ocpp.link import ChargerLink, LinkListener
from sitectl.ocpp.router import Event, RequestSeen, ResponseSeen, Side

__all__ = [
    "CRITICAL_SECURITY_EVENTS",
    "FanoutListener",
    "FirmwareEvent",
    "FirmwareTracker",
    "SecurityEvent",
]

log = logging.getLogger(__name__)

_STATUS_ACTIONS = ("FirmwareStatusNotification", "SignedFirmwareStatusNotification")
#: Security events the OCPP security whitepaper (1.6, appendix "Security events") and 2.0.1
#: (part 2, appendix 1) mark critical: kept apart, so a flood of minor ones (InvalidMessages,
#: failed logins) cannot push them out of the bounded record (issue #22.10).
CRITICAL_SECURITY_EVENTS = frozenset(
    {
        "FirmwareUpdated",
        "SettingSystemTime",
        "StartupOfTheDevice",
        "ResetOrReboot",
        "SecurityLogWasCleared",
        "MemoryExhaustion",
        "TamperDetectionActivated",
        "MaintenanceLoginAccepted",
    }
)
_UPDATE_ACTIONS = ("UpdateFirmware", "SignedUpdateFirmware")


@dataclass(frozen=True, slots=True)
class FirmwareEvent:
    """A firmware status from a charger, or an update request it was sent and its answer."""

    at: datetime
    action: str
    status: str | None
    request_id: int | None = None
    origin: str | None = None  # for updates: "csms" or "sitectl"
    location: str | None = None  # for updates: as the charger received it


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """A SecurityEventNotification from a charger (its own timestamp kept as sent)."""

    at: datetime
    type: str | None
    timestamp: str | None
    tech_info: str | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FirmwareTracker:
    """Records firmware statuses, update requests and security events per charger.

    Args:
        clock: UTC now (injected in tests).
        keep: how many events of each kind to keep per charger.
    """

    def __init__(self, clock: Callable[[], datetime] = _utc_now, keep: int = 100) -> None:
        self._clock = clock
        self._keep = keep
        self._firmware: dict[str, deque[FirmwareEvent]] = {}
        self._security: dict[str, deque[SecurityEvent]] = {}
        self._critical: dict[str, deque[SecurityEvent]] = {}

    def firmware(self, identity: str) -> list[FirmwareEvent]:
        """Firmware events of a charger, oldest first."""
        return list(self._firmware.get(identity, ()))

    def security(self, identity: str) -> list[SecurityEvent]:
        """Security events of a charger, oldest first (the critical ones kept apart)."""
        events = [*self._critical.get(identity, ()), *self._security.get(identity, ())]
        return sorted(events, key=lambda e: e.at)

    def last_status(self, identity: str) -> FirmwareEvent | None:
        """The charger's latest firmware status notification."""
        for event in reversed(self._firmware.get(identity, ())):
            if event.action in _STATUS_ACTIONS:
                return event
        return None

    def record_update(
        self,
        identity: str,
        action: str,
        request: dict[str, Any],
        status: str | None,
        origin: str = "sitectl",
    ) -> None:
        """Record an update request and how it was answered.

        The router reports only the calls it relays; sitectl's own (a rollout's) come here
        directly.
        """
        firmware = request.get("firmware") if isinstance(request.get("firmware"), dict) else {}
        self._add_firmware(
            identity,
            FirmwareEvent(
                self._clock(),
                action,
                status,
                _int(request.get("requestId")),
                origin,
                request.get("location") or firmware.get("location"),
            ),
        )

    # LinkListener.

    def link_events(self, link: ChargerLink, events: list[Event]) -> None:
        for event in events:
            try:
                self._record(link.identity, event)
            except (AttributeError, TypeError, ValueError) as exc:
                log.debug("%s: firmware event not recorded: %s", link.identity, exc)

    def link_upstream(self, link: ChargerLink, connected: bool) -> None:
        pass

    def link_charger(self, link: ChargerLink, connected: bool) -> None:
        pass

    def link_frame(self, link: ChargerLink, side: Side, inbound: bool, text: str) -> None:
        pass

    def _record(self, identity: str, event: Event) -> None:
        if isinstance(event, RequestSeen) and event.action in _STATUS_ACTIONS:
            payload = event.payload
            self._add_firmware(
                identity,
                FirmwareEvent(
                    self._clock(),
                    event.action,
                    payload.get("status"),
                    _int(payload.get("requestId")),
                ),
            )
        elif isinstance(event, RequestSeen) and event.action == "SecurityEventNotification":
            payload = event.payload
            kept = (
                self._critical
                if payload.get("type") in CRITICAL_SECURITY_EVENTS
                else self._security
            )
            queue = kept.setdefault(identity, deque(maxlen=self._keep))
            queue.append(
                SecurityEvent(
                    self._clock(),
                    payload.get("type"),
                    payload.get("timestamp"),
                    payload.get("techInfo"),
                )
            )
        elif isinstance(event, ResponseSeen) and event.action in _UPDATE_ACTIONS:
            status = (event.response or {}).get(
                "status", "Accepted" if event.response == {} else None
            )
            self.record_update(
                identity,
                event.action,
                event.request,
                status if event.error_code is None else f"CALLERROR {event.error_code}",
                event.origin.value,
            )

    def _add_firmware(self, identity: str, event: FirmwareEvent) -> None:
        self._firmware.setdefault(identity, deque(maxlen=self._keep)).append(event)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class FanoutListener:
    """One `LinkListener` that passes every call on to several.

    A listener that lacks a method is skipped, and one that fails is logged: the link calls
    some listener methods outside any ``try`` (``link_frame``), so a listener's problem must
    not reach it.
    """

    def __init__(self, *listeners: LinkListener) -> None:
        self.listeners = listeners

    def _each(self, method: str, *args: Any) -> None:
        for listener in self.listeners:
            function = getattr(listener, method, None)
            if function is None:
                continue
            try:
                function(*args)
            except Exception:
                log.exception("link listener %r failed in %s", listener, method)

    def link_events(self, link: ChargerLink, events: list[Event]) -> None:
        self._each("link_events", link, events)

    def link_upstream(self, link: ChargerLink, connected: bool) -> None:
        self._each("link_upstream", link, connected)

    def link_charger(self, link: ChargerLink, connected: bool) -> None:
        self._each("link_charger", link, connected)

    def link_frame(self, link: ChargerLink, side: Side, inbound: bool, text: str) -> None:
        self._each("link_frame", link, side, inbound, text)
