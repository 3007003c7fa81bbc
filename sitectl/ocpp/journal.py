"""The upstream journal: what the CSMS must still see, on disk, in order.

Transaction-related messages a charger sends while its CSMS connection is down (or while older
ones still wait) are appended here and committed *before* the charger gets its local answer, so
a crash after the answer cannot lose them (reference O8). They are replayed strictly in order per
charger. OCPP 1.6 transactions started offline get negative local ids (a range no CSMS issues,
reference O9); `tx_map` links them to the id the CSMS assigns when the start is replayed.

Bounded (reference O19, issue #4): when the journal holds `max_messages`, every other
intermediate meter value / Updated event is dropped, oldest first; starts, stops and security
events are never dropped. What was dropped is counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sitectl.store import Store

__all__ = ["DROPPABLE_KINDS", "BootState", "Entry", "Journal"]

log = logging.getLogger(__name__)

#: Kinds the bound may thin out: intermediate values, never a start, stop or security event.
DROPPABLE_KINDS = ("meter", "tx_updated")
_PLACEHOLDERS = ",".join("?" * len(DROPPABLE_KINDS))


@dataclass(frozen=True, slots=True)
class Entry:
    """One journaled message."""

    seq: int
    charger: str
    action: str
    payload: dict[str, Any]
    kind: str
    tx: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class BootState:
    """What sitectl knows of a charger's acceptance by the CSMS."""

    accepted: bool
    interval_s: int
    pending_boot: dict[str, Any] | None  # a BootNotification answered locally, to send upstream


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Journal:
    """Durable per-charger queues of messages for the CSMS, plus the 1.6 transaction-id map.

    Args:
        store: the SQLite store (migration 2 creates the tables).
        max_messages: the bound over all chargers.
        clock: UTC now (injectable for tests).
    """

    def __init__(
        self, store: Store, max_messages: int = 200_000, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.store = store
        self.max_messages = max_messages
        self.clock = clock
        self._count = int(store.query("SELECT COUNT(*) FROM journal")[0][0])
        self._per_charger: dict[str, int] = {
            row["charger"]: row["n"]
            for row in store.query("SELECT charger, COUNT(*) AS n FROM journal GROUP BY charger")
        }

    # Appending.

    def append(
        self, charger: str, action: str, payload: dict[str, Any], kind: str, tx: str | None = None
    ) -> int:
        """Append one message and commit; returns its sequence number."""
        with self.store.transaction() as conn:
            seq = self._insert(conn, charger, action, payload, kind, tx)
        return seq

    def append_start(self, charger: str, payload: dict[str, Any]) -> int:
        """Journal a 1.6 StartTransaction answered locally; returns its new local id (< 0)."""
        with self.store.transaction() as conn:
            row = conn.execute(
                "SELECT MIN(local_id) FROM tx_map WHERE charger = ?", (charger,)
            ).fetchone()
            local_id = min(-1, (row[0] or 0) - 1)
            conn.execute(
                "INSERT INTO tx_map(charger, local_id, csms_id) VALUES (?, ?, NULL)",
                (charger, local_id),
            )
            self._insert(conn, charger, "StartTransaction", payload, "start", str(local_id))
        return local_id

    def _insert(
        self,
        conn: Any,
        charger: str,
        action: str,
        payload: dict[str, Any],
        kind: str,
        tx: str | None,
    ) -> int:
        if self._count >= self.max_messages:
            self._thin(conn)
        cursor = conn.execute(
            "INSERT INTO journal(charger, action, payload, kind, tx, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                charger,
                action,
                json.dumps(payload, separators=(",", ":")),
                kind,
                tx,
                self.clock().isoformat(),
            ),
        )
        self._count += 1
        self._per_charger[charger] = self._per_charger.get(charger, 0) + 1
        return int(cursor.lastrowid)

    def _thin(self, conn: Any) -> None:
        rows = conn.execute(
            f"SELECT seq, charger FROM journal WHERE kind IN ({_PLACEHOLDERS}) ORDER BY seq",
            DROPPABLE_KINDS,
        ).fetchall()
        # Drop the 2nd, 4th, 6th ... (E11.FR.05: intermediate messages first, not the start).
        victims = rows[1::2] or rows[:1]
        if not victims:
            log.warning(
                "journal is over its bound of %d and holds only starts, stops and "
                "security events: keeping them all",
                self.max_messages,
            )
            return
        conn.executemany("DELETE FROM journal WHERE seq = ?", [(r[0],) for r in victims])
        for row in victims:
            self._per_charger[row[1]] -= 1
        self._count -= len(victims)
        conn.execute(
            "INSERT INTO meta(key, value) VALUES('journal_dropped', ?) ON CONFLICT(key) DO "
            "UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
            (len(victims),),
        )
        log.warning(
            "journal full (%d): dropped %d intermediate meter values",
            self.max_messages,
            len(victims),
        )

    # Reading and completing.

    def next(self, charger: str) -> Entry | None:
        """The oldest message still owed to the CSMS for this charger."""
        rows = self.store.query(
            "SELECT seq, charger, action, payload, kind, tx, attempts FROM journal "
            "WHERE charger = ? ORDER BY seq LIMIT 1",
            (charger,),
        )
        if not rows:
            return None
        row = rows[0]
        return Entry(
            row["seq"],
            row["charger"],
            row["action"],
            json.loads(row["payload"]),
            row["kind"],
            row["tx"],
            row["attempts"],
        )

    def pending(self, charger: str | None = None) -> int:
        """Messages waiting (for one charger, or for all)."""
        if charger is None:
            return self._count
        return self._per_charger.get(charger, 0)

    def entries(self, charger: str) -> list[Entry]:
        """Every message waiting for a charger, in order (for status answers and tests)."""
        return [
            Entry(
                r["seq"],
                r["charger"],
                r["action"],
                json.loads(r["payload"]),
                r["kind"],
                r["tx"],
                r["attempts"],
            )
            for r in self.store.query(
                "SELECT seq, charger, action, payload, kind, tx, attempts FROM journal "
                "WHERE charger = ? ORDER BY seq",
                (charger,),
            )
        ]

    def delivered(self, entry: Entry, csms_transaction_id: int | None = None) -> None:
        """The CSMS answered: forget the message (and, for a 1.6 start, record its id).

        Both happen in one transaction: a crash in between must not leave later messages of
        the transaction without the id they need.
        """
        with self.store.transaction() as conn:
            if csms_transaction_id is not None and entry.tx is not None:
                conn.execute(
                    "UPDATE tx_map SET csms_id = ? WHERE charger = ? AND local_id = ?",
                    (csms_transaction_id, entry.charger, int(entry.tx)),
                )
            deleted = conn.execute("DELETE FROM journal WHERE seq = ?", (entry.seq,)).rowcount
        if deleted:
            self._count -= 1
            self._per_charger[entry.charger] -= 1

    def failed(self, entry: Entry) -> int:
        """The CSMS answered with a CALLERROR: count it; returns the attempts so far."""
        self.store.execute("UPDATE journal SET attempts = attempts + 1 WHERE seq = ?", (entry.seq,))
        return entry.attempts + 1

    def dead_letter(self, entry: Entry, reason: str, attempts: int) -> None:
        """Set a message aside (never silently dropped) so the queue can go on."""
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO dead_letters(seq, charger, action, payload, reason, attempts, "
                "created_at, failed_at) SELECT seq, charger, action, payload, ?, ?, created_at, ? "
                "FROM journal WHERE seq = ?",
                (reason, attempts, self.clock().isoformat(), entry.seq),
            )
            deleted = conn.execute("DELETE FROM journal WHERE seq = ?", (entry.seq,)).rowcount
        if deleted:
            self._count -= 1
            self._per_charger[entry.charger] -= 1

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every message set aside, oldest first."""
        return [dict(r) for r in self.store.query("SELECT * FROM dead_letters ORDER BY seq")]

    @property
    def dropped(self) -> int:
        """Intermediate meter values dropped to keep the bound, since the store was created."""
        value = self.store.get_meta("journal_dropped")
        return int(value) if value else 0

    # Transaction ids (OCPP 1.6).

    def transaction_ids(self, charger: str) -> dict[int, int | None]:
        """local id → CSMS id (``None`` until the start was replayed) for one charger."""
        return {
            r["local_id"]: r["csms_id"]
            for r in self.store.query(
                "SELECT local_id, csms_id FROM tx_map WHERE charger = ?", (charger,)
            )
        }

    # Boot state.

    def boot_state(self, charger: str) -> BootState | None:
        rows = self.store.query(
            "SELECT accepted, interval_s, pending_boot FROM charger_boot WHERE charger = ?",
            (charger,),
        )
        if not rows:
            return None
        pending = rows[0]["pending_boot"]
        return BootState(
            bool(rows[0]["accepted"]),
            rows[0]["interval_s"],
            json.loads(pending) if pending else None,
        )

    def set_boot_state(self, charger: str, state: BootState) -> None:
        self.store.execute(
            "INSERT INTO charger_boot(charger, accepted, interval_s, pending_boot, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(charger) DO UPDATE SET accepted = "
            "excluded.accepted, interval_s = excluded.interval_s, pending_boot = "
            "excluded.pending_boot, updated_at = excluded.updated_at",
            (
                charger,
                int(state.accepted),
                state.interval_s,
                json.dumps(state.pending_boot) if state.pending_boot else None,
                self.clock().isoformat(),
            ),
        )
