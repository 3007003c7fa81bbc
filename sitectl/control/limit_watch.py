"""Audit of the limits in force, and alarms on silent limit sources (issue #20.4).

Every control cycle the loop calls `LimitWatch.tick` with its clock. It compares the board's
windows in force (`LimitBoard.in_force`) with the last cycle's, by identity (source, node and
the source's ref, else the window's start: `sitectl.limits.window_key`), and records each
intervention as a `LimitEvent`:

- ``started``: a window came into force (its start was reached, or it was published in force);
- ``changed``: the same window with another value, end, hardness or reason;
- ``ended``: it is no longer in force (its end passed, or it was withdrawn). A source that
  goes silent keeps its announced windows; its fail-safe windows start beside them, and end
  when it publishes again (or after ``fail_safe_s``).

Each event is stored (`LIMIT_EVENTS_MIGRATION`, kept ``control.limit_history_days``), put on
``state.limit_events`` and announced (``limit_event``: the uplink sends it on the alarms/events
topic), counted (``state.control.limit_events``, ``/metrics``) and logged. A source whose
heartbeat lapsed (`LimitBoard.silent`) raises the warning ``limit_source_silent`` (subject: the
source), cleared when it publishes again. A store that fails does not stop the watch: the event
still goes out, and the failure is logged.

The watch samples at the loop's period, so an event is timed within one cycle of the moment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sitectl.limits import (
    CHANGED,
    ENDED,
    STARTED,
    GridLimit,
    LimitEvent,
    describe,
    window_dict,
    window_key,
)
from sitectl.state import Severity, SiteState
from sitectl.store import Migration, Store

__all__ = ["LIMIT_EVENTS_MIGRATION", "SILENT_ALARM", "LimitWatch", "event_dict", "limit_history"]

log = logging.getLogger(__name__)

#: The alarm of a limit source whose heartbeat lapsed.
SILENT_ALARM = "limit_source_silent"
#: How often old events are deleted.
_PRUNE_EVERY = timedelta(hours=1)

LIMIT_EVENTS_MIGRATION = Migration(
    8,
    "limit interventions: windows starting, changing, ending (sitectl/control/limit_watch.py)",
    """
    CREATE TABLE limit_events (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        at           TEXT NOT NULL,
        action       TEXT NOT NULL,
        node         TEXT NOT NULL,
        source       TEXT NOT NULL,
        ref          TEXT NOT NULL,
        hard         INTEGER NOT NULL,
        limit_a      TEXT,
        limit_kw     REAL,
        window_start TEXT NOT NULL,
        window_end   TEXT,
        reason       TEXT NOT NULL,
        previous     TEXT
    );
    CREATE INDEX limit_events_by_at ON limit_events(at);
    """,
)


def event_dict(event: LimitEvent) -> dict[str, Any]:
    """An event as JSON-ready data (API, MQTT)."""
    return {
        "seq": event.seq or None,
        "at": event.at.isoformat(),
        "action": event.action,
        **window_dict(event.limit),
        "previous": window_dict(event.previous) if event.previous is not None else None,
        "text": event.text(),
    }


def _utc(moment: datetime) -> str:
    """UTC ISO 8601, so stored times compare as text."""
    return moment.astimezone(UTC).isoformat()


def _changed(a: GridLimit, b: GridLimit) -> bool:
    return (a.limit_a, a.limit_kw, a.hard, a.end, a.reason) != (
        b.limit_a,
        b.limit_kw,
        b.hard,
        b.end,
        b.reason,
    )


class LimitWatch:
    """Turns the board's windows in force into audited events, and silences into alarms.

    Args:
        state: the site state (its board, alarms, event list and counters).
        store: where events are kept (``None``: memory only, ``state.limit_events``).
        retention_days: how long stored events are kept.
    """

    def __init__(self, state: SiteState, store: Store | None, retention_days: int = 180) -> None:
        self.state = state
        self.store = store
        self.retention = timedelta(days=retention_days)
        self._known: dict[tuple[str, str, str], GridLimit] = {}
        self._pruned_at: datetime | None = None
        self._silent: set[str] = set()

    def tick(self, now: datetime) -> list[LimitEvent]:
        """Compare the windows in force at `now` with the last tick's; record what changed."""
        board = self.state.limits
        self._heartbeats(now)
        current = {window_key(w): w for w in board.in_force(now)}
        events: list[LimitEvent] = []
        for key, old in self._known.items():
            new = current.get(key)
            if new is None:
                events.append(LimitEvent(now, ENDED, old))
            elif _changed(old, new):
                events.append(LimitEvent(now, CHANGED, new, old))
        events += [LimitEvent(now, STARTED, w) for k, w in current.items() if k not in self._known]
        self._known = current
        out = [self._record(event) for event in events]
        board.expire(now)  # ended windows are not kept on the board
        self._prune(now)
        return out

    def _heartbeats(self, now: datetime) -> None:
        for status in self.state.limits.status(now):
            source = status.source
            if status.silent:
                if source not in self._silent:
                    self._silent.add(source)
                    lapsed = status.valid_until.isoformat() if status.valid_until else "?"
                    fail_safe = ", ".join(f"{w.node} {describe(w)}" for w in status.fail_safe)
                    self.state.raise_alarm(
                        SILENT_ALARM,
                        source,
                        Severity.WARNING,
                        f"limit source {source} has not confirmed its limits since {lapsed}: "
                        + (
                            f"its fail-safe applies ({fail_safe}) beside what it announced"
                            if status.fail_safe
                            else "no fail-safe given: only what it announced applies"
                        ),
                    )
            elif source in self._silent:
                self._silent.discard(source)
                self.state.clear_alarm(SILENT_ALARM, source)
        for source in list(self._silent - set(self.state.limits.sources())):
            self._silent.discard(source)  # withdrawn while silent
            self.state.clear_alarm(SILENT_ALARM, source)

    def _record(self, event: LimitEvent) -> LimitEvent:
        limit = event.limit
        if self.store is not None:
            try:
                cursor = self.store.execute(
                    "INSERT INTO limit_events(at, action, node, source, ref, hard, limit_a, "
                    "limit_kw, window_start, window_end, reason, previous) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        _utc(event.at),
                        event.action,
                        limit.node,
                        limit.source,
                        limit.ref,
                        int(limit.hard),
                        json.dumps(list(limit.limit_a)) if limit.limit_a is not None else None,
                        limit.limit_kw,
                        limit.start.isoformat(),
                        limit.end.isoformat() if limit.end is not None else None,
                        limit.reason,
                        json.dumps(window_dict(event.previous)) if event.previous else None,
                    ),
                )
                event = LimitEvent(event.at, event.action, limit, event.previous, cursor.lastrowid)
            except Exception as exc:  # the event still goes out
                log.warning("limit event not stored (%s: %s)", type(exc).__name__, exc)
        counts = self.state.control.limit_events
        counts[(event.action, limit.source)] = counts.get((event.action, limit.source), 0) + 1
        log.info("limit %s", event.text())
        self.state.limit_events.append(event)
        self.state.notify("limit_event", str(event.seq or id(event)))
        return event

    def _prune(self, now: datetime) -> None:
        if self.store is None:
            return
        if self._pruned_at is not None and now - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = now
        try:
            self.store.execute(
                "DELETE FROM limit_events WHERE at < ?", (_utc(now - self.retention),)
            )
        except Exception as exc:
            log.warning("old limit events not deleted (%s: %s)", type(exc).__name__, exc)

    def history(self, limit: int = 500, since: datetime | None = None) -> list[dict[str, Any]]:
        """The newest events first (`limit_history`)."""
        return limit_history(self.store, self.state, limit, since)


def limit_history(
    store: Store | None, state: SiteState, limit: int = 500, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Limit events, newest first: from the store, else from ``state.limit_events``."""
    if store is None:
        events = [e for e in state.limit_events if since is None or e.at >= since]
        return [event_dict(e) for e in reversed(events)][:limit]
    rows = store.query(
        "SELECT * FROM limit_events WHERE at >= ? ORDER BY seq DESC LIMIT ?",
        ((_utc(since) if since else ""), limit),
    )
    return [_row_dict(row) for row in rows]


def _limit(data: Mapping[str, Any]) -> GridLimit:
    """A window back from `window_dict`'s fields (or a stored row's)."""
    limit_a = data["limit_a"]
    if isinstance(limit_a, str):
        limit_a = json.loads(limit_a)
    start = data.get("window_start", data.get("start"))
    end = data.get("window_end", data.get("end"))
    return GridLimit(
        node=data["node"],
        source=data["source"],
        start=datetime.fromisoformat(start),
        end=datetime.fromisoformat(end) if end else None,
        limit_a=tuple(limit_a) if limit_a else None,
        limit_kw=data["limit_kw"],
        hard=bool(data["hard"]),
        reason=data["reason"] or "",
        ref=data["ref"] or "",
    )


def _row_dict(row: Any) -> dict[str, Any]:
    data = dict(row)
    previous = _limit(json.loads(data["previous"])) if data["previous"] else None
    at = datetime.fromisoformat(data["at"])
    return event_dict(LimitEvent(at, data["action"], _limit(data), previous, data["seq"]))
