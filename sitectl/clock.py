"""Is the PC's clock synchronised? OCPP timestamps, departures and TLS all depend on it.

The kernel knows: ``adjtimex(2)`` with no modes set only reads, and returns ``TIME_ERROR`` while
the clock is not synchronised (``STA_UNSYNC``, set until an NTP daemon such as chrony or
systemd-timesyncd disciplines it). An industrial PC without a reachable time server, or with a
flat RTC battery, runs unsynchronised; sitectl keeps working (freshness and expiries run on the
monotonic clock) but says so: a warning in the log and the ``clock_unsynchronized`` alarm.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from pathlib import Path

from sitectl.state import Severity, SiteState

__all__ = ["ClockMonitor", "kernel_clock_synchronized"]

log = logging.getLogger(__name__)

#: adjtimex(2) return value for "clock not synchronised" (<sys/timex.h>, TIME_ERROR).
_TIME_ERROR = 5
#: Larger than struct timex on every Linux ABI (208 bytes on x86_64); zeroed: modes = 0, read only.
_TIMEX_BYTES = 512


#: systemd-timesyncd creates this file once the clock is synchronised (timesyncd.conf(5)).
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


def kernel_clock_synchronized() -> bool | None:
    """Whether the clock is synchronised; ``None`` when it cannot tell.

    The kernel's view (adjtimex) first; where that is refused (a seccomp filter answering
    EPERM), systemd-timesyncd's flag file says yes when present.
    """
    found = _adjtimex_synchronized()
    if found is None and TIMESYNCD_FLAG.exists():
        return True
    return found


def _adjtimex_synchronized() -> bool | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):  # not Linux, or a libc without it
        return None
    buffer = ctypes.create_string_buffer(_TIMEX_BYTES)
    state = adjtimex(buffer)
    if state < 0:
        return None
    return state != _TIME_ERROR


class ClockMonitor:
    """Checks the clock's synchronisation every `period_s` and keeps an alarm in step.

    Args:
        state: the site state (alarms).
        probe: returns True/False, or None when unknown (injected for tests).
        period_s: how often to look.
    """

    name = "clock"

    def __init__(
        self,
        state: SiteState,
        probe: Callable[[], bool | None] = kernel_clock_synchronized,
        period_s: float = 60.0,
    ) -> None:
        self.state = state
        self.probe = probe
        self.period_s = period_s
        self.synchronized: bool | None = None

    def check(self) -> bool | None:
        """Look once; raise or clear the alarm on a change."""
        synchronized = self.probe()
        if synchronized is None:
            if self.synchronized is None:
                log.info("cannot tell whether the system clock is synchronised")
            return None
        if synchronized == self.synchronized:
            return synchronized
        self.synchronized = synchronized
        if synchronized:
            if self.state.clear_alarm("clock_unsynchronized", "site"):
                log.info("system clock synchronised again")
        else:
            log.warning(
                "the system clock is not synchronised (no NTP): OCPP timestamps, departures "
                "and certificate checks may be wrong; configure chrony or systemd-timesyncd"
            )
            self.state.raise_alarm(
                "clock_unsynchronized",
                "site",
                Severity.WARNING,
                "system clock not synchronised (no NTP time source)",
            )
        return synchronized

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.period_s)
