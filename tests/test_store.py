"""The SQLite store: migrations, transactions, and surviving SIGKILL mid-write."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sitectl.migrations import SCHEMA
from sitectl.store import MIGRATIONS, Migration, Store, StoreError
from tests.helpers import wait_for_sync

REPO = Path(__file__).resolve().parent.parent


def test_new_store_is_wal_and_migrated(tmp_path: Path) -> None:
    store = Store(tmp_path / "sub" / "db.sqlite")
    try:
        assert store.schema_version == SCHEMA[-1].version
        assert store.query("PRAGMA journal_mode")[0][0] == "wal"
        store.set_meta("site_id", "depot")
        store.set_meta("site_id", "depot-2")
        assert store.get_meta("site_id") == "depot-2"
        assert store.get_meta("missing") is None
    finally:
        store.close()


def test_migrations_apply_once_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    steps = [
        *MIGRATIONS,
        Migration(100, "t", "CREATE TABLE t (x INTEGER);\nINSERT INTO t VALUES (1);"),
        Migration(101, "t2", "INSERT INTO t VALUES (2);"),
    ]
    Store(path, migrations=steps[:-1]).close()
    store = Store(path, migrations=steps)
    try:
        assert store.schema_version == 101
        assert [r[0] for r in store.query("SELECT x FROM t ORDER BY x")] == [1, 2]
    finally:
        store.close()


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    broken = [
        *MIGRATIONS,
        Migration(100, "bad", "CREATE TABLE t (x);\nINSERT INTO nope VALUES(1);"),
    ]
    with pytest.raises(StoreError, match="no such table: nope"):
        Store(path, migrations=broken)
    store = Store(path, migrations=MIGRATIONS)
    try:
        assert store.schema_version == MIGRATIONS[-1].version
        assert not store.query("SELECT name FROM sqlite_master WHERE name = 't'")
    finally:
        store.close()


def test_by_default_a_store_has_every_component_s_tables(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        assert store.schema_version == SCHEMA[-1].version == 9
        tables = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {
            "journal",
            "outbox",
            "fw_rollouts",
            "session_history",
            "active_sessions",
            "control_memory",
            "limit_events",
            "util_status",
            "util_connector",
        } <= tables
    finally:
        store.close()


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=999")
    conn.close()
    with pytest.raises(StoreError, match="schema version 999 is newer"):
        Store(path)


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a database"):
        Store(path)


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        with pytest.raises(RuntimeError), store.transaction() as conn:
            conn.execute("INSERT INTO meta VALUES ('a', '1')")
            raise RuntimeError("boom")
        assert store.get_meta("a") is None
    finally:
        store.close()


WRITER = textwrap.dedent("""\
    import sys
    from sitectl.store import Store
    store = Store(sys.argv[1])
    store.execute("CREATE TABLE IF NOT EXISTS batch (n INTEGER, part INTEGER, payload BLOB)")
    n = 0
    while True:
        with store.transaction() as conn:
            for part in range(3):
                conn.execute("INSERT INTO batch VALUES (?, ?, ?)", (n, part, b"x" * 2000))
        n += 1
        if n == 200:
            print("ready", flush=True)
""")


def test_sigkill_mid_write_leaves_a_readable_consistent_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        # Let it keep writing; kill it while it is inside some transaction.
        wait_for_sync(
            lambda: path.with_name("db.sqlite-wal").stat().st_size > 200_000,
            timeout=30,
            message="the WAL to grow",
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    store = Store(path)
    try:
        assert store.integrity_ok()
        batches = store.query("SELECT n, COUNT(*) AS parts FROM batch GROUP BY n ORDER BY n")
        assert len(batches) >= 200
        # Every committed batch is whole: a transaction is all or nothing after a kill.
        assert all(row["parts"] == 3 for row in batches)
        assert [row["n"] for row in batches] == list(range(len(batches)))
    finally:
        store.close()


def test_a_damaged_store_is_a_critical_alarm_at_start(tmp_path: Path) -> None:
    # Issue #22.13: nothing checked a store's pages; a damaged one ran silently.
    from sitectl.app import check_store
    from sitectl.state import SiteState
    from tests.ocpp.conftest import depot_config

    path = tmp_path / "db.sqlite"
    store = Store(path)
    store.execute("CREATE TABLE filler (n INTEGER PRIMARY KEY, text TEXT)")
    for n in range(2000):
        store.execute("INSERT INTO filler VALUES (?, ?)", (n, "x" * 200))
    state = SiteState(depot_config([{"id": "CP1"}], None))
    assert check_store(store, state) and state.alarms == {}
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(20 * page, 20 * page + 200):  # garbage over a b-tree page's header
        data[offset] = 0xA5
    path.write_bytes(bytes(data))
    store = Store(path)
    try:
        assert not check_store(store, state)
        alarm = state.alarms[("store_damaged", "store")]
        assert "sitectl restore" in alarm.text and str(alarm.severity) == "critical"
    finally:
        store.close()


def test_the_epoch_is_made_with_the_store_and_kept(tmp_path: Path) -> None:
    """Issue #22.13: a new (or reset) store has a new epoch; a reopened one keeps its own."""
    store = Store(tmp_path / "a.sqlite")
    epoch = store.epoch
    assert len(epoch) == 16 and int(epoch, 16) >= 0
    store.close()
    again = Store(tmp_path / "a.sqlite")
    assert again.epoch == epoch
    again.close()
    (tmp_path / "a.sqlite").unlink()
    reset = Store(tmp_path / "a.sqlite")
    assert reset.epoch != epoch
    reset.close()
