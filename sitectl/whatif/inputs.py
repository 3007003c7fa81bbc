"""What a what-if starts from: the site's own YAML with the planner's changes, a tariff, a
building-load profile, and the timetable's vehicles made known to the fleet.

- ``--set PATH=VALUE`` changes the YAML data before it is validated, by the same rules as an
  environment override (`sitectl.config.apply_env_overrides`: ``site.limit_kw=1000``,
  ``chargers.DC-03.max_power_kw=150`` addresses a list item by its id or position, values are
  YAML scalars or flow lists such as ``[400, 400, 380]``). The result goes through
  `load_config` like the file itself, so a bad path or value is reported like a bad line of
  the file, naming the ``--set`` it came from.
- The tariff is the configuration's, or a YAML file holding a ``tariff:`` section (or the
  section's fields alone).
- The building load is a CSV of ``time`` and ``kw`` (and optionally ``circuit``, default the
  grid connection): times of day (a daily profile, repeated, linear between points and
  across midnight) or date-times (one series; before and after it, its first and last
  value). It is taken as balanced over the three phases at the nominal voltage.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from sitectl.config import (
    ENV_DELIMITER,
    ENV_PREFIX,
    GRID,
    Config,
    ConfigError,
    TariffConfig,
    VehicleConfig,
    load_config,
)
from sitectl.whatif import physics
from sitectl.whatif.timetable import Trip
from sitectl.yamlfile import YamlError, load_yaml

__all__ = [
    "BuildingLoad",
    "InputError",
    "Series",
    "load_site",
    "load_tariff",
    "read_building",
    "sim_tag",
    "with_vehicles",
]

_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class InputError(ValueError):
    """An input a planner can get wrong; the message says what and where."""


def _env_names(sets: list[str]) -> dict[str, tuple[str, str]]:
    """``--set`` items as environment override names -> (value, the item as written)."""
    out: dict[str, tuple[str, str]] = {}
    for item in sets:
        path, sep, value = item.partition("=")
        path = path.strip()
        if not sep or not path or not _PATH.match(path) or ".." in path or path.endswith("."):
            raise InputError(
                f"--set '{item}': expected PATH=VALUE with a dotted path, "
                "e.g. --set site.limit_kw=1000"
            )
        name = ENV_PREFIX + ENV_DELIMITER.join(path.split("."))
        out[name] = (value.strip(), item)
    return out


def load_site(
    path: Path, sets: list[str], environ: Mapping[str, str] | None = None
) -> tuple[Config, list[str]]:
    """The site configuration with the ``--set`` changes; returns it and its warnings.

    Args:
        path: the site's YAML file.
        sets: ``PATH=VALUE`` items, applied in order over the environment's overrides.
        environ: the environment (default ``os.environ``), as for ``sitectl run``.

    Raises:
        InputError: the rendered problems (each ``--set`` named where it caused one).
    """
    names = _env_names(sets)
    env = {k: v for k, v in (os.environ if environ is None else environ).items()}
    env.update({name: value for name, (value, _) in names.items()})
    try:
        config, warnings = load_config(path, environ=env)
    except ConfigError as exc:
        problems = []
        for problem in exc.problems:
            source = problem.source or ""
            name = source.removeprefix("environment ")
            if name in names:
                problem = dataclasses.replace(problem, source=f"--set {names[name][1]}")
            problems.append(problem)
        raise InputError(ConfigError(problems, exc.filename).render()) from None
    return config, [str(w) for w in warnings]


def load_tariff(path: Path) -> TariffConfig:
    """A tariff from a YAML file (a ``tariff:`` section, or its fields at the top).

    Raises:
        InputError: unreadable, or not a valid tariff (the field named).
    """
    try:
        data, _ = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    except YamlError as exc:
        raise InputError(f"{path} line {exc.line}: YAML syntax error: {exc.message}") from None
    if isinstance(data, dict) and "tariff" in data:
        data = data["tariff"]
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a tariff (periods:, demand_charge_eur_per_kw:)")
    try:
        return TariffConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"]) or "tariff"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InputError(f"{path}: tariff.{where}: {message}") from None


def sim_tag(vehicle: str) -> str:
    """The id tag a simulated vehicle starts its sessions with (binds it to its fleet entry)."""
    return f"whatif:{vehicle}"


def with_vehicles(config: Config, trips: list[Trip]) -> Config:
    """The configuration with every timetable vehicle in ``fleet.vehicles``, each with the id
    tag its simulated sessions start with (so the fleet binds them as it binds real ones)."""
    vehicles = {v.id: v for v in config.fleet.vehicles}
    for trip in trips:
        tag = sim_tag(trip.vehicle)
        found = vehicles.get(trip.vehicle)
        if found is None:
            # The plan assumes the simulated batteries' own DC curve (`physics`), none when
            # they take their peak to full.
            taper = physics.DC_TAPER_SOC if physics.DC_TAPER_SOC < 100 else None
            vehicles[trip.vehicle] = VehicleConfig(
                id=trip.vehicle,
                id_tags=[tag],
                battery_kwh=trip.battery,
                taper_from_soc=taper,
                taper_share_at_full=physics.DC_TAPER_FLOOR,
            )
        elif tag not in found.id_tags:
            update: dict[str, object] = {"id_tags": [*found.id_tags, tag]}
            if found.battery_kwh is None:
                update["battery_kwh"] = trip.battery
            vehicles[trip.vehicle] = found.model_copy(update=update)
    fleet = config.fleet.model_copy(update={"vehicles": list(vehicles.values())})
    return config.model_copy(update={"fleet": fleet})


@dataclass
class Series:
    """One circuit's load: points (time, kW), linear between them.

    ``daily``: times are minutes of the local day (repeated every day). Else POSIX seconds:
    with ``period_s`` the points lie in ``[origin_s, origin_s + period_s)`` and repeat with
    that period (a recorded history, `sitectl.whatif.stored`); without it, one series.
    """

    daily: bool
    times: list[float] = field(default_factory=list)  # minute of day, or POSIX seconds
    kw: list[float] = field(default_factory=list)
    period_s: float | None = None
    origin_s: float = 0.0


class BuildingLoad:
    """Non-EV load per circuit over time (kW), from a CSV; none when built empty."""

    def __init__(
        self, series: dict[str, Series] | None = None, zone: ZoneInfo | None = None
    ) -> None:
        self.series = series or {}
        self.zone = zone or ZoneInfo("UTC")

    @property
    def circuits(self) -> list[str]:
        """The circuits that carry a building load."""
        return list(self.series)

    def kw(self, circuit: str, at: datetime) -> float:
        """The load on one circuit at a moment (kW)."""
        series = self.series.get(circuit)
        if series is None or not series.times:
            return 0.0
        if series.daily:
            local = at.astimezone(self.zone)
            x = local.hour * 60 + local.minute + local.second / 60
            times, values = series.times, series.kw
            k = bisect.bisect_right(times, x)
            if k == 0 or k == len(times):  # across midnight: last point to first
                t0, v0 = times[-1] - (1440 if k == 0 else 0), values[-1]
                t1, v1 = times[0] + (1440 if k == len(times) else 0), values[0]
            else:
                t0, v0, t1, v1 = times[k - 1], values[k - 1], times[k], values[k]
        elif series.period_s is not None:
            # Moved by whole periods into the recorded window, linear across its ends.
            period = series.period_s
            x = series.origin_s + (at.timestamp() - series.origin_s) % period
            times, values = series.times, series.kw
            k = bisect.bisect_right(times, x)
            if k == 0 or k == len(times):
                t0, v0 = times[-1] - (period if k == 0 else 0), values[-1]
                t1, v1 = times[0] + (period if k == len(times) else 0), values[0]
            else:
                t0, v0, t1, v1 = times[k - 1], values[k - 1], times[k], values[k]
        else:
            x = at.timestamp()
            times, values = series.times, series.kw
            k = bisect.bisect_right(times, x)
            if k == 0:
                return values[0]
            if k == len(times):
                return values[-1]
            t0, v0, t1, v1 = times[k - 1], values[k - 1], times[k], values[k]
        if t1 <= t0:
            return v0
        return v0 + (v1 - v0) * (x - t0) / (t1 - t0)


def read_building(path: Path, config: Config) -> BuildingLoad:
    """A building-load CSV (``time``, ``kw``, optional ``circuit``).

    Raises:
        InputError: unreadable, a bad row (line and field named), an unknown circuit or one
            that carries nothing but chargers.
    """
    zone = ZoneInfo(config.site.timezone)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    lines = text.splitlines()
    dialect: type[csv.Dialect] | csv.Dialect = csv.excel
    with contextlib.suppress(csv.Error):
        dialect = csv.Sniffer().sniff(lines[0] if lines else "", delimiters=",;\t")
    reader = csv.reader(lines, dialect=dialect)
    header = [h.strip().lower() for h in next(reader, [])]
    if "time" not in header or "kw" not in header:
        raise InputError(f"{path} line 1: the header needs the columns time and kw")
    circuits = {GRID: None, **{c.id: c for c in config.circuits}}
    series: dict[str, Series] = {}
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        where = f"{path} line {number}"
        if len(cells) != len(header):
            raise InputError(f"{where}: {len(cells)} fields where the header has {len(header)}")
        row = {h: c.strip() for h, c in zip(header, cells, strict=True)}
        circuit = row.get("circuit") or GRID
        if circuit not in circuits:
            raise InputError(
                f"{where}: unknown circuit '{circuit}' (circuits: {', '.join(circuits)})"
            )
        node = circuits[circuit]
        if node is not None and node.chargers_only:
            raise InputError(f"{where}: circuit '{circuit}' is chargers_only: no building load")
        try:
            kw = float(row["kw"])
        except ValueError:
            raise InputError(f"{where}: kw '{row['kw']}' is not a number") from None
        if not 0 <= kw < 1e6:
            raise InputError(f"{where}: kw {kw:g} is not a load (0 or more)")
        stamp = row["time"]
        match = _HHMM.match(stamp)
        if match:
            daily, x = True, int(match.group(1)) * 60 + float(match.group(2))
        else:
            try:
                moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                raise InputError(
                    f"{where}: time '{stamp}' is neither a time of day (07:30) nor a date-time"
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            daily, x = False, moment.timestamp()
        found = series.setdefault(circuit, Series(daily))
        if found.daily != daily:
            raise InputError(f"{where}: mixes times of day and date-times")
        if found.times and x <= found.times[-1]:
            raise InputError(f"{where}: time '{stamp}' is not after the row before")
        found.times.append(x)
        found.kw.append(kw)
    if not series:
        raise InputError(f"{path}: no rows")
    return BuildingLoad(series, zone)
