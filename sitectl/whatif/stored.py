"""The building load of a running site, from its store (``--building store:PATH``).

The utilization recorder (`sitectl.utilization.recorder`) keeps, per node and bucket (1 min,
rolled up later), the mean measured current of the node's highest phase while its meter was
trusted, and per connector the energy its register counted (else its measured power). The non-EV
load of a metered node is what its meter measured less what the chargers under it drew, on
the highest phase, taken as balanced:

    non-EV kW = 3 · U · (I_node, highest phase − max over phases Σ I_chargers on it) / 1000

each charger's mean power over the bucket as current on its site phases (`phase_rotation`;
a DC charger's counts its output: its input is more by its efficiency). With a balanced
non-EV load the highest phase is the one the chargers load most, and this is exact; with an
unbalanced one it is more than the real load, the safe side for a what-if. A node's *own*
load (what `BuildingLoad` holds) is that less the non-EV loads of the metered circuits below
it; a node without a meter has none of its own.

The last whole days recorded (at most `MAX_DAYS`, at least one) make the profile, repeated: a
simulated moment is moved by whole periods into them, so a week recorded replays its
weekdays and one day recorded is a daily profile. Buckets without a trusted measurement are
left out (the load is linear between the nearest recorded ones, as between a CSV's rows).
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

from sitectl.config import GRID, Config
from sitectl.control.snapshot import efficiency
from sitectl.utilization.report import ReportError, open_store
from sitectl.utilization.store import MINUTE_S
from sitectl.whatif.inputs import BuildingLoad, InputError, Series

__all__ = ["MAX_DAYS", "STORE_PREFIX", "read_stored_building"]

#: ``--building store:PATH`` names a store instead of a CSV.
STORE_PREFIX = "store:"
#: The most days of history a profile replays.
MAX_DAYS = 7
_DAY_S = 86400


def read_stored_building(path: Path, config: Config, max_days: int = MAX_DAYS) -> BuildingLoad:
    """The non-EV load per node from a site's store (see the module docstring).

    Args:
        path: the running site's store (``storage.path``), opened read-only.
        config: the site simulated (its tree says which chargers are under which node).
        max_days: the most whole days of the latest history to replay.

    Raises:
        InputError: no store, no utilization data in it, or no trusted meter measurement.
    """
    try:
        conn = open_store(path)
    except ReportError as exc:
        raise InputError(f"--building store:{path}: {exc}") from None
    try:
        circuits = _node_buckets(conn)
        rows = _connector_rows(conn)
    except sqlite3.DatabaseError as exc:
        raise InputError(f"--building store:{path}: cannot read it ({exc})") from None
    finally:
        conn.close()
    chargers = {c.id: c for c in config.chargers}
    known = {GRID, *(c.id for c in config.circuits)}
    # The nodes each charger draws through.
    paths = {c.id: config.circuit_path(c.circuit) for c in config.chargers}
    volts = config.site.nominal_voltage_v
    # node -> {bucket start: the chargers' current under it per site phase × seconds}
    drawn: dict[str, dict[int, list[float]]] = {}
    for charger_id, t, span, energy_dwh, sampled, mean_w in rows:
        charger = chargers.get(charger_id)
        if charger is None:
            continue  # a charger the site (as simulated) does not have
        # Its mean power over the bucket: measured all through, its measured power (at the
        # moments the meter is read); else from its energy register (it counts while a
        # measurement is late too), else its power over the seconds measured.
        if sampled >= span and mean_w is not None:
            kw = mean_w / 1000
        elif energy_dwh:
            kw = energy_dwh / 10 * 3.6 / span
        elif sampled and mean_w is not None:
            kw = mean_w / 1000 * sampled / span
        else:
            continue
        phases = list(charger.site_phases[: charger.phases])
        amps = kw * 1000 / efficiency(charger) / (len(phases) * volts)
        for node in paths[charger_id]:
            into = drawn.setdefault(node, {}).setdefault(t, [0.0, 0.0, 0.0])
            for phase in phases:
                into[phase] += amps * span
    # node -> {(t, span): the non-EV kW under it (own and below)}
    under: dict[str, dict[tuple[int, int], float]] = {}
    for (node, t, span), amps in circuits.items():
        if node not in known:
            continue  # a circuit the site (as simulated) does not have
        into = drawn.get(node, {})
        ev = [0.0, 0.0, 0.0]
        for te in range(t, t + span, MINUTE_S):
            for phase, amp_s in enumerate(into.get(te, (0.0, 0.0, 0.0))):
                ev[phase] += amp_s / span
        # The highest phase carries the non-EV load (balanced) and the most EV current.
        under.setdefault(node, {})[(t, span)] = max(0.0, 3 * volts * (amps - max(ev)) / 1000)
    if not under:
        raise InputError(
            f"--building store:{path}: no trusted meter measurement of the grid connection or "
            "of a circuit recorded (storage.utilization on, a meter configured?)"
        )
    end = max(t + span for buckets in under.values() for t, span in buckets)
    start = min(t for buckets in under.values() for t, _ in buckets)
    days = max(1, min(max_days, math.floor((end - start) / _DAY_S)))
    origin = end - days * _DAY_S
    # Every metered node's nearest metered descendants: their loads are not its own.
    parents = config.circuit_parent()
    below: dict[str, list[str]] = {node: [] for node in under}
    for node in under:
        above = parents.get(node)
        while above is not None and above not in under:
            above = parents.get(above)
        if above is not None:
            below[above].append(node)
    series: dict[str, Series] = {}
    for node, buckets in under.items():
        if node != GRID and _chargers_only(config, node):
            continue
        found = Series(daily=False, period_s=days * _DAY_S, origin_s=origin)
        for (t, span), kw in sorted(buckets.items()):
            if t < origin:
                continue
            children = [under[child].get((t, span)) for child in below[node]]
            own = kw - sum(c for c in children if c is not None)
            found.times.append(t + span / 2)  # the bucket's mean stands at its middle
            found.kw.append(max(0.0, own))
        if found.times:
            series[node] = found
    return BuildingLoad(series, ZoneInfo(config.site.timezone))


def _chargers_only(config: Config, node: str) -> bool:
    return any(c.id == node and c.chargers_only for c in config.circuits)


def _node_buckets(conn: sqlite3.Connection) -> dict[tuple[str, int, int], float]:
    """(node, bucket start, span) -> the mean measured current of its highest phase (A)."""
    rows = conn.execute(
        "SELECT p.name, c.t, c.span_s, c.mean_da FROM util_circuit c "
        "JOIN util_points p ON p.id = c.point "
        "WHERE c.metered_s > 0 AND c.mean_da IS NOT NULL"
    )
    return {(name, t, span): mean_da / 10 for name, t, span, mean_da in rows}


def _connector_rows(conn: sqlite3.Connection) -> list[tuple[str, int, int, int, int, float]]:
    """Per charger and bucket: (charger, start, span, energy dWh, sampled s, mean W), its
    connectors together (their energy summed, their power over the longest sampled)."""
    rows = conn.execute(
        "SELECT p.name, c.t, c.span_s, sum(c.energy_dwh), max(c.sampled_s), "
        "sum(c.mean_w * c.sampled_s) * 1.0 / nullif(max(c.sampled_s), 0) "
        "FROM util_connector c JOIN util_points p ON p.id = c.point "
        "GROUP BY p.name, c.t, c.span_s"
    )
    return list(rows)
