"""Backup and restore of the store (``sitectl backup``, ``sitectl restore``).

The store is an SQLite file in WAL mode: a commit lives in ``<store>-wal`` until a checkpoint
moves it into the main file, so copying the main file alone loses commits. A backup therefore
goes through SQLite's online backup API (:meth:`sqlite3.Connection.backup`), which reads the
database as a connection sees it, WAL included, and works while sitectl is running. The copy is
written to a temporary file beside the destination, switched to ``journal_mode=DELETE`` (one
self-contained file), checked with ``PRAGMA integrity_check``, synced and only then renamed into
place, so a backup file is either complete or absent.

A restore replaces the store, so it refuses while any process has the store open (sitectl must
be stopped), refuses an existing store without ``force``, checks that the file is a sitectl store
this release can open, and keeps the store it replaces as ``<store>.before-restore``.

The store itself copies the database this way before it migrates to a newer schema
(``<store>.v<N>.bak``, :func:`sitectl.store.pre_upgrade_path`): that copy is the backup to
restore when going back to the older release.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BackupError",
    "BackupInfo",
    "add_parsers",
    "backup",
    "copy_database",
    "inspect",
    "restore",
    "run_command",
]


class BackupError(Exception):
    """A backup or restore was refused or failed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a backup or restore wrote.

    Args:
        path: The file written (the backup, or the restored store).
        schema_version: The store's schema version (``PRAGMA user_version``).
        size_bytes: Size of the file written.
        kept: For a restore, where the replaced store was kept (``None`` if there was none).
    """

    path: Path
    schema_version: int
    size_bytes: int
    kept: Path | None = None


def _latest_version() -> int:
    from sitectl.migrations import SCHEMA

    return SCHEMA[-1].version


def _expected_tables(version: int) -> set[str]:
    """The tables sitectl's schema has at ``version``, from the migrations themselves."""
    from sitectl.migrations import SCHEMA
    from sitectl.store import _statements

    conn = sqlite3.connect(":memory:")
    try:
        for migration in SCHEMA:
            if migration.version <= version:
                for statement in _statements(migration.sql):
                    conn.execute(statement)
        return _tables(conn)
    finally:
        conn.close()


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows if not r[0].startswith("sqlite_")}


def _check_store(conn: sqlite3.Connection, name: Path) -> int:
    """The schema version of a connection's database, if it is a sound sitectl store."""
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = _tables(conn)
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{name}: not a sitectl store ({exc})") from None
    if version < 1 or "meta" not in tables:
        raise BackupError(f"{name}: not a sitectl store (no schema version or meta table)")
    if check != "ok":
        raise BackupError(f"{name}: the database is damaged (integrity check: {check})")
    # Tables of a newer schema cannot be checked here; what this release knows must be there.
    missing = _expected_tables(min(version, _latest_version())) - tables
    if missing:
        raise BackupError(
            f"{name}: not a sitectl store of schema version {version} "
            f"(missing tables: {', '.join(sorted(missing))})"
        )
    return version


@contextlib.contextmanager
def _open(path: Path, what: str) -> Iterator[sqlite3.Connection]:
    if not path.is_file():
        raise BackupError(f"{path}: no such file ({what})")
    try:
        # Read/write so a WAL left by a crash can be read; nothing here writes to it.
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path}: cannot open ({exc})") from None
    try:
        yield conn
    finally:
        conn.close()


def _copy_to_temp(conn: sqlite3.Connection, directory: Path, name: str) -> Path:
    """Write a checked, synced, self-contained copy of ``conn``'s database into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        out = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.backup(out)
            # The pages copied say "WAL"; a backup is one file that needs no -wal beside it.
            out.execute("PRAGMA journal_mode=DELETE")
            check = out.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the copy failed its integrity check: {check}")
        finally:
            out.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _install(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest`` and make the rename durable."""
    os.replace(tmp, dest)
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def copy_database(conn: sqlite3.Connection, dest: Path) -> None:
    """Copy the database behind ``conn`` to ``dest`` (replaced atomically) by the backup API.

    Used by :func:`backup` and by the store before a migration; ``conn`` may be in use.
    """
    dest = Path(dest)
    _install(_copy_to_temp(conn, dest.parent, dest.name), dest)


def inspect(path: str | Path) -> int:
    """The schema version of a store or backup file.

    Raises:
        BackupError: The file is missing, not an SQLite database, damaged, or not a sitectl
            store (no schema version, no meta table, tables of its version missing).
    """
    path = Path(path)
    with _open(path, "a sitectl store or backup") as conn:
        return _check_store(conn, path)


def backup(store_path: str | Path, dest: str | Path, *, force: bool = False) -> BackupInfo:
    """Copy the store to ``dest``, commits still in the WAL included; sitectl may be running.

    Args:
        store_path: The store (``storage.path`` of the config).
        dest: The backup file to write.
        force: Overwrite ``dest`` if it exists.

    Raises:
        BackupError: No store, not a sitectl store, ``dest`` exists without ``force`` or is the
            store itself.
    """
    store_path, dest = Path(store_path), Path(dest)
    if dest.exists() and dest.resolve() == store_path.resolve():
        raise BackupError(f"{dest}: that is the store itself; give another file")
    if dest.exists() and not force:
        raise BackupError(f"{dest} exists; give --force to overwrite it")
    with _open(store_path, "the store: is storage.path in the config right?") as conn:
        version = _check_store(conn, store_path)
        copy_database(conn, dest)
    return BackupInfo(dest, version, dest.stat().st_size)


def _in_use(path: Path) -> bool:
    """Whether another connection (a running sitectl) has the store open.

    In WAL mode every open connection holds a shared lock on the database; a connection in
    exclusive locking mode cannot take its exclusive lock while one exists.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def restore(src: str | Path, store_path: str | Path, *, force: bool = False) -> BackupInfo:
    """Replace the store with the backup ``src``; sitectl must be stopped.

    The store replaced is kept (copied) as ``<store>.before-restore``; its ``-wal`` and
    ``-shm`` files are removed so that none of its commits are replayed onto the backup.

    Args:
        src: A backup made by :func:`backup` (or a pre-upgrade copy).
        store_path: The store to replace (``storage.path`` of the config).
        force: Replace an existing store.

    Raises:
        BackupError: ``src`` is not a sitectl store or is from a newer release; the store is
            open in another process; it exists and ``force`` was not given.
    """
    src, store_path = Path(src), Path(store_path)
    version = inspect(src)
    latest = _latest_version()
    if version > latest:
        raise BackupError(
            f"{src}: schema version {version} is newer than this sitectl knows ({latest}); "
            "restore it with the release that wrote it"
        )
    kept = None
    if store_path.exists():
        if src.resolve() == store_path.resolve():
            raise BackupError(f"{src}: that is the store itself")
        if _in_use(store_path):
            raise BackupError(
                f"{store_path} is open in another process: stop sitectl first "
                "(systemctl stop sitectl), then restore"
            )
        kept = store_path.with_name(store_path.name + ".before-restore")
        if not force:
            raise BackupError(
                f"{store_path} exists and restoring replaces it: give --force "
                f"(it is kept as {kept})"
            )
    with _open(src, "the backup") as conn:
        tmp = _copy_to_temp(conn, store_path.parent, store_path.name)
    try:
        if kept is not None:
            try:
                with _open(store_path, "the store") as conn:
                    copy_database(conn, kept)
            except (sqlite3.DatabaseError, BackupError):
                os.replace(store_path, kept)  # too damaged to copy: keep the file as it is
        for suffix in ("-wal", "-shm"):
            store_path.with_name(store_path.name + suffix).unlink(missing_ok=True)
        _install(tmp, store_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BackupInfo(store_path, version, store_path.stat().st_size, kept)


# Command line: `sitectl backup FILE -c CONFIG`, `sitectl restore FILE -c CONFIG`.


def add_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``backup`` and ``restore`` subcommands to ``sitectl``'s parser."""
    for name, help_, file_help, force_help in (
        (
            "backup",
            "copy the store to FILE (safe while sitectl runs)",
            "the backup file to write",
            "overwrite FILE if it exists",
        ),
        (
            "restore",
            "replace the store with the backup FILE (stop sitectl first)",
            "a backup made by sitectl backup",
            "replace the existing store (it is kept as <store>.before-restore)",
        ),
    ):
        sub = commands.add_parser(name, parents=[common], help=help_)
        sub.add_argument("file", help=file_help)
        sub.add_argument("-c", "--config", required=True, help="the depot's YAML file")
        sub.add_argument("--force", action="store_true", help=force_help)


def run_command(args: argparse.Namespace, store_path: Path) -> int:
    """Run ``sitectl backup`` or ``sitectl restore`` on the configured store; the exit code."""
    try:
        if args.command == "backup":
            info = backup(store_path, args.file, force=args.force)
            print(
                f"{info.path}: backup of {store_path} "
                f"(schema version {info.schema_version}, {info.size_bytes} bytes)"
            )
        else:
            info = restore(args.file, store_path, force=args.force)
            kept = f"; the store it replaced is kept as {info.kept}" if info.kept else ""
            print(
                f"{store_path}: restored from {args.file} "
                f"(schema version {info.schema_version}){kept}"
            )
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.filename or store_path}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
