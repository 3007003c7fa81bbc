"""What the control loop knows of the limits in force on each charger, kept across restarts.

After a restart sitectl must not believe the chargers hold nothing (issue #17.6): a charger that
took sitectl's fail-safe keeps it (it is permanent), and its last dynamic limit stays in force
until its validity ends. Kept per charger: when the fail-safe was last installed, and the last
dynamic limit with the wall-clock time its validity ends. Loaded into `ChargerMemory`, it makes
the first cycles after a restart budget what the chargers really hold (not their maximum) and
classify the first commands as the decreases or increases they really are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sitectl.store import Migration, Store

if TYPE_CHECKING:  # the store's schema list imports this module: keep it light
    from sitectl.control.memory import ChargerMemory

__all__ = ["CONTROL_MEMORY_MIGRATION", "ControlMemoryStore"]

log = logging.getLogger(__name__)

CONTROL_MEMORY_MIGRATION = Migration(
    7,
    "limits in force per charger, kept across restarts (sitectl/control/memory_store.py)",
    """
    CREATE TABLE control_memory (
        charger      TEXT PRIMARY KEY,
        failsafe_at  TEXT,
        limit_a      REAL,
        limit_until  TEXT,
        updated_at   TEXT NOT NULL
    );
    """,
)


class ControlMemoryStore:
    """Reads and writes the `control_memory` table.

    Args:
        store: the store (with `CONTROL_MEMORY_MIGRATION` applied).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def load(
        self,
        memory: dict[str, ChargerMemory],
        now: datetime,
        now_mono: float,
        validity_s: float,
    ) -> int:
        """Fill `memory` from the last run; returns how many chargers had something kept."""
        count = 0
        for row in self.store.query("SELECT * FROM control_memory"):
            mem = memory.get(row["charger"])
            if mem is None:
                continue  # no longer configured
            count += 1
            mem.failsafe_ever = row["failsafe_at"] is not None
            if row["limit_a"] is None or row["limit_until"] is None:
                continue
            until = datetime.fromisoformat(row["limit_until"])
            left = (until - now).total_seconds()
            if left > 0:
                # In force for `left` more seconds: as if accepted validity - left seconds ago.
                mem.commanded_a = float(row["limit_a"])
                mem.commanded_at = now_mono - (validity_s - left)
        if count:
            log.info("limits in force on %d charger(s) restored from the last run", count)
        return count

    def failsafe_installed(self, charger_id: str, now: datetime) -> None:
        self.store.execute(
            "INSERT INTO control_memory(charger, failsafe_at, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(charger) DO UPDATE SET failsafe_at = excluded.failsafe_at, "
            "updated_at = excluded.updated_at",
            (charger_id, now.isoformat(), now.isoformat()),
        )

    def failsafe_lost(self, charger_id: str, now: datetime) -> None:
        """The charger may hold nothing of sitectl's any more (a CSMS clear)."""
        self.store.execute(
            "UPDATE control_memory SET failsafe_at = NULL, limit_a = NULL, limit_until = NULL, "
            "updated_at = ? WHERE charger = ?",
            (now.isoformat(), charger_id),
        )

    def limits_sent(
        self, sent: Iterable[tuple[str, float]], now: datetime, validity_s: float
    ) -> None:
        """Record the dynamic limits accepted this cycle (one transaction for all)."""
        rows = [
            (charger_id, limit, (now + timedelta(seconds=validity_s)).isoformat(), now.isoformat())
            for charger_id, limit in sent
        ]
        if not rows:
            return
        with self.store.transaction() as conn:
            conn.executemany(
                "INSERT INTO control_memory(charger, limit_a, limit_until, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(charger) DO UPDATE SET "
                "limit_a = excluded.limit_a, limit_until = excluded.limit_until, "
                "updated_at = excluded.updated_at",
                rows,
            )
