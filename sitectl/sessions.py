"""Session history: every charging session that ended, kept in the store.

The API's ``/api/sessions`` reads it; id tags are only ever kept as their hash.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sitectl.state import Change, SiteState
from sitectl.store import Migration, Store

__all__ = ["SESSIONS_MIGRATION", "SessionLog"]

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
