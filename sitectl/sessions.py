"""Sessions in the store: the history of every session that ended, and those under way.

The API's ``/api/sessions`` reads the history; `ActiveSessions` keeps the sessions under way so
that a restart of sitectl forgets none of them (issue #16). Id tags are only kept as their hash.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sitectl.state import Change, SessionState, SiteState
from sitectl.store import Migration, Store

__all__ = ["ACTIVE_SESSIONS_MIGRATION", "SESSIONS_MIGRATION", "ActiveSessions", "SessionLog"]

log = logging.getLogger(__name__)

SESSIONS_MIGRATION = Migration(
    5,
    "session history (sitectl/sessions.py)",
    """
    CREATE TABLE session_history (
        session_id     TEXT PRIMARY KEY,
        charger        TEXT NOT NULL,
        connector      INTEGER NOT NULL,
        transaction_id TEXT,
        id_tag_hash    TEXT,
        started_at     TEXT NOT NULL,
        ended_at       TEXT NOT NULL,
        energy_wh      REAL NOT NULL
    );
    CREATE INDEX session_history_by_end ON session_history(ended_at);
    """,
)


class SessionLog:
    """Writes ended sessions to the store as they end; reads them back by time.

    Args:
        store: the store (with `SESSIONS_MIGRATION` applied).
        state: the site state (the log subscribes to ``session_ended``).
    """

    def __init__(self, store: Store, state: SiteState) -> None:
        self.store = store
        self.state = state
        state.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        if change.kind != "session_ended":
            return
        session = next(
            (s for s in reversed(self.state.ended_sessions) if s.session_id == change.subject), None
        )
        if session is None or session.ended_at is None:
            return
        self.store.execute(
            "INSERT OR REPLACE INTO session_history(session_id, charger, connector, "
            "transaction_id, id_tag_hash, started_at, ended_at, energy_wh) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session.session_id,
                session.charger_id,
                session.connector_id,
                session.transaction_id,
                session.id_tag_hash,
                session.started_at.isoformat(),
                session.ended_at.isoformat(),
                session.energy_wh,
            ),
        )

    def since(self, moment: datetime, limit: int = 1000) -> list[dict[str, Any]]:
        """Sessions that ended at or after `moment`, oldest first."""
        rows = self.store.query(
            "SELECT * FROM session_history WHERE ended_at >= ? ORDER BY ended_at LIMIT ?",
            (moment.isoformat(), limit),
        )
        return [dict(row) for row in rows]


ACTIVE_SESSIONS_MIGRATION = Migration(
    6,
    "sessions under way, kept across restarts (sitectl/sessions.py ActiveSessions)",
    """
    CREATE TABLE active_sessions (
        charger           TEXT NOT NULL,
        connector         INTEGER NOT NULL,
        session_id        TEXT NOT NULL,
        transaction_id    TEXT,
        id_tag_hash       TEXT,
        started_at        TEXT NOT NULL,
        meter_start_wh    REAL,
        energy_wh         REAL NOT NULL,
        energy_wanted_kwh REAL,
        need_source       TEXT,
        departure         TEXT,
        departure_source  TEXT,
        priority          INTEGER NOT NULL,
        updated_at        TEXT NOT NULL,
        PRIMARY KEY (charger, connector)
    );
    """,
)

#: How often a session's delivered energy is written while it only changes by measurements.
ENERGY_WRITE_PERIOD_S = 60.0


class ActiveSessions:
    """Keeps every session under way in the store, so a restart of sitectl forgets none.

    At construction the sessions of the last run are loaded into
    ``state.restored_sessions``; the OCPP observer attaches each one again when its charger
    confirms it (a status in use, MeterValues or a TransactionEvent of its transaction) and ends
    it when the charger shows it ended. Starts, restorations, needs and ends are written at once;
    the energy delivered at most every `ENERGY_WRITE_PERIOD_S` (the meter register and the
    stored start give it back exactly anyway).

    Args:
        store: the store (with `ACTIVE_SESSIONS_MIGRATION` applied).
        state: the site state (the component subscribes to session changes).
    """

    def __init__(self, store: Store, state: SiteState) -> None:
        self.store = store
        self.state = state
        self._written: dict[str, float] = {}  # session id -> monotonic time of the last write
        self.load()
        state.subscribe(self._on_change)

    def load(self) -> int:
        """Put the stored sessions of configured chargers into ``state.restored_sessions``."""
        count = 0
        for row in self.store.query("SELECT * FROM active_sessions"):
            charger = self.state.chargers.get(row["charger"])
            if charger is None:
                continue  # a charger no longer configured
            session = SessionState(
                session_id=row["session_id"],
                connector_id=int(row["connector"]),
                started_at=datetime.fromisoformat(row["started_at"]),
                transaction_id=row["transaction_id"],
                id_tag_hash=row["id_tag_hash"],
                meter_start_wh=row["meter_start_wh"],
                energy_wh=float(row["energy_wh"]),
                energy_wanted_kwh=row["energy_wanted_kwh"],
                departure=(datetime.fromisoformat(row["departure"]) if row["departure"] else None),
                priority=int(row["priority"]),
                charger_id=row["charger"],
                need_source=row["need_source"],
                departure_source=row["departure_source"],
                origin="restored",
            )
            self.state.restored_sessions[(session.charger_id, session.connector_id)] = session
            count += 1
        if count:
            log.info(
                "%d session(s) under way before the restart; waiting for their chargers", count
            )
        return count

    def _on_change(self, change: Change) -> None:
        kind = change.kind
        if kind in ("session_started", "session_restored"):
            session = self._by_id(change.subject)
            if session is not None:
                self._write(session)
        elif kind == "session_needs":
            session = self._by_connector(change.subject)
            if session is not None:
                self._write(session)
        elif kind == "measurement":
            session = self._by_connector(change.subject)
            if session is not None:
                last = self._written.get(session.session_id)
                if last is None or self.state.monotonic() - last >= ENERGY_WRITE_PERIOD_S:
                    self._write(session)
        elif kind == "session_ended":
            ended = next(
                (s for s in reversed(self.state.ended_sessions) if s.session_id == change.subject),
                None,
            )
            if ended is not None:
                self._written.pop(ended.session_id, None)
                self.store.execute(
                    "DELETE FROM active_sessions WHERE charger = ? AND connector = ? "
                    "AND session_id = ?",
                    (ended.charger_id, ended.connector_id, ended.session_id),
                )

    def _by_id(self, session_id: str) -> SessionState | None:
        for charger in self.state.chargers.values():
            for connector in charger.connectors.values():
                if connector.session is not None and connector.session.session_id == session_id:
                    return connector.session
        return None

    def _by_connector(self, subject: str) -> SessionState | None:
        """The session on "charger/connector" (charger ids may contain '/')."""
        charger_id, _, number = subject.rpartition("/")
        charger = self.state.chargers.get(charger_id)
        if charger is None or not number.isdigit():
            return None
        connector = charger.connectors.get(int(number))
        return connector.session if connector is not None else None

    def _write(self, session: SessionState) -> None:
        self._written[session.session_id] = self.state.monotonic()
        self.store.execute(
            "INSERT OR REPLACE INTO active_sessions(charger, connector, session_id, "
            "transaction_id, id_tag_hash, started_at, meter_start_wh, energy_wh, "
            "energy_wanted_kwh, need_source, departure, departure_source, priority, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session.charger_id,
                session.connector_id,
                session.session_id,
                session.transaction_id,
                session.id_tag_hash,
                session.started_at.isoformat(),
                session.meter_start_wh,
                session.energy_wh,
                session.energy_wanted_kwh,
                session.need_source,
                session.departure.isoformat() if session.departure else None,
                session.departure_source,
                session.priority,
                self.state.clock().isoformat(),
            ),
        )
