"""The firmware tables in the store (migration 4).

- ``fw_images``: the cache index, one row per image, keyed by the SHA-256 of its bytes (the file
  is ``<cache_dir>/images/<sha256>``); ``last_used`` (Unix seconds) orders LRU eviction.
- ``fw_sources``: which URL gave which image (several URLs may give the same bytes).
- ``fw_partials``: downloads in progress, so that a restart resumes them with HTTP Range; the
  validator (strong ETag or Last-Modified) goes into ``If-Range`` (RFC 9110 §13.1.5).
- ``fw_pins``: images a rollout or a publication needs; never evicted while pinned.
- ``fw_rollouts``, ``fw_rollout_chargers``: local rollouts and every charger's progress.
- ``fw_published``: images published on the local controller identity (2.0.1 PublishFirmware,
  reference F12), by MD5.

The per-charger URL tokens are HMACs with a secret kept in ``meta`` (``firmware_token_secret``),
so the URLs handed to chargers stay valid across restarts without a token table.
"""

from __future__ import annotations

from sitectl.store import Migration

__all__ = ["FIRMWARE_MIGRATION"]

FIRMWARE_MIGRATION = Migration(
    4,
    "firmware (sitectl/firmware): image cache index, sources, partial downloads, pins, "
    "rollouts and their chargers, published images",
    """
    CREATE TABLE fw_images (
        sha256     TEXT PRIMARY KEY,
        size       INTEGER NOT NULL,
        md5        TEXT NOT NULL,
        source_url TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_used  REAL NOT NULL
    );
    CREATE TABLE fw_sources (
        url    TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL REFERENCES fw_images(sha256) ON DELETE CASCADE
    );
    CREATE INDEX fw_sources_by_image ON fw_sources(sha256);
    CREATE TABLE fw_partials (
        url        TEXT PRIMARY KEY,
        file       TEXT NOT NULL,
        validator  TEXT,
        total      INTEGER,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE fw_pins (
        sha256 TEXT NOT NULL,
        holder TEXT NOT NULL,
        PRIMARY KEY (sha256, holder)
    );
    CREATE TABLE fw_rollouts (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        url        TEXT NOT NULL,
        md5        TEXT,
        sha256     TEXT,
        targets    TEXT NOT NULL,
        options    TEXT NOT NULL,
        state      TEXT NOT NULL,
        reason     TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE fw_rollout_chargers (
        rollout_id     INTEGER NOT NULL REFERENCES fw_rollouts(id) ON DELETE CASCADE,
        charger        TEXT NOT NULL,
        position       INTEGER NOT NULL,
        state          TEXT NOT NULL,
        canary         INTEGER NOT NULL DEFAULT 0,
        request_id     INTEGER,
        charger_status TEXT,
        detail         TEXT,
        version_before TEXT,
        waiting_since  TEXT,
        started_at     TEXT,
        updated_at     TEXT NOT NULL,
        PRIMARY KEY (rollout_id, charger)
    );
    CREATE TABLE fw_published (
        md5          TEXT PRIMARY KEY,
        sha256       TEXT NOT NULL,
        request_id   INTEGER NOT NULL,
        location     TEXT NOT NULL,
        published_at TEXT NOT NULL
    );
    """,
)
