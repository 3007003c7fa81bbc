"""The fleet timetable a what-if runs: who arrives when, leaves when, and needs what.

A CSV with a header row (case and column order free, a spreadsheet's BOM and ``;`` or tab
separators accepted)::

    vehicle,arrival,departure,energy_kwh,arrival_soc,target_soc,battery_kwh,charger
    BUS-01,18:30,05:10,,20,90,420,any
    BUS-02,19:05,05:40,250,,,,DC-03
    VAN-07,17:45,07:00,35,,,60,AC-11/2

- ``arrival`` and ``departure`` are local times of day (the row repeats every simulated day;
  a departure at or before the arrival is the next morning) or date-times (``…T05:10``, in
  the site's zone unless they carry an offset: one visit only).
- The need is ``energy_kwh`` (energy into the vehicle), or ``arrival_soc`` and
  ``target_soc`` with the battery's ``battery_kwh`` (from the row or the vehicle's
  ``fleet.vehicles`` entry). Not both.
- ``charger`` is a charger id (``DC-03``), one of its connectors (``AC-11/2``), ``any`` (or
  empty), ``dc`` or ``ac``: the first free connector (of that kind) when it arrives, in
  configuration order, bays that no row names first. A vehicle finding none waits for one.
- Optional columns describe the vehicle: ``max_kw`` (what its battery takes on DC at low
  SoC), ``phases`` (1 or 3: its on-board AC charger) and ``max_a`` (its AC current per phase).

Without a CSV, the ``fleet.vehicles`` of the configuration make one row each: arrival at
``--arrival``, departure at the vehicle's ``departure`` (else ``control.default_departure``),
the need from its ``energy_kwh`` or its ``max_target_soc`` from ``--arrival-soc``.

Every problem names its line and column; the timetable is all or nothing.
"""

from __future__ import annotations

import contextlib
import csv
import re
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sitectl.config import Config

__all__ = [
    "TimetableError",
    "Trip",
    "Visit",
    "add_like",
    "fleet_trips",
    "read_timetable",
    "visits",
]

COLUMNS = ("vehicle", "arrival", "departure")
OPTIONAL = (
    "energy_kwh",
    "arrival_soc",
    "target_soc",
    "battery_kwh",
    "charger",
    "max_kw",
    "phases",
    "max_a",
)
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
#: A vehicle's battery when only its need is known: the need fills this share of it.
NEED_SHARE_OF_BATTERY = 0.7
DEFAULT_ARRIVAL_SOC = 20.0


class TimetableError(ValueError):
    """A timetable that cannot be used; the message names the file, line and column."""


@dataclass(frozen=True, slots=True)
class Trip:
    """One timetable row: a vehicle's visit to the depot (daily, or once)."""

    vehicle: str
    arrival: str  # "HH:MM" (daily) or an ISO date-time (once)
    departure: str
    energy_kwh: float | None = None
    arrival_soc: float | None = None
    target_soc: float | None = None
    battery_kwh: float | None = None
    charger: str | None = None  # None: any; "ID" or "ID/connector"
    max_kw: float | None = None
    phases: int = 3
    max_a: float | None = None
    line: int = 0  # where it came from (0: not from a file)

    @property
    def need_kwh(self) -> float:
        """The energy it needs in all (kWh into the vehicle)."""
        if self.energy_kwh is not None:
            return self.energy_kwh
        assert self.battery_kwh is not None and self.target_soc is not None
        return max(0.0, (self.target_soc - (self.arrival_soc or 0.0)) / 100 * self.battery_kwh)

    @property
    def battery(self) -> float:
        """Its battery (kWh): as given, else sized so the need is `NEED_SHARE_OF_BATTERY`."""
        if self.battery_kwh is not None:
            return self.battery_kwh
        return max(20.0, round(self.need_kwh / NEED_SHARE_OF_BATTERY))

    @property
    def start_soc(self) -> float:
        """Its SoC on arrival (%): as given, else what leaves room for the need."""
        if self.arrival_soc is not None:
            return self.arrival_soc
        room = 100.0 - 100.0 * self.need_kwh / self.battery
        return max(0.0, min(DEFAULT_ARRIVAL_SOC, room))


@dataclass(frozen=True, slots=True)
class Visit:
    """One stay of a vehicle at the depot, in simulated time."""

    id: str  # "BUS-01#2": the vehicle and its visit number
    trip: Trip
    arrival: datetime
    departure: datetime


def _fail(where: str, message: str) -> TimetableError:
    return TimetableError(f"{where}: {message}")


def _number(where: str, name: str, text: str, low: float, high: float) -> float | None:
    if not text:
        return None
    try:
        value = float(text.replace(",", ".")) if text.count(",") == 1 else float(text)
    except ValueError:
        raise _fail(where, f"{name} '{text}' is not a number") from None
    if not low <= value <= high or value != value:
        raise _fail(where, f"{name} {value:g} is outside {low:g}–{high:g}")
    return value


def _when(where: str, name: str, text: str) -> str:
    if _HHMM.match(text):
        return text
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(
            where, f"{name} '{text}' is neither a time of day (05:10) nor a date-time"
        ) from None
    return text


def _charger(where: str, text: str, config: Config) -> str | None:
    if text.lower() in ("", "any", "*"):
        return None
    if text.lower() in ("ac", "dc"):
        kind = text.lower()
        if not any(c.kind == kind for c in config.chargers):
            raise _fail(where, f"charger '{text}': the site has no {kind.upper()} charger")
        return kind
    charger_id, _, connector = text.partition("/")
    charger = config.charger(charger_id)
    if charger is None:
        known = ", ".join(c.id for c in config.chargers[:8])
        more = ", …" if len(config.chargers) > 8 else ""
        raise _fail(where, f"unknown charger '{charger_id}' (chargers: {known}{more})")
    if connector and (not connector.isdigit() or not 1 <= int(connector) <= charger.connectors):
        raise _fail(
            where,
            f"charger '{charger_id}' has no connector '{connector}' (it has {charger.connectors})",
        )
    return text


def check_trip(trip: Trip, where: str, config: Config) -> Trip:
    """A row made whole with its configured vehicle, or the problem with it."""
    vehicle = next((v for v in config.fleet.vehicles if v.id == trip.vehicle), None)
    if trip.battery_kwh is None and vehicle is not None and vehicle.battery_kwh is not None:
        trip = replace(trip, battery_kwh=vehicle.battery_kwh)
    soc_given = trip.arrival_soc is not None or trip.target_soc is not None
    if trip.energy_kwh is not None and soc_given:
        raise _fail(where, "give energy_kwh or arrival_soc and target_soc, not both")
    if trip.energy_kwh is None:
        if trip.target_soc is None:
            raise _fail(where, "no need: give energy_kwh, or arrival_soc and target_soc")
        if trip.arrival_soc is None:
            raise _fail(where, "target_soc needs arrival_soc")
        if trip.battery_kwh is None:
            raise _fail(
                where,
                f"a SoC target needs battery_kwh (in the row or in fleet.vehicles "
                f"'{trip.vehicle}')",
            )
        if trip.target_soc < trip.arrival_soc:
            raise _fail(
                where,
                f"target_soc {trip.target_soc:g} % is below arrival_soc {trip.arrival_soc:g} %",
            )
    if (
        trip.battery_kwh is not None
        and trip.energy_kwh is not None
        and trip.energy_kwh > trip.battery_kwh
    ):
        raise _fail(
            where,
            f"energy_kwh {trip.energy_kwh:g} is more than the battery ({trip.battery_kwh:g} kWh)",
        )
    if trip.phases not in (1, 3):
        raise _fail(where, f"phases {trip.phases} is neither 1 nor 3")
    if trip.arrival == trip.departure:
        raise _fail(where, "arrival and departure are the same")
    return trip


def read_timetable(path: Path, config: Config) -> list[Trip]:
    """The rows of a timetable CSV, checked against the configuration.

    Raises:
        TimetableError: unreadable, a column missing, or a bad row (line and field named).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets often write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise TimetableError(f"cannot read {path}: {exc}") from None
    lines = text.splitlines()
    dialect: type[csv.Dialect] | csv.Dialect = csv.excel
    with contextlib.suppress(csv.Error):
        dialect = csv.Sniffer().sniff(lines[0] if lines else "", delimiters=",;\t")
    reader = csv.reader(lines, dialect=dialect)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise TimetableError(f"{path}: empty file") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise TimetableError(f"{path} line 1: the header has no column {', '.join(missing)}")
    unknown = [h for h in header if h and h not in COLUMNS + OPTIONAL]
    if unknown:
        raise TimetableError(
            f"{path} line 1: unknown column {', '.join(unknown)} "
            f"(known: {', '.join(COLUMNS + OPTIONAL)})"
        )
    trips: list[Trip] = []
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue  # a blank line
        where = f"{path} line {number}"
        if len(cells) != len(header):
            raise _fail(where, f"{len(cells)} fields where the header has {len(header)}")
        row = {h: c.strip() for h, c in zip(header, cells, strict=True)}
        for column in COLUMNS:
            if not row[column]:
                raise _fail(where, f"no {column}")
        phases = _number(where, "phases", row.get("phases", ""), 1, 3)
        trip = Trip(
            vehicle=row["vehicle"],
            arrival=_when(where, "arrival", row["arrival"]),
            departure=_when(where, "departure", row["departure"]),
            energy_kwh=_number(where, "energy_kwh", row.get("energy_kwh", ""), 0, 10_000),
            arrival_soc=_number(where, "arrival_soc", row.get("arrival_soc", ""), 0, 100),
            target_soc=_number(where, "target_soc", row.get("target_soc", ""), 0, 100),
            battery_kwh=_number(where, "battery_kwh", row.get("battery_kwh", ""), 1, 10_000),
            charger=_charger(where, row.get("charger", ""), config),
            max_kw=_number(where, "max_kw", row.get("max_kw", ""), 1, 2_000),
            phases=int(phases) if phases is not None else 3,
            max_a=_number(where, "max_a", row.get("max_a", ""), 6, 500),
            line=number,
        )
        trips.append(check_trip(trip, where, config))
    if not trips:
        raise TimetableError(f"{path}: no rows")
    return trips


def fleet_trips(config: Config, arrival: str, arrival_soc: float) -> list[Trip]:
    """One daily row per configured fleet vehicle (when no timetable is given).

    Raises:
        TimetableError: no vehicles, or a vehicle whose need cannot be worked out.
    """
    if not config.fleet.vehicles:
        raise TimetableError("no timetable: give --timetable FILE.csv, or configure fleet.vehicles")
    trips = []
    for vehicle in config.fleet.vehicles:
        where = f"fleet.vehicles '{vehicle.id}'"
        departure = vehicle.departure or config.control.default_departure
        if vehicle.max_target_soc is not None and vehicle.battery_kwh is not None:
            trip = Trip(
                vehicle.id,
                arrival,
                departure,
                arrival_soc=min(arrival_soc, vehicle.max_target_soc),
                target_soc=vehicle.max_target_soc,
                battery_kwh=vehicle.battery_kwh,
            )
        elif vehicle.energy_kwh is not None:
            trip = Trip(
                vehicle.id,
                arrival,
                departure,
                energy_kwh=vehicle.energy_kwh,
                battery_kwh=vehicle.battery_kwh,
            )
        else:
            raise _fail(where, "no need: give it energy_kwh, or battery_kwh and max_target_soc")
        trips.append(check_trip(trip, where, config))
    return trips


def add_like(trips: list[Trip], count: int, like: str) -> list[Trip]:
    """`count` more vehicles with the rows of `like` (ids ``like+1`` …), on any charger.

    Raises:
        TimetableError: no such vehicle in the timetable.
    """
    rows = [t for t in trips if t.vehicle == like]
    if not rows:
        known = ", ".join(sorted({t.vehicle for t in trips})[:8])
        raise TimetableError(f"--like: no vehicle '{like}' in the timetable (vehicles: {known})")
    taken = {t.vehicle for t in trips}
    added: list[Trip] = []
    number = 0
    while len({t.vehicle for t in added}) < count:
        number += 1
        name = f"{like}+{number}"
        if name in taken:
            continue
        added += [replace(t, vehicle=name, charger=None, line=0) for t in rows]
    return trips + added


def _at(text: str, day: date, zone: ZoneInfo) -> datetime:
    hours, minutes = (int(x) for x in text.split(":"))
    return datetime.combine(day, time(hours, minutes), zone)


def _moment(text: str, zone: ZoneInfo) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def visits(trips: list[Trip], start: datetime, end: datetime, zone: ZoneInfo) -> list[Visit]:
    """Every stay in ``[start, end)``, by arrival; a stay begun before `start` starts at it.

    Daily rows repeat on every local day; a departure at or before the arrival's time of day
    is the next day's. A vehicle that would arrive again while still there (its rows
    overlap) keeps the earlier stay only.

    Raises:
        TimetableError: a one-off row whose departure is not after its arrival.
    """
    found: list[tuple[datetime, datetime, Trip]] = []
    first = start.astimezone(zone).date() - timedelta(days=1)
    days = (end - start).days + 2
    for trip in trips:
        if _HHMM.match(trip.arrival):
            for offset in range(days + 1):
                arrival = _at(trip.arrival, first + timedelta(days=offset), zone)
                if _HHMM.match(trip.departure):
                    departure = _at(trip.departure, arrival.date(), zone)
                    if departure <= arrival:
                        departure = _at(trip.departure, arrival.date() + timedelta(days=1), zone)
                else:
                    departure = _moment(trip.departure, zone)
                found.append((arrival, departure, trip))
        else:
            arrival = _moment(trip.arrival, zone)
            if _HHMM.match(trip.departure):
                departure = _at(trip.departure, arrival.astimezone(zone).date(), zone)
                if departure <= arrival:
                    departure += timedelta(days=1)
            else:
                departure = _moment(trip.departure, zone)
            if departure <= arrival:
                raise TimetableError(
                    f"line {trip.line}: {trip.vehicle} departs ({trip.departure}) before it "
                    f"arrives ({trip.arrival})"
                )
            found.append((arrival, departure, trip))
    found.sort(key=lambda f: (f[0], f[2].vehicle))
    out: list[Visit] = []
    busy_until: dict[str, datetime] = {}
    counts: dict[str, int] = {}
    for arrival, departure, trip in found:
        if departure <= start or arrival >= end or departure <= arrival:
            continue
        busy = busy_until.get(trip.vehicle)
        if busy is not None and busy > arrival:
            continue  # still at the depot from its previous stay
        busy_until[trip.vehicle] = departure
        counts[trip.vehicle] = counts.get(trip.vehicle, 0) + 1
        out.append(
            Visit(f"{trip.vehicle}#{counts[trip.vehicle]}", trip, max(arrival, start), departure)
        )
    return out
