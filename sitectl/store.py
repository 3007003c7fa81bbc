"""The store: one SQLite file for everything that must survive a restart.

The upstream journal and transaction-id map, the MQTT outbox, the firmware index and the session
history all live here (DESIGN.md). Rules:

- WAL mode; ``synchronous=FULL`` by default so that a committed write survives power loss (the
  journal commits before a charger gets its local answer).
- The schema is versioned with ``PRAGMA user_version``; one ordered list of steps, each applied
  in its own transaction: `MIGRATIONS` here (versions 1-3), the rest owned by the packages that
  use them and gathered in `sitectl.migrations.SCHEMA` (every Store's default). Before it
  migrates, the store is copied to ``<store>.v<N>.bak`` (the way back to the older release); a
  database from a newer sitectl is refused, not guessed at, naming that copy when it exists.
- One connection, used from the event loop thread; the lock makes the odd call from a worker
  thread safe. Statements are small and local, so they run inline.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["MIGRATIONS", "Migration", "Store", "StoreError", "pre_upgrade_path"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: applied once, in order, in its own transaction."""

    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "meta: key/value facts about this installation",
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "offline operation (sitectl/ocpp/journal.py): journal, dead letters, transaction ids, "
        "authorization cache and local lists, boot state",
        """
        CREATE TABLE journal (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,
            charger    TEXT NOT NULL,
            action     TEXT NOT NULL,
            payload    TEXT NOT NULL,
            kind       TEXT NOT NULL,
            tx         TEXT,
            attempts   INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        CREATE INDEX journal_by_charger ON journal(charger, seq);
        CREATE TABLE dead_letters (
            seq        INTEGER PRIMARY KEY,
            charger    TEXT NOT NULL,
            action     TEXT NOT NULL,
            payload    TEXT NOT NULL,
            reason     TEXT NOT NULL,
            attempts   INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            failed_at  TEXT NOT NULL
        );
        CREATE TABLE tx_map (
            charger  TEXT NOT NULL,
            local_id INTEGER NOT NULL,
            csms_id  INTEGER,
            PRIMARY KEY (charger, local_id)
        );
        CREATE TABLE auth_cache (
            id_tag     TEXT PRIMARY KEY,
            info       TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE local_list (
            charger TEXT NOT NULL,
            id_tag  TEXT NOT NULL,
            info    TEXT NOT NULL,
            PRIMARY KEY (charger, id_tag)
        );
        CREATE TABLE charger_boot (
            charger      TEXT PRIMARY KEY,
            accepted     INTEGER NOT NULL,
            interval_s   INTEGER NOT NULL,
            pending_boot TEXT,
            updated_at   TEXT NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "MQTT uplink (sitectl/uplink/outbox.py): the outbox and the per-site counters (seq, drops)",
        """
        CREATE TABLE outbox (
            id     INTEGER PRIMARY KEY AUTOINCREMENT,
            kind   TEXT NOT NULL,
            key    TEXT,
            topic  TEXT NOT NULL,
            body   TEXT NOT NULL,
            retain INTEGER NOT NULL,
            size   INTEGER NOT NULL,
            seq    INTEGER
        );
        CREATE INDEX outbox_by_kind ON outbox(kind, key, id);
        CREATE TABLE uplink_counters (
            site  TEXT NOT NULL,
            name  TEXT NOT NULL,
            value INTEGER NOT NULL,
            PRIMARY KEY (site, name)
        );
        """,
    ),
)


#: The meta key of the store epoch (`Store.epoch`).
EPOCH_META_KEY = "store.epoch"


class StoreError(Exception):
    """The database cannot be opened or used (our side: path, permissions, version)."""


class Store:
    """One SQLite database in WAL mode with versioned migrations.

    Args:
        path: the database file; its directory is created if missing.
        synchronous: ``FULL`` (every commit durable) or ``NORMAL`` (durable at checkpoints).
        migrations: the schema steps (default: all of sitectl's, `sitectl.migrations.SCHEMA`,
            so that any Store opens a database sitectl wrote).

    Raises:
        StoreError: when the file cannot be opened, is not a database, or is newer than us.
    """

    def __init__(
        self,
        path: str | Path,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        migrations: Sequence[Migration] | None = None,
    ) -> None:
        if migrations is None:
            # Imported here: the packages owning the later steps import this module.
            from sitectl.migrations import SCHEMA

            migrations = SCHEMA
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing commits by
            # surprise and a transaction is exactly what `transaction()` encloses.
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._conn.row_factory = sqlite3.Row
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(migrations)
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise StoreError(f"{self.path}: {exc}") from None
        except OSError as exc:
            self._close_quietly()
            raise StoreError(f"{self.path}: {exc.strerror}") from None
        except BaseException:
            # A refused store must not stay open: the lock would block a restore.
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        versions = [m.version for m in migrations]
        if versions != sorted(set(versions)):
            raise StoreError("migrations must have increasing, unique versions")
        current = self.schema_version
        latest = versions[-1] if versions else 0
        if current > latest:
            raise StoreError(_newer_message(self.path, current, latest))
        if 0 < current < latest:
            # The way back to this release after the upgrade: restore this copy.
            from sitectl.backup import BackupError, copy_database

            saved = pre_upgrade_path(self.path, current)
            try:
                with self._lock:
                    copy_database(self._conn, saved)
            except BackupError as exc:  # no migration without the way back
                raise StoreError(
                    f"{self.path}: not migrated, the copy to {saved} failed: {exc}"
                ) from None
            log.info("store: copied to %s before migrating from version %d", saved, current)
        for migration in migrations:
            if migration.version <= current:
                continue
            with self.transaction() as conn:
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={migration.version}")
            log.info("store migrated to version %d: %s", migration.version, migration.description)

    @property
    def schema_version(self) -> int:
        """The version of the last migration applied."""
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run statements atomically: all committed on exit, all rolled back on an exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """Run one statement in its own (autocommitted) transaction."""
        with self._lock:
            return self._conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Run a read and return every row."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def get_meta(self, key: str) -> str | None:
        """A value from the meta table, or ``None``."""
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value in the meta table."""
        self.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def epoch(self) -> str:
        """This installation's store epoch: a random id made with the store, kept in ``meta``.

        A store that was replaced or reset (a new installation, a damaged file moved away)
        has another epoch, so a cloud that sees ``seq`` start again at 1 can tell a reset from
        duplicates (issue #22.13). A store from before epochs gets one on first use.
        """
        cached = getattr(self, "_epoch", None)
        if cached is not None:
            return cached
        with self._lock:
            epoch = self.get_meta(EPOCH_META_KEY)
            if epoch is None:
                epoch = secrets.token_hex(8)
                self.set_meta(EPOCH_META_KEY, epoch)
        self._epoch: str = epoch
        return epoch

    def integrity_ok(self) -> bool:
        """Whether SQLite's own integrity check passes."""
        return self.query("PRAGMA integrity_check")[0][0] == "ok"

    def quick_check(self) -> str | None:
        """SQLite's quick check (fast enough for every start); the first problem, or ``None``."""
        try:
            first = str(self.query("PRAGMA quick_check")[0][0])
        except sqlite3.DatabaseError as exc:  # damaged beyond what the check can read
            return str(exc)
        return None if first == "ok" else first

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as exc:  # pragma: no cover - best effort on shutdown
                log.warning("store checkpoint on close failed: %s", exc)
            self._conn.close()


def pre_upgrade_path(path: str | Path, version: int) -> Path:
    """Where the store is copied before it migrates from ``version`` to a newer schema."""
    path = Path(path)
    return path.with_name(f"{path.name}.v{version}.bak")


def _newer_message(path: Path, current: int, latest: int) -> str:
    saved = pre_upgrade_path(path, latest)
    if saved.exists():
        back = (
            f"or, to go back to this release, stop sitectl and restore the copy taken before "
            f"the upgrade: sitectl restore {saved} -c CONFIG --force (what the newer release "
            "stored since is lost)"
        )
    else:
        back = "or restore a backup made with this release: sitectl restore FILE -c CONFIG --force"
    return (
        f"{path}: schema version {current} is newer than this sitectl knows ({latest}): "
        f"it was written by a newer release. Run that release again, {back}"
    )


def _statements(sql: str) -> Iterator[str]:
    """Split a script into statements.

    executescript() would COMMIT our open transaction first; running the statements one by one
    inside BEGIN keeps a migration and its version bump atomic.
    """
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                yield pending.strip()
            pending = ""
    if pending.strip():
        raise StoreError(f"incomplete SQL statement in migration: {pending.strip()[:60]}")
