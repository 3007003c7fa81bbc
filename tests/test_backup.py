"""Backup and restore of the store, and the way back from an upgrade (sitectl/backup.py).

Every test uses a real :class:`~sitectl.store.Store` in WAL mode. Automatic checkpoints are off
where it matters, so the commits under test are in ``-wal`` only, where a plain file copy
misses them.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sitectl.backup import BackupError, backup, inspect, restore
from sitectl.cli import main
from sitectl.migrations import SCHEMA
from sitectl.store import Store, StoreError, pre_upgrade_path


def meta(path: Path, key: str) -> str | None:
    """Read a meta value the way a fresh process would."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state.sqlite")
    s.execute("PRAGMA wal_autocheckpoint=0")  # keep new commits in the WAL
    yield s
    s.close()


def test_backup_holds_commits_not_yet_checkpointed(store: Store, tmp_path: Path) -> None:
    for k in range(50):
        store.set_meta(f"k{k}", str(k))
    wal = store.path.with_name(store.path.name + "-wal")
    assert wal.stat().st_size > 0
    # The premise: the main file alone does not have them.
    shutil.copy(store.path, tmp_path / "plain-copy.sqlite")
    with contextlib.suppress(sqlite3.OperationalError):  # maybe not even the schema is there
        assert meta(tmp_path / "plain-copy.sqlite", "k49") is None

    info = backup(store.path, tmp_path / "backup.sqlite")

    assert info.schema_version == SCHEMA[-1].version
    assert meta(tmp_path / "backup.sqlite", "k49") == "49"
    assert not (tmp_path / "backup.sqlite-wal").exists()
    conn = sqlite3.connect(tmp_path / "backup.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    assert store.get_meta("k0") == "0"  # the running store is untouched and usable
    store.set_meta("after", "1")


def test_backup_refuses_to_overwrite_without_force(store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "backup.sqlite"
    dest.write_text("an older backup")
    with pytest.raises(BackupError, match="--force"):
        backup(store.path, dest)
    assert dest.read_text() == "an older backup"
    store.set_meta("x", "1")
    backup(store.path, dest, force=True)
    assert meta(dest, "x") == "1"
    with pytest.raises(BackupError, match="the store itself"):
        backup(store.path, store.path, force=True)


@pytest.mark.parametrize("kind", ["text", "other-sqlite", "missing"])
def test_only_a_sitectl_store_is_accepted(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "file.sqlite"
    if kind == "text":
        path.write_bytes(b"not a database at all" * 200)
    elif kind == "other-sqlite":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE photos (id INTEGER)")
        conn.execute("PRAGMA user_version=3")
        conn.close()
    with pytest.raises(BackupError, match=r"not a sitectl store|no such file"):
        inspect(path)
    with pytest.raises(BackupError):
        restore(path, tmp_path / "state.sqlite")
    assert not (tmp_path / "state.sqlite").exists()


def test_restore_replaces_the_store_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    s = Store(path)
    s.set_meta("x", "backed up")
    backup(path, tmp_path / "backup.sqlite")
    s.set_meta("x", "later")
    s.close()

    with pytest.raises(BackupError, match="--force"):
        restore(tmp_path / "backup.sqlite", path)
    assert meta(path, "x") == "later"

    info = restore(tmp_path / "backup.sqlite", path, force=True)

    assert info.kept == tmp_path / "state.sqlite.before-restore"
    assert meta(info.kept, "x") == "later"
    reopened = Store(path)
    assert reopened.get_meta("x") == "backed up"
    assert reopened.integrity_ok()
    reopened.close()


def test_restore_refuses_while_the_store_is_open(store: Store, tmp_path: Path) -> None:
    store.set_meta("x", "live")
    backup(store.path, tmp_path / "backup.sqlite")
    with pytest.raises(BackupError, match="stop sitectl"):
        restore(tmp_path / "backup.sqlite", store.path, force=True)
    store.set_meta("y", "still writable")


def test_restore_does_not_replay_a_crashed_stores_wal(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    s = Store(path)
    s.set_meta("x", "backed up")
    s.close()
    backup(path, tmp_path / "backup.sqlite")
    # A process that commits and dies without closing leaves its commits in the WAL.
    crash = (
        "import os, sys; from sitectl.store import Store; s = Store(sys.argv[1]); "
        "s.execute('PRAGMA wal_autocheckpoint=0'); s.set_meta('x', 'crashed'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", crash, str(path)], check=True, timeout=60)
    assert path.with_name("state.sqlite-wal").stat().st_size > 0

    info = restore(tmp_path / "backup.sqlite", path, force=True)

    assert meta(path, "x") == "backed up"
    assert info.kept is not None and meta(info.kept, "x") == "crashed"


def test_upgrade_copies_the_store_and_a_downgrade_names_that_copy(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    older = SCHEMA[:-1]  # the release before this one
    s = Store(path, migrations=older)
    s.set_meta("x", "before the upgrade")
    s.close()

    upgraded = Store(path)  # this release migrates, copying the store first
    upgraded.set_meta("x", "after the upgrade")
    upgraded.close()
    saved = pre_upgrade_path(path, older[-1].version)
    assert inspect(saved) == older[-1].version
    assert meta(saved, "x") == "before the upgrade"

    with pytest.raises(StoreError) as refused:
        Store(path, migrations=older)  # the older release, started again
    message = str(refused.value)
    assert f"schema version {SCHEMA[-1].version} is newer" in message
    assert f"sitectl restore {saved}" in message

    restore(saved, path, force=True)
    back = Store(path, migrations=older)
    assert back.get_meta("x") == "before the upgrade"
    back.close()


def test_no_copy_when_nothing_migrates(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    Store(path).close()  # a new store: created, not upgraded
    Store(path).close()  # current: nothing to migrate
    assert not list(tmp_path.glob("*.bak"))


def test_cli_backup_and_restore(write_config, tmp_path: Path, capsys) -> None:
    config = write_config()
    s = Store(tmp_path / "state.sqlite")
    s.set_meta("x", "1")
    s.close()
    dest = tmp_path / "b.sqlite"

    assert main(["backup", str(dest), "-c", str(config)]) == 0
    assert "schema version" in capsys.readouterr().out
    assert main(["backup", str(dest), "-c", str(config)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["restore", str(dest), "-c", str(config)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["restore", str(dest), "-c", str(config), "--force"]) == 0
    assert "before-restore" in capsys.readouterr().out
    assert meta(tmp_path / "state.sqlite", "x") == "1"
