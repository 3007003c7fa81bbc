"""The utilization report: how the depot was used over a window, from what the store kept.

Computed from the recorded raw data only (`sitectl.utilization.store`), never from the MQTT
stream. Method, per connector and moment:

- **unknown** outside the times sitectl was recording (``util_runs``), or while its charger is
  connected but the connector's status is not known yet;
- **offline** while its charger is not connected to sitectl, or says ``Unavailable``;
- **faulted** on ``Faulted``; **available** on ``Available`` or ``Reserved``;
- **occupied** on a status that means a vehicle is plugged in (`recorder.OCCUPIED`), split
  into **charging** and **idle** (plugged in, not drawing): per bucket, charging is the
  smaller of the occupied time and the time the connector drew power (both within the
  window); in a bucket without a measurement, the time its status said ``Charging``. (Once
  rolled up into longer buckets, a bucket measured for part of its time only counts the time
  it drew: the status fallback needs the 1-minute detail.)

Shares are of the window (the six add up to 1). Energy is the recorded energy of the buckets
(a bucket cut by the window counts in proportion); mean power is the energy over the time
charging; peak power is the highest sample. A charger adds up its connectors (its shares are of
connector-time; its peak is the highest sum of its connectors' bucket peaks, an upper bound).

Per circuit: the share of the recorded time at its limit, the energy its limit deferred (the
recorder's estimate), the lowest limit in force, the measured current (highest phase).

Per night (named by the local date it starts on; a night begins at
``storage.utilization.night_starts_at``): the sessions that plugged in during it, their energy,
their stated needs and the departures met, missed or unknown (`recorder.judge`).
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, time
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sitectl.config import Config
from sitectl.utilization.recorder import OCCUPIED
from sitectl.utilization.store import UTILIZATION_MIGRATION
from sitectl.utilization.times import nights_between

__all__ = ["CATEGORIES", "ReportError", "nights_report", "open_store", "utilization_report"]

#: The states of a connector, in the order the report lists them.
CATEGORIES = ("offline", "available", "charging", "idle", "faulted", "unknown")
#: The longest bucket (s): rows that start this long before the window may reach into it.
_MAX_SPAN_S = 3600


class ReportError(Exception):
    """The report cannot be made (no store, a store without utilization data)."""


def open_store(path: str | Path) -> sqlite3.Connection:
    """The store, read-only (another process may be writing it: WAL readers never block it).

    Raises:
        ReportError: no file, not a store, or a store from before utilization was recorded.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no store at {path} (storage.path): has sitectl run here yet?")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"{path}: cannot read it as sitectl's store ({exc})") from None
    if "util_status" not in tables:
        conn.close()
        raise ReportError(
            f"{path} holds no utilization data (schema version {version}; recording begins "
            f"with version {UTILIZATION_MIGRATION.version}): run this sitectl release first"
        )
    return conn


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _category(covered: bool, connected: bool, status: str | None) -> str:
    if not covered:
        return "unknown"
    if not connected or status == "Unavailable":
        return "offline"
    if status == "Faulted":
        return "faulted"
    if status in OCCUPIED:
        return "occupied"
    if status in ("Available", "Reserved"):
        return "available"
    return "unknown"


def _timeline(
    events: list[tuple[float, str]],
    link: list[tuple[float, str]],
    coverage: list[tuple[float, float]],
    a: float,
    b: float,
) -> list[tuple[float, float, str, str | None]]:
    """Segments (start, end, category, status) of one connector over [a, b)."""
    marks = {a, b}
    marks.update(t for t, _ in events if a < t < b)
    marks.update(t for t, _ in link if a < t < b)
    for start, end in coverage:
        marks.update(x for x in (start, end) if a < x < b)
    points = sorted(marks)
    status_times = [t for t, _ in events]
    link_times = [t for t, _ in link]
    cover_starts = [s for s, _ in coverage]
    out = []
    for start, end in pairwise(points):
        i = bisect_right(status_times, start) - 1
        j = bisect_right(link_times, start) - 1
        k = bisect_right(cover_starts, start) - 1
        status = events[i][1] if i >= 0 else None
        connected = j >= 0 and link[j][1] == "Connected"
        covered = k >= 0 and coverage[k][1] >= end
        out.append((start, end, _category(covered, connected, status), status))
    return out


#: Occupied segments go to the database in pieces at most this long (s): a bucket then finds
#: the few that overlap it in a bounded range of the index.
_PIECE_S = 21600
# The share of a bucket inside the window [:a, :b).
_FRAC = "(min(:b, c.t + c.span_s) - max(:a, c.t)) * 1.0 / c.span_s"
_IN_WINDOW = "c.t >= :lo AND c.t < :b AND c.t + c.span_s > :a"

# Per connector: the time charging in its buckets (the smaller of the time occupied and the
# time drawing; without a measurement, the time its status said Charging), and the part of
# the Charging-status time the buckets cover. In C, one pass over the window's buckets, each
# finding its occupied segments through the index (the buckets' key begins with the time).
_CHARGING = f"""
    SELECT point, sum(CASE WHEN sampled_s > 0 THEN min(ov, drawing_s * frac) ELSE chov END),
           sum(chov)
    FROM (
        SELECT c.point AS point, c.sampled_s AS sampled_s, c.drawing_s AS drawing_s,
               {_FRAC} AS frac,
               sum(min(o.e, c.t + c.span_s) - max(o.s, c.t)) AS ov,
               sum(CASE WHEN o.charging THEN min(o.e, c.t + c.span_s) - max(o.s, c.t)
                   ELSE 0 END) AS chov
        FROM util_connector AS c CROSS JOIN temp.util_occupied AS o
             ON o.point = c.point AND o.e > c.t AND o.e < c.t + c.span_s + {_PIECE_S}
                AND o.s < c.t + c.span_s
        WHERE {_IN_WINDOW}
        GROUP BY c.t, c.point, c.span_s
    )
    GROUP BY point
"""
_ENERGY = f"""
    SELECT c.point, sum(c.energy_dwh * {_FRAC}), max(c.max_w), max(c.max_da)
    FROM util_connector AS c WHERE {_IN_WINDOW} GROUP BY c.point
"""
# A charger's peak: the highest sum of its connectors' bucket peaks at one time.
_CHARGER_PEAK = f"""
    SELECT name, max(total) FROM (
        SELECT p.name AS name, sum(c.max_w) AS total
        FROM util_connector AS c JOIN util_points AS p ON p.id = c.point
        WHERE {_IN_WINDOW} AND c.max_w IS NOT NULL
        GROUP BY p.name, c.t
    ) GROUP BY name
"""
_CIRCUITS = f"""
    SELECT c.point, sum(c.sampled_s * {_FRAC}), sum(c.at_limit_s * {_FRAC}),
           sum(c.metered_s * {_FRAC}), sum(coalesce(c.mean_da, 0) / 10.0 * c.metered_s * {_FRAC}),
           sum(c.deferred_dwh / 10.0 * {_FRAC}), min(c.limit_da), max(c.max_da)
    FROM util_circuit AS c WHERE {_IN_WINDOW} GROUP BY c.point
"""


def _bounds(a: float, b: float) -> dict[str, float]:
    return {"a": a, "b": b, "lo": int(a) - _MAX_SPAN_S}


def _view(seconds: dict[str, float], window: float, energy_wh: float) -> dict[str, Any]:
    charging_h = seconds["charging"] / 3600
    return {
        "seconds": {k: round(seconds[k], 1) for k in CATEGORIES},
        "shares": {k: _share(seconds[k], window) for k in CATEGORIES},
        "energy_kwh": round(energy_wh / 1000, 3),
        "mean_power_kw": round(energy_wh / 1000 / charging_h, 2) if charging_h > 0 else None,
    }


def utilization_report(
    conn: sqlite3.Connection, config: Config, start: datetime, end: datetime, now: datetime
) -> dict[str, Any]:
    """The report over [start, end) (UTC), as plain data (the API's and the CLI's).

    Read in one transaction: one snapshot of the store, whatever the recorder writes meanwhile.
    """
    if end <= start:
        raise ReportError("the window is empty: 'from' must be before 'to'")
    conn.execute("BEGIN")
    try:
        return _report(conn, config, start, end, now)
    finally:
        conn.rollback()  # nothing was written but the temporary table


def _report(
    conn: sqlite3.Connection, config: Config, start: datetime, end: datetime, now: datetime
) -> dict[str, Any]:
    a, b = start.timestamp(), end.timestamp()
    window = b - a
    zone = ZoneInfo(config.site.timezone)
    settings = config.storage.utilization
    points = {
        (kind, name, connector): pid
        for pid, kind, name, connector in conn.execute(
            "SELECT id, kind, name, connector FROM util_points"
        )
    }
    coverage = _merge(
        (max(a, s / 1000), min(b, e / 1000))
        for s, e in conn.execute(
            "SELECT started_ms, last_ms FROM util_runs WHERE last_ms > ? AND started_ms < ?",
            (_ms(start), _ms(end)),
        )
    )
    recorded = sum(e - s for s, e in coverage)
    # Each (charger, connector): the last status before the window, then those in it.
    # (Ties in time go by the order written: the index ends with the rowid.)
    events: dict[tuple[str, int], list[tuple[float, str]]] = defaultdict(list)
    for charger in config.chargers:
        for number in range(charger.connectors + 1):  # 0: the charger's connection
            for status, at_ms in conn.execute(
                "SELECT status, at_ms FROM util_status WHERE charger = ? AND connector = ? "
                "AND at_ms < ? ORDER BY at_ms DESC, rowid DESC LIMIT 1",
                (charger.id, number, _ms(start)),
            ):
                events[(charger.id, number)].append((at_ms / 1000, status))
    for charger, connector, status, at_ms in conn.execute(
        "SELECT charger, connector, status, at_ms FROM util_status "
        "WHERE at_ms >= ? AND at_ms < ? ORDER BY at_ms, rowid",
        (_ms(start), _ms(end)),
    ):
        events[(charger, connector)].append((at_ms / 1000, status))
    sessions = _sessions(conn, config, start, end)
    started: dict[tuple[str, int], int] = defaultdict(int)
    for s in sessions["in_window"]:
        started[(s["charger"], s["connector"])] += 1

    # The states from the statuses; the occupied segments go to the database, which splits
    # them into charging and idle against the buckets.
    seconds: dict[tuple[str, int], dict[str, float]] = {}
    status_charging: dict[tuple[str, int], float] = {}
    occupied: list[tuple[int, float, float, int]] = []
    for charger in config.chargers:
        for number in range(1, charger.connectors + 1):
            key = (charger.id, number)
            found = dict.fromkeys(CATEGORIES, 0.0)
            found["occupied"] = 0.0
            status_charging[key] = 0.0
            pid = points.get(("connector", charger.id, number))
            for s0, s1, category, status in _timeline(
                events.get(key, []), events.get((charger.id, 0), []), coverage, a, b
            ):
                found[category] += s1 - s0
                if category == "occupied":
                    charging = status == "Charging"
                    status_charging[key] += (s1 - s0) if charging else 0.0
                    while pid is not None and s0 < s1:
                        occupied.append((pid, s0, min(s1, s0 + _PIECE_S), int(charging)))
                        s0 += _PIECE_S
            seconds[key] = found
    bounds = _bounds(a, b)
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS util_occupied "
        "(point INTEGER, s REAL, e REAL, charging INTEGER)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS temp.util_occupied_by_end ON util_occupied(point, e)")
    conn.execute("DELETE FROM temp.util_occupied")
    conn.executemany("INSERT INTO temp.util_occupied VALUES (?, ?, ?, ?)", occupied)
    in_buckets = {
        point: (charging or 0.0, covered or 0.0)
        for point, charging, covered in conn.execute(_CHARGING, bounds)
    }
    energy = {point: (wh, w, da) for point, wh, w, da in conn.execute(_ENERGY, bounds)}
    charger_peaks = dict(conn.execute(_CHARGER_PEAK, bounds).fetchall())

    connectors_out = []
    chargers_out = []
    total_seconds = dict.fromkeys(CATEGORIES, 0.0)
    total_energy = 0.0
    for charger in config.chargers:
        charger_seconds = dict.fromkeys(CATEGORIES, 0.0)
        charger_energy = 0.0
        charger_sessions = 0
        for number in range(1, charger.connectors + 1):
            key = (charger.id, number)
            pid = points.get(("connector", charger.id, number))
            found = seconds[key]
            charging, covered = in_buckets.get(pid, (0.0, 0.0)) if pid is not None else (0, 0)
            # Charging-status time no bucket covers: the status says it.
            charging += max(0.0, status_charging[key] - covered)
            total_occupied = found.pop("occupied")
            found["charging"] = min(charging, total_occupied)
            found["idle"] = total_occupied - found["charging"]
            dwh, peak_w, peak_da = (
                energy.get(pid, (0.0, None, None)) if pid is not None else (0.0, None, None)
            )
            wh = (dwh or 0.0) / 10  # stored in tenths of a Wh
            count = started[key]
            charger_sessions += count
            for k in CATEGORIES:
                charger_seconds[k] += found[k]
            charger_energy += wh
            connectors_out.append(
                {
                    "charger": charger.id,
                    "connector": number,
                    **_view(found, window, wh),
                    "sessions": count,
                    "peak_power_kw": round(peak_w / 1000, 2) if peak_w is not None else None,
                    "peak_current_a": round(peak_da / 10, 1) if peak_da is not None else None,
                }
            )
        for k in CATEGORIES:
            total_seconds[k] += charger_seconds[k]
        total_energy += charger_energy
        peak = charger_peaks.get(charger.id)
        chargers_out.append(
            {
                "charger": charger.id,
                "circuit": charger.circuit,
                "connectors": charger.connectors,
                **_view(charger_seconds, window * charger.connectors, charger_energy),
                "sessions": charger_sessions,
                "peak_power_kw": round(peak / 1000, 2) if peak is not None else None,
            }
        )
    connector_count = sum(c.connectors for c in config.chargers)
    return {
        "site": config.site.id,
        "timezone": config.site.timezone,
        "from": _iso(start),
        "to": _iso(end),
        "generated_at": _iso(now),
        "window_s": round(window, 1),
        "recorded_s": round(recorded, 1),
        "totals": {
            "connectors": connector_count,
            "sessions": len(sessions["in_window"]),
            **_view(total_seconds, window * connector_count, total_energy),
        },
        "connectors": connectors_out,
        "chargers": chargers_out,
        "circuits": _circuits(conn, config, points, a, b),
        "nights": _nights(sessions, start, end, now, zone, settings.night_starts_at),
    }


def nights_report(
    conn: sqlite3.Connection, config: Config, start: datetime, end: datetime, now: datetime
) -> list[dict[str, Any]]:
    """The nights that start in [start, end), alone (the daily message's)."""
    zone = ZoneInfo(config.site.timezone)
    starts_at = config.storage.utilization.night_starts_at
    sessions = _sessions(conn, config, start, end)
    return _nights(sessions, start, end, now, zone, starts_at)


def _circuits(
    conn: sqlite3.Connection, config: Config, points: dict, a: float, b: float
) -> list[dict[str, Any]]:
    found = {row[0]: row[1:] for row in conn.execute(_CIRCUITS, _bounds(a, b))}
    out = []
    for node in config.circuit_limits_a():
        pid = points.get(("circuit", node, 0))
        sampled, at_limit, metered, current_s, deferred, lowest, peak = found.get(
            pid, (0.0, 0.0, 0.0, 0.0, 0.0, None, None)
        )
        out.append(
            {
                "node": node,
                "lowest_limit_a": round(lowest / 10, 1) if lowest is not None else None,
                "recorded_s": round(sampled, 1),
                "at_limit_s": round(at_limit, 1),
                "share_at_limit": _share(at_limit, sampled),
                "deferred_kwh": round(deferred / 1000, 3),
                "metered_s": round(metered, 1),
                "mean_current_a": round(current_s / metered, 1) if metered > 0 else None,
                "peak_current_a": round(peak / 10, 1) if peak is not None else None,
            }
        )
    return out


def _sessions(
    conn: sqlite3.Connection, config: Config, start: datetime, end: datetime
) -> dict[str, list[dict[str, Any]]]:
    """Ended sessions (and those under way) of the configured connectors that started in the
    window or its nights (a charger no longer configured is no longer reported on)."""
    zone = ZoneInfo(config.site.timezone)
    starts_at = config.storage.utilization.night_starts_at
    known = {(c.id, n) for c in config.chargers for n in range(1, c.connectors + 1)}
    hour, minute = (int(x) for x in starts_at.split(":"))
    nights = nights_between(start, end, time(hour, minute), zone)
    low = min([start, *(n[1] for n in nights)])
    high = max([end, *(n[2] for n in nights)])
    found = [
        {
            "charger": r[0],
            "connector": r[1],
            "started": r[2] / 1000,
            "energy_wh": r[3],
            "need_kwh": r[4],
            "by_departure_wh": r[5],
            "outcome": r[6],
            "short_alarm": bool(r[7]),
            "under_way": False,
        }
        for r in conn.execute(
            "SELECT charger, connector, started_ms, energy_wh, need_kwh, by_departure_wh, "
            "outcome, short_alarm FROM util_sessions WHERE started_ms >= ? AND started_ms < ?",
            (_ms(low), _ms(high)),
        )
    ]
    try:  # the sessions under way (sitectl/sessions.py keeps them across restarts)
        active = conn.execute(
            "SELECT charger, connector, started_at, energy_wh, energy_wanted_kwh "
            "FROM active_sessions"
        ).fetchall()
    except sqlite3.OperationalError:
        active = []
    for charger, connector, started_at, energy_wh, wanted in active:
        moment = datetime.fromisoformat(started_at).timestamp()
        if low.timestamp() <= moment < high.timestamp():
            found.append(
                {
                    "charger": charger,
                    "connector": connector,
                    "started": moment,
                    "energy_wh": energy_wh,
                    "need_kwh": wanted,
                    "by_departure_wh": None,
                    "outcome": "under_way",
                    "short_alarm": False,
                    "under_way": True,
                }
            )
    a, b = start.timestamp(), end.timestamp()
    found = [s for s in found if (s["charger"], s["connector"]) in known]
    return {"all": found, "in_window": [s for s in found if a <= s["started"] < b]}


def _nights(
    sessions: dict[str, list[dict[str, Any]]],
    start: datetime,
    end: datetime,
    now: datetime,
    zone: ZoneInfo,
    starts_at: str,
) -> list[dict[str, Any]]:
    hour, minute = (int(x) for x in starts_at.split(":"))
    out = []
    for night, begin, finish in nights_between(start, end, time(hour, minute), zone):
        mine = [
            s for s in sessions["all"] if begin.timestamp() <= s["started"] < finish.timestamp()
        ]
        with_need = [s for s in mine if s["need_kwh"] is not None and not s["under_way"]]
        departures = {"met": 0, "missed": 0, "unknown": 0}
        for s in mine:
            if not s["under_way"]:
                departures[s["outcome"]] = departures.get(s["outcome"], 0) + 1
        under_way = sum(1 for s in mine if s["under_way"])
        shortfall = 0.0
        for s in with_need:
            delivered = s["by_departure_wh"] if s["by_departure_wh"] is not None else s["energy_wh"]
            shortfall += max(0.0, s["need_kwh"] - delivered / 1000)
        out.append(
            {
                "night": night.isoformat(),
                "start": _iso(begin),
                "end": _iso(finish),
                "complete": finish <= now and under_way == 0,
                "sessions": len(mine),
                "under_way": under_way,
                "energy_kwh": round(sum(s["energy_wh"] for s in mine) / 1000, 3),
                "sessions_with_need": len(with_need),
                "needed_kwh": round(sum(s["need_kwh"] for s in with_need), 3),
                "delivered_for_need_kwh": round(sum(s["energy_wh"] for s in with_need) / 1000, 3),
                "shortfall_kwh": round(shortfall, 3),
                "departures": departures,
                "short_alarms": sum(1 for s in mine if s["short_alarm"]),
            }
        )
    return out
