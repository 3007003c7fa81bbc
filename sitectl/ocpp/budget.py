"""Bounds on what one peer can make sitectl log or try: log budgets and a login guard.

A charger with a broken firmware, or a prober on the depot LAN, can send thousands of bad
frames or handshakes a second. Each would be a warning line; the log would drown (and fill
the disk) while saying nothing new. Here each source (a charger's socket, a remote address)
has a budget of lines per window; what is over it is counted and said in one summary line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ConnectionCaps", "LogBudget", "LoginGuard", "quiet_accept_errors", "shorten"]


def shorten(text: Any, limit: int = 64) -> str:
    """`text` as a repr of at most about `limit` characters (a peer's identity, a path)."""
    shown = repr(str(text))
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}… ({len(str(text))} characters)"


@dataclass
class _Spend:
    window_start: float
    lines: int = 0
    suppressed: int = 0


class LogBudget:
    """At most `lines` log lines per `window_s` per key; the rest counted, then summarised.

    Call `allow(key)` before logging: it returns ``None`` to drop the line, or the text to
    append to it (``""``, or a summary such as ``" (and 1,233 more in the last 60 s)"``).
    At most `max_keys` keys are kept (the oldest is forgotten), so ever-new keys (addresses)
    cannot grow memory.
    """

    def __init__(
        self,
        lines: int = 5,
        window_s: float = 60.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines = lines
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[Any, _Spend] = OrderedDict()
        #: Lines dropped in all (for a closing summary or a metric).
        self.total_suppressed = 0

    def allow(self, key: Any) -> str | None:
        now = self._clock()
        spend = self._keys.get(key)
        if spend is None:
            spend = self._keys[key] = _Spend(now)
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        self._keys.move_to_end(key)
        note = ""
        if now - spend.window_start >= self.window_s:
            if spend.suppressed:
                elapsed = now - spend.window_start
                note = f" (and {spend.suppressed} more like it in the last {elapsed:.0f} s)"
            spend.window_start, spend.lines, spend.suppressed = now, 0, 0
        if spend.lines >= self.lines:
            spend.suppressed += 1
            self.total_suppressed += 1
            return None
        spend.lines += 1
        if spend.lines == self.lines:
            note += f" (the last of {self.lines} such lines in {self.window_s:.0f} s)"
        return note

    def pending(self, key: Any) -> int:
        """Lines dropped for `key` since its last summary (for a summary when it goes away)."""
        spend = self._keys.get(key)
        return 0 if spend is None else spend.suppressed


@dataclass
class _Failures:
    first: float
    count: int = 0
    locked_until: float = 0.0


class LoginGuard:
    """Failed logins per (remote address, identity): over `max_failures` in `window_s`, the
    next attempts from that address for that identity are refused unchecked for `lockout_s`.

    Keyed by both, so a prober cannot lock a charger out from another address, and chargers
    behind one NAT do not lock each other out. A success forgets the key's failures.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 60.0,
        lockout_s: float = 60.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def locked(self, address: str, identity: str) -> float:
        """Seconds the key is still locked out (0: it may try)."""
        entry = self._keys.get((address, identity))
        if entry is None:
            return 0.0
        return max(0.0, entry.locked_until - self._clock())

    def failed(self, address: str, identity: str) -> int | None:
        """Count a failure; returns the count when it just crossed the limit (alarm it)."""
        now = self._clock()
        key = (address, identity)
        entry = self._keys.get(key)
        if entry is None or (now - entry.first >= self.window_s and now >= entry.locked_until):
            entry = self._keys[key] = _Failures(now)
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        self._keys.move_to_end(key)
        entry.count += 1
        if entry.count >= self.max_failures and entry.locked_until <= now:
            entry.locked_until = now + self.lockout_s
            return entry.count
        return None

    def succeeded(self, address: str, identity: str) -> None:
        self._keys.pop((address, identity), None)


_ACCEPT_ERRORS = "socket.accept() out of system resource"


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, window_s: float = 60.0) -> None:
    """Log asyncio's accept() failures (out of file descriptors) once a window, with a count.

    asyncio reports each failed accept with a traceback and retries a second later, for every
    listening socket; at a file-descriptor limit that is hundreds of thousands of lines. Other
    errors go to the handler that was there before. Installing twice is harmless.
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "_sitectl_accept_budget", False):
        return
    budget = LogBudget(lines=1, window_s=window_s)
    logger = logging.getLogger("sitectl.net")

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_ERRORS:
            note = budget.allow("accept")
            if note is not None:
                logger.error(
                    "cannot accept connections: %s (connections wait in the backlog; "
                    "further failures are counted, not logged)%s",
                    context.get("exception"),
                    note,
                )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler._sitectl_accept_budget = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


class ConnectionCaps:
    """Open connections in all and per client address, with room for `admit` to refuse."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.open: dict[object, str] = {}  # connection -> address
        self.per_client: dict[str, int] = {}
        self.refused = 0
        self._log = LogBudget(lines=3, window_s=60.0)

    def admit(self, connection: object, address: str, what: str) -> bool:
        """Count `connection` in, or refuse it (logged within a budget) when over a cap."""
        count = self.per_client.get(address, 0)
        if len(self.open) < self.max_total and count < self.max_per_client:
            self.open[connection] = address
            self.per_client[address] = count + 1
            return True
        self.refused += 1
        note = self._log.allow(address)
        if note is not None:
            logging.getLogger("sitectl.net").warning(
                "%s connection from %s refused: %d open (%d from there; at most %d, %d per "
                "client)%s",
                what,
                address,
                len(self.open),
                count,
                self.max_total,
                self.max_per_client,
                note,
            )
        return False

    def release(self, connection: object) -> None:
        address = self.open.pop(connection, None)
        if address is None:
            return
        left = self.per_client.get(address, 1) - 1
        if left > 0:
            self.per_client[address] = left
        else:
            self.per_client.pop(address, None)
