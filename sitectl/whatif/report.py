"""A run's numbers and its verdict in words; the JSON and CSV files of the same numbers.

`summarize` turns a `Recording` into plain data (what the JSON holds, what the HTML report
shows): per circuit and phase the load against the limit and when each limit held sessions
back (the optimizer's binding rows, `optimizer.binding`, cycle by cycle); per vehicle its
energy, ready time and shortfall; peak power, energy and cost with the tariff and demand
charge; and a verdict — sentences such as "3 of 52 departures short by 41 kWh in total;
transformer-1 binds 22:10–02:40".
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from sitectl.config import GRID, Config, TariffConfig
from sitectl.whatif.record import Recording, VisitRecord

__all__ = ["compare_sentences", "summarize", "write_csv", "write_json"]

#: A node counts as above its limit from this much over it (A; meters and rounding).
OVER_TOLERANCE_A = 0.5
DEMAND_BLOCK_S = 900  # demand charges bill the highest quarter-hour mean


def _name(node: str) -> str:
    return "the grid connection" if node == GRID else node


def _local(at: datetime, zone: ZoneInfo, days: bool) -> str:
    local = at.astimezone(zone)
    return local.strftime("%a %H:%M") if days else local.strftime("%H:%M")


def _intervals(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def price_at(tariff: TariffConfig, local_minute: int) -> float:
    """The energy price at a local minute of the day (the last period started, as the
    planner counts it: before the first start of the day, yesterday's last)."""
    if not tariff.periods:
        return 0.0
    starts = sorted(
        (int(p.start[:2]) * 60 + int(p.start[3:5]), p.eur_per_kwh) for p in tariff.periods
    )
    price = starts[-1][1]
    for start, value in starts:
        if start <= local_minute:
            price = value
    return price


def _vehicle(record: VisitRecord, zone: ZoneInfo, days: bool) -> dict[str, Any]:
    visit = record.visit
    waited = None
    if record.plugged_at is not None:
        waited = (record.plugged_at - visit.arrival).total_seconds() / 60
    if not record.departed:
        status = "still there"
    elif record.bay is None:
        status = "no charger"
    elif record.short:
        status = "short"
    else:
        status = "met"
    margin = None
    if record.ready_at is not None:
        margin = (visit.departure - record.ready_at).total_seconds() / 60
    return {
        "id": visit.id,
        "vehicle": visit.trip.vehicle,
        "charger": record.bay,
        "arrival": visit.arrival.isoformat(),
        "plugged_in": record.plugged_at.isoformat() if record.plugged_at else None,
        "departure": visit.departure.isoformat(),
        "arrival_local": _local(visit.arrival, zone, days),
        "departure_local": _local(visit.departure, zone, days),
        "need_kwh": round(record.need_kwh, 2),
        "energy_kwh": round(record.energy_kwh, 2),
        "shortfall_kwh": round(record.shortfall_kwh, 2) if record.departed else None,
        "ready_at": record.ready_at.isoformat() if record.ready_at else None,
        "ready_local": _local(record.ready_at, zone, days) if record.ready_at else None,
        "ready_margin_min": None if margin is None else round(margin, 1),
        "waited_min": None if waited is None else round(waited, 1),
        "soc_arrival": round(record.arrival_soc, 1),
        "soc_end": None if record.soc_end is None else round(record.soc_end, 1),
        "battery_kwh": record.battery_kwh,
        "status": status,
    }


def _binding(rec: Recording, end: datetime) -> dict[str, list[tuple[datetime, datetime]]]:
    """Per node, when it held a session back (from one cycle to the next)."""
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    cycles = rec.cycles
    for k, cycle in enumerate(cycles):
        until = cycles[k + 1].at if k + 1 < len(cycles) else end
        if until <= cycle.at:
            continue
        for node in {b[0] for b in cycle.binding}:
            spans.setdefault(node, []).append((cycle.at, until))
    # A limit tight for less than a minute (one cycle a control period before the next) is
    # not a limit that binds the depot's night.
    return {
        node: kept
        for node, found in spans.items()
        if (kept := [(a, b) for a, b in _intervals(found) if (b - a).total_seconds() >= 60])
    }


def summarize(
    rec: Recording,
    config: Config,
    alarms: dict[str, int] | None = None,
    label: str = "",
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """A run's numbers, its verdict, and its series (plain data, JSON-ready)."""
    zone = ZoneInfo(config.site.timezone)
    days = rec.steps * rec.step_s > 86400 + 1
    dt_h = rec.step_s / 3600
    end = rec.start + timedelta(seconds=rec.steps * rec.step_s)
    times = [rec.start + timedelta(seconds=k * rec.step_s) for k in range(rec.steps)]
    volts = config.site.nominal_voltage_v
    # Energy and cost.
    tariff = config.tariff
    prices = np.array(
        [price_at(tariff, t.astimezone(zone).hour * 60 + t.astimezone(zone).minute) for t in times]
    )
    grid_kwh = float(rec.grid_kw.sum() * dt_h)
    ev_kwh = float(rec.ev_kw.sum() * dt_h)
    energy_eur = float((rec.grid_kw * prices).sum() * dt_h)
    ev_eur = float((rec.ev_kw * prices).sum() * dt_h)
    block = max(1, round(DEMAND_BLOCK_S / rec.step_s))
    stamps = np.array([t.timestamp() for t in times])
    blocks = np.floor(stamps / DEMAND_BLOCK_S)
    peak15, peak15_at = 0.0, rec.start
    if rec.steps:
        for value in np.unique(blocks):
            mask = blocks == value
            mean = float(rec.grid_kw[mask].sum() / max(block, mask.sum()))
            if mean > peak15:
                peak15 = mean
                peak15_at = times[int(np.flatnonzero(mask)[0])]
    demand_eur = peak15 * tariff.demand_charge_eur_per_kw
    peak_k = int(np.argmax(rec.grid_kw)) if rec.steps else 0
    # Circuits.
    binding = _binding(rec, end)
    circuits: dict[str, Any] = {}
    for n, node in enumerate(rec.nodes):
        load = rec.currents[:, n, :]
        limit = rec.limits_a[n]
        over = load - limit[None, :]
        worst = float(over.max()) if rec.steps else 0.0
        over_steps = int((over > OVER_TOLERANCE_A).any(axis=1).sum())
        peaks = load.max(axis=0) if rec.steps else np.zeros(3)
        peak_times = load.argmax(axis=0) if rec.steps else np.zeros(3, dtype=int)
        kw_limit = rec.kw_limits[n]
        kw = load.sum(axis=1) * volts / 1000
        spans = binding.get(node, [])
        circuits[node] = {
            "limit_a": [round(float(a), 1) for a in limit],
            "limit_kw": kw_limit,
            "peak_a": [round(float(a), 1) for a in peaks],
            "peak_at": [times[int(k)].isoformat() for k in peak_times] if rec.steps else [],
            "peak_kw": round(float(kw.max()), 1) if rec.steps else 0.0,
            "mean_use": round(float((load / np.maximum(limit, 1e-9)).mean()), 3)
            if rec.steps
            else 0.0,
            "max_over_a": round(worst, 2),
            "minutes_over": round(over_steps * rec.step_s / 60, 1),
            "binds": [
                {"from": a.isoformat(), "to": b.isoformat(), "text": _span(a, b, zone, days)}
                for a, b in spans
            ],
            "binds_h": round(sum((b - a).total_seconds() for a, b in spans) / 3600, 2),
        }
    demand_spans = binding.get("demand charge", [])
    # Vehicles.
    vehicles = [_vehicle(r, zone, days) for r in rec.visits]
    departed = [r for r in rec.visits if r.departed]
    short = [r for r in departed if r.short]
    no_bay = [r for r in departed if r.bay is None]
    waited = [
        v for v in vehicles if v["waited_min"] is not None and v["waited_min"] > rec.step_s / 60
    ]
    ready = [r for r in departed if r.ready_at is not None]
    last_ready = max(ready, key=lambda r: r.ready_at) if ready else None  # type: ignore[arg-type,return-value]
    solve = [c.solve_s for c in rec.cycles]
    methods = Counter(c.method for c in rec.cycles)
    summary: dict[str, Any] = {
        "label": label,
        "site": {
            "id": config.site.id,
            "name": config.site.name,
            "timezone": config.site.timezone,
            "chargers": len(config.chargers),
            "connectors": rec.bays,
            "limit_kw": config.site.limit_kw,
            "phase_limit_a": list(config.site.phase_limit_a),
            "plan_step_s": config.control.step_s,
            "horizon_steps": config.control.horizon_steps,
        },
        "run": {
            "start": rec.start.isoformat(),
            "end": end.isoformat(),
            "start_local": _local(rec.start, zone, True),
            "step_s": rec.step_s,
            "steps": rec.steps,
            "wall_s": round(rec.wall_s, 2),
            "cycles": len(rec.cycles),
            "cycle_reasons": dict(rec.reasons),
            "methods": dict(methods),
            "solve_ms_median": round(1000 * statistics.median(solve), 2) if solve else None,
            "solve_ms_max": round(1000 * max(solve), 2) if solve else None,
            "commanded_over_a": round(max((c.commanded_over_a for c in rec.cycles), default=0), 2),
            "alarms": dict(sorted((alarms or {}).items())),
            "warnings": list(warnings or []),
        },
        "departures": {
            "total": len(departed),
            "met": len(departed) - len(short),
            "short": len(short),
            "short_kwh": round(sum(r.shortfall_kwh for r in short), 2),
            "no_charger": len(no_bay),
            "waited": len(waited),
            "still_there": len(rec.visits) - len(departed),
            "need_kwh": round(sum(r.need_kwh for r in departed), 1),
            "delivered_kwh": round(sum(r.energy_kwh for r in departed), 1),
        },
        "energy": {
            "to_vehicles_kwh": round(sum(r.energy_kwh for r in rec.visits), 1),
            "chargers_kwh": round(ev_kwh, 1),
            "building_kwh": round(float(rec.building_kw.sum() * dt_h), 1),
            "grid_kwh": round(grid_kwh, 1),
        },
        "peak": {
            "grid_kw": round(float(rec.grid_kw[peak_k]), 1) if rec.steps else 0.0,
            "grid_at": times[peak_k].isoformat() if rec.steps else None,
            "grid_15min_kw": round(peak15, 1),
            "grid_15min_at": peak15_at.isoformat(),
            "limit_kw": config.site.limit_kw,
        },
        "cost": {
            "currency": "EUR",
            "tariff": bool(tariff.periods),
            "energy_eur": round(energy_eur, 2),
            "chargers_energy_eur": round(ev_eur, 2),
            "demand_charge_eur_per_kw": tariff.demand_charge_eur_per_kw,
            "demand_eur": round(demand_eur, 2),
            "total_eur": round(energy_eur + demand_eur, 2),
        },
        "circuits": circuits,
        "demand_charge_binds": [
            {"from": a.isoformat(), "to": b.isoformat(), "text": _span(a, b, zone, days)}
            for a, b in demand_spans
        ],
        "vehicles": vehicles,
    }
    if last_ready is not None and last_ready.ready_at is not None:
        summary["departures"]["last_ready"] = {
            "id": last_ready.visit.id,
            "at": last_ready.ready_at.isoformat(),
            "local": _local(last_ready.ready_at, zone, days),
            "margin_min": round(
                (last_ready.visit.departure - last_ready.ready_at).total_seconds() / 60, 1
            ),
        }
    summary["verdict"] = _verdict(summary, short, no_bay, zone, days)
    summary["series"] = _series(rec, times)
    return summary


def _span(a: datetime, b: datetime, zone: ZoneInfo, days: bool) -> str:
    return f"{_local(a, zone, days)}–{_local(b, zone, days)}"


def _kw(value: float) -> str:
    return f"{value:,.0f} kW"


def _verdict(
    s: dict[str, Any],
    short: list[VisitRecord],
    no_bay: list[VisitRecord],
    zone: ZoneInfo,
    days: bool,
) -> list[str]:
    """The run in sentences, most important first."""
    out: list[str] = []
    dep = s["departures"]
    if dep["total"] == 0:
        out.append("no vehicle departed within the run")
    elif not short:
        out.append(f"all {dep['total']} departures met their need")
    else:
        worst = sorted(short, key=lambda r: -r.shortfall_kwh)[:3]
        names = ", ".join(f"{r.visit.trip.vehicle} {r.shortfall_kwh:.0f} kWh" for r in worst)
        more = ", …" if len(short) > 3 else ""
        out.append(
            f"{len(short)} of {dep['total']} departures short by {dep['short_kwh']:,.0f} kWh "
            f"in total ({names}{more})"
        )
    if no_bay:
        names = ", ".join(r.visit.trip.vehicle for r in no_bay[:5])
        out.append(f"{len(no_bay)} found no free charger before leaving ({names})")
    if dep["waited"]:
        out.append(f"{dep['waited']} waited for a free charger")
    if dep["still_there"]:
        out.append(f"{dep['still_there']} still plugged in at the end of the run (not judged)")
    binds = [(node, c) for node, c in s["circuits"].items() if c["binds"]]
    binds.sort(key=lambda item: -item[1]["binds_h"])
    for node, c in binds[:4]:
        texts = ", ".join(b["text"] for b in c["binds"][:3])
        more = f" and {len(c['binds']) - 3} more" if len(c["binds"]) > 3 else ""
        out.append(f"{_name(node)} binds {texts}{more} ({c['binds_h']:.1f} h in all)")
    if not binds:
        out.append("no circuit limit held a session back")
    if s["demand_charge_binds"]:
        texts = ", ".join(b["text"] for b in s["demand_charge_binds"][:3])
        out.append(f"the demand charge holds charging at the peak {texts}")
    peak = s["peak"]
    if peak["grid_at"]:
        at = _local(datetime.fromisoformat(peak["grid_at"]), zone, days)
        out.append(
            f"peak {_kw(peak['grid_kw'])} at the grid connection at {at} (contract "
            f"{_kw(peak['limit_kw'])}; highest quarter-hour {_kw(peak['grid_15min_kw'])})"
        )
    over = [(node, c) for node, c in s["circuits"].items() if c["max_over_a"] > OVER_TOLERANCE_A]
    if over:
        for node, c in over[:3]:
            out.append(
                f"{_name(node)} above its limit by up to {c['max_over_a']:.1f} A "
                f"({c['minutes_over']:.1f} min)"
            )
    else:
        out.append("no circuit above its limit")
    energy, cost = s["energy"], s["cost"]
    text = f"{energy['to_vehicles_kwh']:,.0f} kWh into the vehicles, {energy['grid_kwh']:,.0f} kWh"
    text += " from the grid"
    if cost["tariff"] or cost["demand_charge_eur_per_kw"]:
        text += f": {cost['energy_eur']:,.0f} EUR energy"
        if cost["demand_charge_eur_per_kw"]:
            text += (
                f" + {cost['demand_eur']:,.0f} EUR demand charge "
                f"({peak['grid_15min_kw']:,.0f} kW × {cost['demand_charge_eur_per_kw']:g} EUR/kW)"
            )
    out.append(text)
    last = dep.get("last_ready")
    if last is not None:
        margin = last["margin_min"]
        out.append(
            f"the last vehicle ready at {last['local']} ({last['id']}, "
            f"{abs(margin):.0f} min {'before' if margin >= 0 else 'after'} its departure)"
        )
    run = s["run"]
    fallback = run["methods"].get("fallback", 0)
    out.append(
        f"sitectl ran {run['cycles']} control cycles"
        + (f" ({fallback} on the fallback)" if fallback else "")
        + (f", solve median {run['solve_ms_median']:.0f} ms" if run["solve_ms_median"] else "")
    )
    return out


def _series(rec: Recording, times: list[datetime]) -> dict[str, Any]:
    """The time series at the run's step (JSON: rounded)."""

    def r(values: np.ndarray) -> list[float]:
        return [round(float(v), 2) for v in values]

    nodes = {}
    for n, node in enumerate(rec.nodes):
        nodes[node] = {f"l{p + 1}_a": r(rec.currents[:, n, p]) for p in range(3)}
    soc = {
        record.visit.id: [[k, round(s, 2), round(kw, 2)] for k, s, kw in record.trace]
        for record in rec.visits
    }
    return {
        "t": [int(t.timestamp()) for t in times],
        "grid_kw": r(rec.grid_kw),
        "chargers_kw": r(rec.ev_kw),
        "building_kw": r(rec.building_kw),
        "nodes": nodes,
        "soc": soc,
    }


def compare_sentences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What the second run changes against the first, in words."""
    out: list[str] = []
    da, db = a["departures"], b["departures"]
    diff = db["short"] - da["short"]
    kwh = db["short_kwh"] - da["short_kwh"]
    if diff or abs(kwh) >= 0.5:
        out.append(
            f"{b['label']}: {abs(diff)} {'more' if diff > 0 else 'fewer'} departures short "
            f"({db['short']} instead of {da['short']}), {kwh:+,.0f} kWh short in total"
        )
    else:
        out.append(f"{b['label']}: as many departures short as {a['label']} ({da['short']})")
    pa, pb = a["peak"]["grid_15min_kw"], b["peak"]["grid_15min_kw"]
    out.append(f"highest quarter-hour {pb:,.0f} kW instead of {pa:,.0f} kW ({pb - pa:+,.0f} kW)")
    ca, cb = a["cost"]["total_eur"], b["cost"]["total_eur"]
    if a["cost"]["tariff"] or a["cost"]["demand_charge_eur_per_kw"]:
        out.append(f"cost {cb:,.0f} EUR instead of {ca:,.0f} EUR ({cb - ca:+,.0f} EUR)")
    ha = sum(c["binds_h"] for c in a["circuits"].values())
    hb = sum(c["binds_h"] for c in b["circuits"].values())
    out.append(f"limits binding {hb:.1f} h in all instead of {ha:.1f} h")
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    """The summary and series as JSON."""
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False))


def write_csv(path: Path, summary: dict[str, Any]) -> Path:
    """The timeline (one row per step) to `path`, the vehicles to ``<stem>-vehicles.csv``;
    returns the vehicles' file."""
    series = summary["series"]
    zone = ZoneInfo(summary["site"]["timezone"])
    nodes = list(series["nodes"])
    limits = summary["circuits"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["time", "grid_kw", "chargers_kw", "building_kw"]
    for node in nodes:
        header += [f"{node}_l{p}_a" for p in (1, 2, 3)]
        header += [f"{node}_limit_a"]
    writer.writerow(header)
    for k, stamp in enumerate(series["t"]):
        row: list[Any] = [
            datetime.fromtimestamp(stamp, zone).isoformat(timespec="seconds"),
            series["grid_kw"][k],
            series["chargers_kw"][k],
            series["building_kw"][k],
        ]
        for node in nodes:
            row += [series["nodes"][node][f"l{p}_a"][k] for p in (1, 2, 3)]
            row.append(min(limits[node]["limit_a"]))
        writer.writerow(row)
    path.write_text(buffer.getvalue())
    vehicles = path.with_name(path.stem + "-vehicles.csv")
    buffer = io.StringIO()
    columns = [
        "id",
        "vehicle",
        "charger",
        "arrival",
        "plugged_in",
        "departure",
        "need_kwh",
        "energy_kwh",
        "shortfall_kwh",
        "ready_at",
        "ready_margin_min",
        "waited_min",
        "soc_arrival",
        "soc_end",
        "status",
    ]
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    for vehicle in summary["vehicles"]:
        writer.writerow({k: "" if vehicle.get(k) is None else vehicle[k] for k in columns})
    vehicles.write_text(buffer.getvalue())
    return vehicles
