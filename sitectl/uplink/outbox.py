"""The MQTT outbox: every message for the cloud, on disk until the broker acknowledged it.

paho keeps its outgoing queue in process memory only, so QoS 1 alone does not survive a
restart (reference M10). The outbox is the source of truth; paho only ever holds a window of
it. Rules:

- A message is committed here before it is handed to the client, and deleted only when the
  broker acknowledged it (PUBACK; with ``qos: 0``, when it was written to the socket).
- Messages go out in the order they were added (``id``); what is left after a reconnect or a
  restart goes out before anything newer.
- ``seq`` is assigned when a message is first handed to the client (`claim`), in ``id`` order,
  from a per-site counter stored in the same transaction; a message handed again after a
  reconnect or restart keeps its number. So ``seq`` grows by one per published message across
  restarts, a message dropped by the bound never had one (no gap for it), a gap always means a
  loss, and an equal ``seq`` always means a duplicate (at-least-once delivery).
- Bounded by count and by bytes. When over either bound, unnumbered summaries go first, oldest
  first; then charger states that a newer state of the same charger supersedes. Session events,
  alarms, the latest state of each charger and anything already numbered are never dropped:
  if only those are left the bound is exceeded, with a warning. Drops are counted (persisted,
  published in every summary).
- Not thread-safe: used from the event-loop thread only, like the store.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sitectl.store import Store, StoreError
from sitectl.uplink.messages import Message, encode, with_seq

__all__ = ["COUNTERS", "Outbox", "Outgoing"]

log = logging.getLogger(__name__)

#: At most one log line about drops per this many seconds.
DROP_LOG_INTERVAL_S = 60.0
#: Persisted per-site counters (table ``uplink_counters``). ``seq`` is the last number used.
COUNTERS = ("seq", "dropped_summaries", "dropped_charger_states", "thinned_summaries", "rejected")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A numbered message ready for the client."""

    id: int
    kind: str
    topic: str
    payload: bytes
    retain: bool
    seq: int


# Oldest unnumbered summaries.
_DROP_SUMMARIES = "SELECT id, size FROM outbox WHERE kind = 'summary' AND seq IS NULL ORDER BY id"
# Unnumbered charger states that a newer state of the same charger supersedes, oldest first.
_DROP_SUPERSEDED = """
    SELECT o.id, o.size FROM outbox AS o
    WHERE o.kind = 'charger' AND o.seq IS NULL AND EXISTS (
        SELECT 1 FROM outbox AS n WHERE n.kind = 'charger' AND n.key = o.key AND n.id > o.id
    )
    ORDER BY o.id
"""


class Outbox:
    """A durable, bounded, ordered queue of messages for the broker.

    Args:
        store: the SQLite store (migration 3 creates the tables).
        site_id: the counters (``seq``, drops) are kept per site.
        max_messages: the bound on the number of messages (``mqtt.outbox_max_messages``).
        max_bytes: the bound on their payload bytes (``mqtt.outbox_max_bytes``).
        clock: monotonic seconds, for rate-limiting the log line about drops.
    """

    def __init__(
        self,
        store: Store,
        site_id: str,
        max_messages: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.site_id = site_id
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.counters = dict.fromkeys(COUNTERS, 0)
        try:
            row = store.query("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox")[0]
            counters = store.query(
                "SELECT name, value FROM uplink_counters WHERE site = ?", (site_id,)
            )
        except sqlite3.DatabaseError as exc:
            # A damaged page or a failing disk: say what it is and what to do, not a traceback.
            raise StoreError(
                f"{store.path}: the MQTT outbox cannot be read ({exc}): the store is damaged "
                "or its disk fails. Restore a backup of the store, or move the file away to "
                "start with a new one (MQTT seq then starts again at 1 under a new epoch)"
            ) from None
        self._count = int(row[0])
        self._bytes = int(row[1])
        for found in counters:
            if found["name"] in self.counters:
                self.counters[found["name"]] = int(found["value"])
        self._over_bound_warned = False
        #: Messages lost because the store could not write them, since this start (kept in
        #: memory: the store is what failed).
        self.lost = 0
        self._clock = clock
        self._unlogged = {"dropped_summaries": 0, "dropped_charger_states": 0}
        self._logged_at: float | None = None

    # Reading.

    @property
    def count(self) -> int:
        """Messages queued (numbered or not)."""
        return self._count

    @property
    def bytes(self) -> int:
        """Payload bytes queued."""
        return self._bytes

    @property
    def seq(self) -> int:
        """The last ``seq`` used (0 before the first message)."""
        return self.counters["seq"]

    def stats(self) -> dict[str, int]:
        """What the summary publishes under ``outbox``."""
        return {
            "queued": self._count,
            "queued_bytes": self._bytes,
            "dropped_summaries": self.counters["dropped_summaries"],
            "dropped_charger_states": self.counters["dropped_charger_states"],
            "thinned_summaries": self.counters["thinned_summaries"],
            "rejected": self.counters["rejected"],
            "lost": self.lost,
        }

    # Writing.

    def append(self, messages: Sequence[Message]) -> None:
        """Commit messages (one transaction), then enforce the bound.

        Args:
            messages: in the order they must go out.
        """
        if not messages:
            return
        rows = []
        for message in messages:
            body = encode(message.body)
            rows.append(
                (
                    str(message.kind),
                    message.key,
                    message.topic,
                    body,
                    int(message.retain),
                    len(body.encode()),
                )
            )
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO outbox(kind, key, topic, body, retain, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._count += len(rows)
            self._bytes += sum(r[5] for r in rows)
            if self._count > self.max_messages or self._bytes > self.max_bytes:
                self._enforce_bound(conn)

    def claim(
        self,
        after_id: int,
        limit: int,
        acked: Collection[int] = (),
        numbered_only: bool = False,
    ) -> list[Outgoing]:
        """Delete acknowledged messages and number the next ones, in one transaction.

        Args:
            after_id: return messages with a larger ``id`` (the caller's send cursor).
            limit: at most this many.
            acked: ids the broker acknowledged (deleted).
            numbered_only: return only messages numbered before (handed out earlier and not
                acknowledged); they precede every unnumbered one.

        Returns:
            The messages, in order, each with its ``seq`` and wire payload.
        """
        if not acked and limit <= 0:
            return []
        with self._transaction() as conn:
            if acked:
                self._delete(conn, acked)
            if limit <= 0:
                return []
            sql = "SELECT id, kind, topic, body, retain, seq FROM outbox WHERE id > ?"
            if numbered_only:
                sql += " AND seq IS NOT NULL"
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
            numbers: list[tuple[int, int]] = []
            out: list[Outgoing] = []
            seq = self.counters["seq"]
            for row in rows:
                number = row["seq"]
                if number is None:
                    seq += 1
                    number = seq
                    numbers.append((number, row["id"]))
                out.append(
                    Outgoing(
                        row["id"],
                        row["kind"],
                        row["topic"],
                        with_seq(row["body"], number),
                        bool(row["retain"]),
                        number,
                    )
                )
            if numbers:
                conn.executemany("UPDATE outbox SET seq = ? WHERE id = ?", numbers)
                self.counters["seq"] = seq
                self._save(conn, "seq")
        return out

    def ack(self, ids: Collection[int]) -> None:
        """Delete acknowledged messages."""
        self.claim(0, 0, acked=ids)

    def take_seq(self) -> int:
        """Number a message that does not go through the outbox (the status), durably."""
        with self._transaction() as conn:
            self.counters["seq"] += 1
            self._save(conn, "seq")
        return self.counters["seq"]

    def give_back_seq(self, seq: int) -> None:
        """Return the number `take_seq` gave if nothing was numbered since (it was not used)."""
        if seq != self.counters["seq"]:
            return
        with self._transaction() as conn:
            self.counters["seq"] -= 1
            self._save(conn, "seq")

    def bump(self, name: str, n: int = 1) -> None:
        """Add to a persisted counter (``thinned_summaries``, ``rejected``).

        Raises:
            KeyError: for a name not in `COUNTERS`.
        """
        if name not in self.counters:
            raise KeyError(name)
        with self._transaction() as conn:
            self.counters[name] += n
            self._save(conn, name)

    # Internals.

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The store's transaction; on a rollback the in-memory counts roll back too."""
        saved = (self._count, self._bytes, dict(self.counters), dict(self._unlogged))
        try:
            with self.store.transaction() as conn:
                yield conn
        except BaseException:
            self._count, self._bytes, self.counters, self._unlogged = saved
            raise

    def _save(self, conn: sqlite3.Connection, name: str) -> None:
        conn.execute(
            "INSERT INTO uplink_counters(site, name, value) VALUES (?, ?, ?) "
            "ON CONFLICT(site, name) DO UPDATE SET value = excluded.value",
            (self.site_id, name, self.counters[name]),
        )

    def _delete(self, conn: sqlite3.Connection, ids: Collection[int]) -> None:
        ids = list(ids)
        for start in range(0, len(ids), 500):  # SQLite's bound on host parameters
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            row = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})",
                chunk,
            ).fetchone()
            conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
            self._count -= int(row[0])
            self._bytes -= int(row[1])

    def _over(self) -> bool:
        return self._count > self.max_messages or self._bytes > self.max_bytes

    def _enforce_bound(self, conn: sqlite3.Connection) -> None:
        try:
            for sql, counter in (
                (_DROP_SUMMARIES, "dropped_summaries"),
                (_DROP_SUPERSEDED, "dropped_charger_states"),
            ):
                victims: list[int] = []
                cursor = conn.execute(sql)
                for victim_id, size in _rows(cursor):
                    if not self._over():
                        break
                    victims.append(victim_id)
                    self._count -= 1
                    self._bytes -= size
                cursor.close()  # finish the read before deleting from the same table
                if victims:
                    for start in range(0, len(victims), 500):
                        chunk = victims[start : start + 500]
                        conn.execute(
                            f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk
                        )
                    self.counters[counter] += len(victims)
                    self._save(conn, counter)
                    self._unlogged[counter] += len(victims)
                if not self._over():
                    self._over_bound_warned = False
                    return
            if not self._over_bound_warned:
                # Sessions, alarms and the latest charger states are never dropped: better a
                # bigger file than a lost session record.
                log.warning(
                    "MQTT outbox over its bound (%d messages, %d bytes; bound %d, %d) with "
                    "nothing left that may be dropped: keeping session events, alarms and latest "
                    "charger states",
                    self._count,
                    self._bytes,
                    self.max_messages,
                    self.max_bytes,
                )
                self._over_bound_warned = True
        finally:
            self._log_drops()

    def _log_drops(self) -> None:
        # Full during a long outage means a drop on every summary: one line a minute is enough.
        now = self._clock()
        if not any(self._unlogged.values()) or (
            self._logged_at is not None and now - self._logged_at < DROP_LOG_INTERVAL_S
        ):
            return
        dropped = ", ".join(
            f"{n} {'summaries' if name == 'dropped_summaries' else 'superseded charger states'}"
            for name, n in self._unlogged.items()
            if n
        )
        log.warning(
            "MQTT outbox full (%d messages, %d bytes; bound %d, %d): dropped %s",
            self._count,
            self._bytes,
            self.max_messages,
            self.max_bytes,
            dropped,
        )
        self._unlogged = dict.fromkeys(self._unlogged, 0)
        self._logged_at = now


def _rows(cursor: sqlite3.Cursor) -> Iterator[tuple[int, int]]:
    while True:
        batch = cursor.fetchmany(256)
        if not batch:
            return
        for row in batch:
            yield int(row[0]), int(row[1])
