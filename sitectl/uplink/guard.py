"""Limits on what a command sender can make sitectl do on the broker (issue #22.7).

A command names its own reply topic (MQTT 5 ResponseTopic), so without a rule anyone allowed
to publish on ``…/cmd/`` could make sitectl publish on any topic it may write to: its own
retained ``…/status`` among them. And ``republish`` sends every charger's state through the
outbox, so a flood of them multiplies into durable publishes. Rules:

- A reply goes only to a topic equal to or below one of the allowed prefixes (default
  ``<topic_prefix>/reply``), never to one of sitectl's own topics outside ``…/reply``, never
  to a topic with wildcards. A command with another ResponseTopic is not carried out; the
  refusals are logged once, then at most once per `LOG_WINDOW_S` with a count.
- ``republish`` runs at most once per ``republish_min_interval_s``; a request in between is
  answered at once and served by one republish at the end of the interval, however many came.

Pure logic with an injected clock; the uplink does the publishing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

__all__ = ["LOG_WINDOW_S", "ReplyTopics", "RepublishGate"]

log = logging.getLogger(__name__)

#: At most one log line per this many seconds for refused reply topics.
LOG_WINDOW_S = 60.0


class ReplyTopics:
    """Which ResponseTopics a command may name.

    Args:
        own_prefix: sitectl's topic prefix (its status, states, commands live below it).
        allowed: the configured prefixes (``mqtt.reply_topic_prefixes``); ``None``: only
            ``<own_prefix>/reply``.
        clock: monotonic seconds, for the log budget.
    """

    def __init__(
        self, own_prefix: str, allowed: Sequence[str] | None, clock: Callable[[], float]
    ) -> None:
        self.own_prefix = own_prefix
        self.reply_prefix = f"{own_prefix}/reply"
        self.allowed = tuple(allowed) if allowed else (self.reply_prefix,)
        self._clock = clock
        self._logged_at: float | None = None
        self.refused = 0  # since the start
        self._unlogged = 0

    def why_refused(self, topic: str) -> str | None:
        """``None`` if a reply may go to `topic`, else why not."""
        if not topic or "+" in topic or "#" in topic or "\0" in topic:
            return "a ResponseTopic must be a topic name without wildcards"
        if not any(topic == p or topic.startswith(p + "/") for p in self.allowed):
            allowed = ", ".join(self.allowed)
            return f"ResponseTopic is outside the allowed reply prefixes ({allowed})"
        # A broad allowed prefix ("sitectl") must still not reach our own status or states.
        own = topic == self.own_prefix or topic.startswith(self.own_prefix + "/")
        mine = topic == self.reply_prefix or topic.startswith(self.reply_prefix + "/")
        if own and not mine:
            return f"ResponseTopic is one of sitectl's own topics (only {self.reply_prefix}/…)"
        return None

    def refuse(self, command_topic: str, topic: str, why: str) -> None:
        """Count a refusal and log it within the budget."""
        self.refused += 1
        self._unlogged += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < LOG_WINDOW_S:
            return
        more = self._unlogged - 1
        log.warning(
            "MQTT command on %s not carried out and not answered: %s, got '%s'%s",
            command_topic,
            why,
            topic[:200],
            f" ({more} more refused in the last {now - self._logged_at:.0f} s)"
            if more and self._logged_at is not None
            else "",
        )
        self._logged_at = now
        self._unlogged = 0


class RepublishGate:
    """At most one republish per `interval_s`; requests in between coalesce into one.

    Args:
        interval_s: the shortest time between two republishes.
        clock: monotonic seconds.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self.scheduled = False  # one republish is due at the end of the interval
        self.coalesced = 0  # requests served by a later republish, since the start

    def request(self) -> float | None:
        """A republish was asked for.

        Returns:
            ``None``: do it now (and it is counted as done); else the seconds until the one
            republish that serves it. The caller schedules that one when `scheduled` turns
            true with this call and calls `done` when it runs.
        """
        now = self._clock()
        if self._last is None or now - self._last >= self.interval_s:
            self._last = now
            return None
        self.coalesced += 1
        return max(0.0, self._last + self.interval_s - now)

    def needs_timer(self) -> bool:
        """After a deferred `request`: whether the caller must schedule the republish."""
        if self.scheduled:
            return False
        self.scheduled = True
        return True

    def done(self) -> None:
        """The deferred republish ran."""
        self.scheduled = False
        self._last = self._clock()
