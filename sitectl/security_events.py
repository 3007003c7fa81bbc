"""sitectl's own security events (issue #22.10): kept, and raised toward the CSMS and MQTT.

A charger reports its security events with SecurityEventNotification and the proxy forwards them
(`sitectl.firmware.tracker` keeps them per charger). sitectl is a security boundary of its own —
chargers and operators log in to it, it checks firmware images — so what it sees there is
recorded the same way: a type (the OCPP 2.0.1 security event names where one fits, appendix 1 of
part 2; ``type`` is a string of up to 50 characters), a technical text and a time.

- Kept in a bounded log where critical events live apart, so a flood of minor ones cannot push
  a critical one out (as for chargers' events).
- Told to the CSMS as SecurityEventNotification over sitectl's own local-controller identity
  when one is configured (`sitectl.firmware.lc`; queued, bounded, while it is not connected).
- Published on MQTT on ``<prefix>/security`` by the uplink, one of the listeners
  (`sitectl.uplink.security`: folded per kind and window, so a flood cannot amplify).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["OwnSecurityEvent", "SecurityEventLog"]

log = logging.getLogger(__name__)

#: Events kept: minor ones, and critical ones apart.
KEEP = 200
KEEP_CRITICAL = 50
#: OCPP 2.0.1 SecurityEventNotificationRequest: type string[0..50], techInfo string[0..255].
TYPE_MAX = 50
TECH_INFO_MAX = 255

# The types sitectl raises (2.0.1 names where one fits; the others in the same style).
INVALID_LOGIN = "FailedLoginAttempts"  # repeated wrong passwords/tokens from one address
INVALID_FIRMWARE = "InvalidFirmwareChecksum"  # an image that does not match its checksum
INSECURE_FIRMWARE_URL = "InsecureFirmwareUrlRefused"  # https origin redirected/rewritten to http
STARTUP = "StartupOfTheDevice"  # 2.0.1 appendix 1: sitectl started


@dataclass(frozen=True, slots=True)
class OwnSecurityEvent:
    """One security event of sitectl's own."""

    seq: int
    type: str
    tech_info: str
    at: datetime
    critical: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API and MQTT."""
        return {
            "seq": self.seq,
            "type": self.type,
            "tech_info": self.tech_info,
            "at": self.at.isoformat(),
            "critical": self.critical,
        }


class SecurityEventLog:
    """The bounded log; `record` adds one and tells the listeners.

    Args:
        clock: wall clock (UTC, aware).
    """

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self._minor: deque[OwnSecurityEvent] = deque(maxlen=KEEP)
        self._critical: deque[OwnSecurityEvent] = deque(maxlen=KEEP_CRITICAL)
        self._seq = 0
        self.listeners: list[Callable[[OwnSecurityEvent], None]] = []

    def record(self, type_: str, tech_info: str, *, critical: bool = False) -> OwnSecurityEvent:
        """Keep one event, log it once and tell every listener (a failing one is logged)."""
        self._seq += 1
        event = OwnSecurityEvent(
            self._seq, type_[:TYPE_MAX], tech_info[:TECH_INFO_MAX], self.clock(), critical
        )
        (self._critical if critical else self._minor).append(event)
        log.warning("security event %s: %s", event.type, event.tech_info)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("security event listener %r failed", listener)
        return event

    def events(self) -> list[OwnSecurityEvent]:
        """Every kept event, oldest first."""
        return sorted([*self._critical, *self._minor], key=lambda e: e.seq)
