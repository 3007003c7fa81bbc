"""What the utilization report reads, in the store: its tables and the one way to write them.

Tables (migration `UTILIZATION_MIGRATION`):

- ``util_status``: every connector status change as the charger reported it (charger,
  connector, status, error, UTC ms), and on connector 0 the charger's own connection
  (``Connected`` / ``Disconnected``). At each start of sitectl every configured charger and
  connector gets a row of how it stands then (disconnected, ``Unknown``).
- ``util_runs``: when sitectl was recording (start, last write): outside them nothing is
  known, and the report says "unknown", never "offline".
- ``util_connector``: per connector and bucket, the seconds with a fresh measurement, the
  seconds it drew power, the energy, mean and highest power and current. Only buckets where the
  connector was in use or drew anything have a row.
- ``util_circuit``: per node (``grid`` and every circuit) and bucket, the seconds the control
  loop's view was fresh, the seconds the node was at its limit, the lowest limit in force, the
  measured current (highest phase; mean and peak) and the energy its limit deferred.
- ``util_sessions``: every ended session with its energy, its stated need and departure, the
  energy by the departure and whether the departure was met.

Buckets are 1 minute long when written and `rollup` joins them into ``rollup_min`` buckets once
they are ``minute_days`` old; `expire` drops everything older than ``retention_days``. Numbers
are integers in small units (tenths of a Wh and of an A, W) so that a year stays small: SQLite
stores a small integer in one to three bytes, a float in eight.

Every write is one short transaction through `sitectl.store.Store` (its lock makes a call from a
worker thread safe); the recorder calls them from a thread, off the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sitectl.store import Migration, Store

__all__ = [
    "MINUTE_S",
    "UTILIZATION_MIGRATION",
    "Batch",
    "CircuitBucket",
    "ConnectorBucket",
    "SessionOutcome",
    "StatusEvent",
    "UtilizationStore",
]

#: The length of a bucket as written (s).
MINUTE_S = 60
#: Rolled up (and expired) at most this much at a time, each piece its own transaction, so that
#: the store's lock is never held long (other components write through the same connection).
_CHUNK_S = 3600

UTILIZATION_MIGRATION = Migration(
    9,
    "utilization (sitectl/utilization): status changes, recording runs, per-connector and "
    "per-circuit buckets, session outcomes",
    """
    CREATE TABLE util_points (
        id        INTEGER PRIMARY KEY,
        kind      TEXT NOT NULL,
        name      TEXT NOT NULL,
        connector INTEGER NOT NULL,
        UNIQUE (kind, name, connector)
    );
    CREATE TABLE util_status (
        at_ms     INTEGER NOT NULL,
        charger   TEXT NOT NULL,
        connector INTEGER NOT NULL,
        status    TEXT NOT NULL,
        error     TEXT
    );
    CREATE INDEX util_status_by_point ON util_status(charger, connector, at_ms);
    CREATE INDEX util_status_by_time ON util_status(at_ms);
    CREATE TABLE util_runs (
        started_ms INTEGER PRIMARY KEY,
        last_ms    INTEGER NOT NULL
    );
    CREATE TABLE util_connector (
        t          INTEGER NOT NULL,
        point      INTEGER NOT NULL,
        span_s     INTEGER NOT NULL,
        sampled_s  INTEGER NOT NULL,
        drawing_s  INTEGER NOT NULL,
        energy_dwh INTEGER NOT NULL,
        mean_w     INTEGER,
        max_w      INTEGER,
        mean_da    INTEGER,
        max_da     INTEGER,
        PRIMARY KEY (t, point, span_s)
    ) WITHOUT ROWID;
    CREATE TABLE util_circuit (
        t            INTEGER NOT NULL,
        point        INTEGER NOT NULL,
        span_s       INTEGER NOT NULL,
        sampled_s    INTEGER NOT NULL,
        at_limit_s   INTEGER NOT NULL,
        limit_da     INTEGER,
        metered_s    INTEGER NOT NULL,
        mean_da      INTEGER,
        max_da       INTEGER,
        deferred_dwh INTEGER NOT NULL,
        PRIMARY KEY (t, point, span_s)
    ) WITHOUT ROWID;
    CREATE TABLE util_sessions (
        session_id       TEXT PRIMARY KEY,
        charger          TEXT NOT NULL,
        connector        INTEGER NOT NULL,
        started_ms       INTEGER NOT NULL,
        ended_ms         INTEGER NOT NULL,
        energy_wh        REAL NOT NULL,
        need_kwh         REAL,
        need_source      TEXT,
        departure_ms     INTEGER,
        departure_source TEXT,
        by_departure_wh  REAL,
        outcome          TEXT NOT NULL,
        short_alarm      INTEGER NOT NULL
    );
    CREATE INDEX util_sessions_by_start ON util_sessions(started_ms);
    """,
)


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A connector's status as its charger reported it (connector 0: the connection)."""

    at_ms: int
    charger: str
    connector: int
    status: str
    error: str | None = None


@dataclass(slots=True)
class ConnectorBucket:
    """One connector over one bucket (``t`` its UTC start in s, ``span_s`` long)."""

    charger: str
    connector: int
    t: int
    span_s: int = MINUTE_S
    sampled_s: float = 0.0  # seconds with a fresh measurement
    drawing_s: float = 0.0  # of them, seconds drawing power
    energy_wh: float = 0.0
    mean_w: float | None = None  # over the sampled seconds
    max_w: float | None = None
    mean_a: float | None = None  # the highest phase
    max_a: float | None = None


@dataclass(slots=True)
class CircuitBucket:
    """One node (``grid`` or a circuit) over one bucket."""

    node: str
    t: int
    span_s: int = MINUTE_S
    sampled_s: float = 0.0  # seconds the control loop's view was fresh
    at_limit_s: float = 0.0
    limit_a: float | None = None  # the lowest limit in force (tightest phase)
    metered_s: float = 0.0  # seconds with a trusted measured current
    mean_a: float | None = None  # measured, highest phase, over the metered seconds
    max_a: float | None = None
    deferred_wh: float = 0.0


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """An ended session as the report judges it (see `sitectl.utilization.recorder`)."""

    session_id: str
    charger: str
    connector: int
    started_ms: int
    ended_ms: int
    energy_wh: float
    need_kwh: float | None = None
    need_source: str | None = None
    departure_ms: int | None = None
    departure_source: str | None = None
    by_departure_wh: float | None = None
    outcome: str = "unknown"  # met | missed | unknown
    short_alarm: bool = False


@dataclass(slots=True)
class Batch:
    """Everything recorded since the last write, written in one transaction."""

    statuses: list[StatusEvent] = field(default_factory=list)
    connectors: list[ConnectorBucket] = field(default_factory=list)
    circuits: list[CircuitBucket] = field(default_factory=list)
    sessions: list[SessionOutcome] = field(default_factory=list)
    #: This run: (its start, the latest moment recorded), UTC ms.
    run: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.statuses) + len(self.connectors) + len(self.circuits) + len(self.sessions)


def _i(value: float | None, scale: float = 1.0) -> int | None:
    return None if value is None else round(value * scale)


# Merging two rows of one bucket (a clock stepped back, or a rollup meeting an older row): sums
# add, maxima and minima keep the larger and the smaller, means are weighted by their seconds.
# (SET reads the old row in every expression, whatever the order.)
def _merge(
    table: str,
    sums: Sequence[str],
    maxima: Sequence[str] = (),
    minima: Sequence[str] = (),
    means: dict[str, str] | None = None,
) -> str:
    old, new = f"{table}.", "excluded."
    parts = [f"{c} = {old}{c} + {new}{c}" for c in sums]
    parts += [
        f"{c} = max(coalesce({old}{c}, {new}{c}), coalesce({new}{c}, {old}{c}))" for c in maxima
    ]
    parts += [
        f"{c} = min(coalesce({old}{c}, {new}{c}), coalesce({new}{c}, {old}{c}))" for c in minima
    ]
    for mean, weight in (means or {}).items():
        both = f"{old}{weight} + {new}{weight}"
        total = (
            f"coalesce({old}{mean}, 0) * {old}{weight} + coalesce({new}{mean}, 0) * {new}{weight}"
        )
        parts.append(
            f"{mean} = CASE WHEN {both} > 0 THEN "
            f"CAST(round(({total}) * 1.0 / ({both})) AS INTEGER) "
            f"ELSE coalesce({new}{mean}, {old}{mean}) END"
        )
    return "ON CONFLICT(t, point, span_s) DO UPDATE SET " + ", ".join(parts)


_CONNECTOR_COLUMNS = (
    "t, point, span_s, sampled_s, drawing_s, energy_dwh, mean_w, max_w, mean_da, max_da"
)
_CONNECTOR_MERGE = _merge(
    "util_connector",
    ("sampled_s", "drawing_s", "energy_dwh"),
    maxima=("max_w", "max_da"),
    means={"mean_w": "sampled_s", "mean_da": "sampled_s"},
)
_CIRCUIT_COLUMNS = (
    "t, point, span_s, sampled_s, at_limit_s, limit_da, metered_s, mean_da, max_da, deferred_dwh"
)
_CIRCUIT_MERGE = _merge(
    "util_circuit",
    ("sampled_s", "at_limit_s", "metered_s", "deferred_dwh"),
    maxima=("max_da",),
    minima=("limit_da",),
    means={"mean_da": "metered_s"},
)

# One rolled-up bucket from the 1-minute rows of a piece of time.
_ROLL_CONNECTOR = f"""
    INSERT INTO util_connector({_CONNECTOR_COLUMNS})
    SELECT (t / :span) * :span AS bt, point, :span, sum(sampled_s), sum(drawing_s),
           sum(energy_dwh),
           CAST(round(sum(coalesce(mean_w, 0) * sampled_s) * 1.0 / nullif(sum(sampled_s), 0))
                AS INTEGER),
           max(max_w),
           CAST(round(sum(coalesce(mean_da, 0) * sampled_s) * 1.0 / nullif(sum(sampled_s), 0))
                AS INTEGER),
           max(max_da)
    FROM util_connector WHERE span_s = {MINUTE_S} AND t >= :start AND t < :end
    GROUP BY bt, point
    {_CONNECTOR_MERGE}
"""
_ROLL_CIRCUIT = f"""
    INSERT INTO util_circuit({_CIRCUIT_COLUMNS})
    SELECT (t / :span) * :span AS bt, point, :span, sum(sampled_s), sum(at_limit_s),
           min(limit_da), sum(metered_s),
           CAST(round(sum(coalesce(mean_da, 0) * metered_s) * 1.0 / nullif(sum(metered_s), 0))
                AS INTEGER),
           max(max_da), sum(deferred_dwh)
    FROM util_circuit WHERE span_s = {MINUTE_S} AND t >= :start AND t < :end
    GROUP BY bt, point
    {_CIRCUIT_MERGE}
"""


class UtilizationStore:
    """Writes the utilization tables; rolls them up and expires them.

    Args:
        store: the store (with `UTILIZATION_MIGRATION` applied).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._points: dict[tuple[str, str, int], int] = {}
        self._lock = threading.Lock()

    def point(self, kind: str, name: str, connector: int = 0) -> int:
        """The id of a connector (``kind`` "connector") or a node ("circuit"), made if new."""
        key = (kind, name, connector)
        with self._lock:
            found = self._points.get(key)
            if found is not None:
                return found
            self.store.execute(
                "INSERT OR IGNORE INTO util_points(kind, name, connector) VALUES (?, ?, ?)", key
            )
            row = self.store.query(
                "SELECT id FROM util_points WHERE kind = ? AND name = ? AND connector = ?", key
            )
            self._points[key] = int(row[0]["id"])
            return self._points[key]

    def write(self, batch: Batch) -> None:
        """Write a batch in one transaction."""
        connectors = [
            (
                b.t,
                self.point("connector", b.charger, b.connector),
                b.span_s,
                round(b.sampled_s),
                round(b.drawing_s),
                round(b.energy_wh * 10),
                _i(b.mean_w),
                _i(b.max_w),
                _i(b.mean_a, 10),
                _i(b.max_a, 10),
            )
            for b in batch.connectors
        ]
        circuits = [
            (
                b.t,
                self.point("circuit", b.node),
                b.span_s,
                round(b.sampled_s),
                round(b.at_limit_s),
                _i(b.limit_a, 10),
                round(b.metered_s),
                _i(b.mean_a, 10),
                _i(b.max_a, 10),
                round(b.deferred_wh * 10),
            )
            for b in batch.circuits
        ]
        with self.store.transaction() as conn:
            conn.executemany(
                "INSERT INTO util_status(at_ms, charger, connector, status, error) "
                "VALUES (?, ?, ?, ?, ?)",
                [(e.at_ms, e.charger, e.connector, e.status, e.error) for e in batch.statuses],
            )
            conn.executemany(
                f"INSERT INTO util_connector({_CONNECTOR_COLUMNS}) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) {_CONNECTOR_MERGE}",
                connectors,
            )
            conn.executemany(
                f"INSERT INTO util_circuit({_CIRCUIT_COLUMNS}) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) {_CIRCUIT_MERGE}",
                circuits,
            )
            conn.executemany(
                "INSERT OR REPLACE INTO util_sessions(session_id, charger, connector, "
                "started_ms, ended_ms, energy_wh, need_kwh, need_source, departure_ms, "
                "departure_source, by_departure_wh, outcome, short_alarm) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        s.session_id,
                        s.charger,
                        s.connector,
                        s.started_ms,
                        s.ended_ms,
                        s.energy_wh,
                        s.need_kwh,
                        s.need_source,
                        s.departure_ms,
                        s.departure_source,
                        s.by_departure_wh,
                        s.outcome,
                        int(s.short_alarm),
                    )
                    for s in batch.sessions
                ],
            )
            if batch.run is not None:
                conn.execute(
                    "INSERT INTO util_runs(started_ms, last_ms) VALUES (?, ?) "
                    "ON CONFLICT(started_ms) DO UPDATE SET "
                    "last_ms = max(util_runs.last_ms, excluded.last_ms)",
                    batch.run,
                )

    def rollup(self, before_s: int, span_s: int) -> int:
        """Join the 1-minute buckets that start before `before_s` into `span_s` buckets.

        Only whole buckets are joined (`before_s` is rounded down to `span_s`); each hour is its
        own transaction. Returns how many 1-minute rows were joined.
        """
        before_s -= before_s % span_s
        first = self.store.query(
            f"SELECT min(t) AS t FROM (SELECT min(t) AS t FROM util_connector "
            f"WHERE span_s = {MINUTE_S} UNION ALL SELECT min(t) FROM util_circuit "
            f"WHERE span_s = {MINUTE_S})"
        )[0]["t"]
        if first is None or first >= before_s:
            return 0
        joined = 0
        start = first - first % span_s
        step = max(span_s, _CHUNK_S - _CHUNK_S % span_s)
        while start < before_s:
            end = min(start + step, before_s)
            params = {"span": span_s, "start": start, "end": end}
            with self.store.transaction() as conn:
                conn.execute(_ROLL_CONNECTOR, params)
                conn.execute(_ROLL_CIRCUIT, params)
                for table in ("util_connector", "util_circuit"):
                    joined += conn.execute(
                        f"DELETE FROM {table} WHERE span_s = {MINUTE_S} AND t >= ? AND t < ?",
                        (start, end),
                    ).rowcount
            start = end
        return joined

    def expire(self, before_s: int) -> int:
        """Drop everything older than `before_s` (UTC s); returns how many rows went.

        A connector's last status before the cut is kept (the report needs how it stood when
        the kept time begins), and so is a run that goes on past it.
        """
        removed = 0
        oldest = self.store.query("SELECT min(t) AS t FROM util_connector")[0]["t"]
        start = before_s if oldest is None else min(int(oldest), before_s)
        while start < before_s:
            end = min(start + _CHUNK_S * 24, before_s)
            with self.store.transaction() as conn:
                for table in ("util_connector", "util_circuit"):
                    removed += conn.execute(f"DELETE FROM {table} WHERE t < ?", (end,)).rowcount
            start = end
        cut_ms = before_s * 1000
        with self.store.transaction() as conn:
            removed += conn.execute(
                "DELETE FROM util_status WHERE at_ms < ? AND rowid NOT IN ("
                "SELECT (SELECT rowid FROM util_status AS l WHERE l.charger = p.charger "
                "AND l.connector = p.connector AND l.at_ms < ? ORDER BY l.at_ms DESC LIMIT 1) "
                "FROM (SELECT DISTINCT charger, connector FROM util_status WHERE at_ms < ?) AS p)",
                (cut_ms, cut_ms, cut_ms),
            ).rowcount
            removed += conn.execute(
                "DELETE FROM util_sessions WHERE ended_ms < ?", (cut_ms,)
            ).rowcount
            removed += conn.execute("DELETE FROM util_runs WHERE last_ms < ?", (cut_ms,)).rowcount
        return removed

    def statuses(self, events: Iterable[StatusEvent]) -> None:
        """Write status events alone (tests and tools)."""
        self.write(Batch(statuses=list(events)))
