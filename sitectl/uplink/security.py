"""sitectl's own security events on ``<prefix>/security`` (issue #22.10), bounded per window.

`SecurityEventLog` (sitectl/security_events.py) tells its listeners of every event: a failed
login flood from many addresses, a stream of bad images. One MQTT message per event would let
whoever causes them multiply durable publishes, so events are folded per (type, critical):

- The first event of a kind goes out at once (``count`` 1) and opens a window of
  `SECURITY_WINDOW_S`; the events of that kind within the window are counted, and one message
  at its end says how many (``count``, first and last time, the newest technical text) and
  opens the next window. A window without events ends silently; the next event is again at
  once. So a kind costs at most one message at once and one per window however many come.
- Critical events are their own kind: a flood of minor ones never holds a critical one back.
- The kinds are the types sitectl raises (a handful); `MAX_KINDS` bounds them anyway, the
  others fold into one ``other`` kind.
- The messages go through the outbox like alarms: durable, numbered, never thinned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sitectl.security_events import OwnSecurityEvent
from sitectl.uplink.messages import Kind, Message, Topics, security_body

__all__ = ["MAX_KINDS", "SECURITY_WINDOW_S", "SecurityFeed"]

log = logging.getLogger(__name__)

#: Events of one kind within this many seconds after one was sent go out as one message.
SECURITY_WINDOW_S = 60.0
#: Kinds with a window open at a time, at most (the rest fold into ``other``).
MAX_KINDS = 16


@dataclass
class _Window:
    count: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    tech_info: str = ""


class SecurityFeed:
    """Turns security events into at most one ``…/security`` message per kind and window.

    Args:
        topics: the topic tree.
        publish: queues one message (`Uplink.publish`).
        clock: wall clock, for ``ts``.
        call_later: schedules the end of a window (``loop.call_later``); returns a handle
            with ``cancel``.
        window_s: the window (`SECURITY_WINDOW_S`).
    """

    def __init__(
        self,
        topics: Topics,
        publish: Callable[[Message], None],
        clock: Callable[[], datetime],
        call_later: Callable[[float, Callable[[], None]], Any],
        window_s: float = SECURITY_WINDOW_S,
    ) -> None:
        self.topics = topics
        self.publish = publish
        self.clock = clock
        self.call_later = call_later
        self.window_s = window_s
        self._open: dict[tuple[str, bool], _Window] = {}
        self._timers: dict[tuple[str, bool], Any] = {}
        #: Events folded into a later message instead of one of their own (since the start).
        self.folded = 0

    def on_event(self, event: OwnSecurityEvent) -> None:
        """The `SecurityEventLog` listener."""
        key = (event.type, event.critical)
        if key not in self._open and len(self._open) >= MAX_KINDS:
            key = ("other", event.critical)
        window = self._open.get(key)
        if window is None:
            self._send(key, 1, event.at, event.at, event.tech_info)
            self._start(key)
            return
        window.count += 1
        window.first_at = window.first_at or event.at
        window.last_at = event.at
        window.tech_info = event.tech_info
        self.folded += 1

    def flush(self) -> None:
        """Send what the open windows hold now (at a stop: kept in the outbox for later)."""
        for key in list(self._open):
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()
            self._close(key, reopen=False)

    def _start(self, key: tuple[str, bool]) -> None:
        self._open[key] = _Window()
        self._timers[key] = self.call_later(self.window_s, lambda: self._close(key))

    def _close(self, key: tuple[str, bool], reopen: bool = True) -> None:
        self._timers.pop(key, None)
        window = self._open.pop(key, None)
        if window is None or not window.count:
            return  # a quiet window: the next event goes out at once
        assert window.first_at is not None and window.last_at is not None
        self._send(key, window.count, window.first_at, window.last_at, window.tech_info)
        if reopen:
            self._start(key)

    def _send(
        self, key: tuple[str, bool], count: int, first: datetime, last: datetime, text: str
    ) -> None:
        type_, critical = key
        body = security_body(type_, text, critical, count, first, last, self.clock())
        self.publish(Message(Kind.SECURITY, self.topics.security, body))
