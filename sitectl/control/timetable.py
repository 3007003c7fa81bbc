"""A fleet timetable for depots without a VDV 463 system: vehicle, departure, target (#19.3).

``sitectl fleet import FILE.csv`` sends the rows to ``POST /api/fleet/timetable``; each row
becomes a request for its vehicle exactly as a VDV 463 ChargingRequest does (`Fleet.request`):
applied at once to a vehicle charging now, else when it plugs in. Rules:

- ``departure`` is a local time of day (``05:10``: its next occurrence in the site's time
  zone) or a date-time with an offset; it must lie ahead, within a week.
- ``target`` is a SoC (``90%``; the vehicle needs ``battery_kwh``) or energy (``250 kWh``,
  or a bare number of kWh).
- The timetable is all or nothing: one bad row refuses it, naming the row and the field
  (``entries.3.target``), like a command.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sitectl.config import Config
from sitectl.control.fleet import Fleet, VehicleRequest
from sitectl.control.horizon import Horizon
from sitectl.uplink.commands import MAX_AHEAD, CommandError, _first_error

__all__ = ["TimetableEntry", "TimetableUpload", "apply_timetable"]

_SOC = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_KWH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:kWh)?\s*$", re.IGNORECASE)


class TimetableEntry(BaseModel):
    """One row: which vehicle leaves when, charged to what."""

    model_config = ConfigDict(extra="forbid", strict=True)

    vehicle: str = Field(min_length=1, max_length=64, description="A fleet.vehicles id.")
    departure: str = Field(
        min_length=4, max_length=40, description="'HH:MM' local, or a date-time with offset."
    )
    target: str = Field(
        min_length=1, max_length=20, description="'90%' (SoC) or '250 kWh' / '250' (energy)."
    )


class TimetableUpload(BaseModel):
    """``POST /api/fleet/timetable``: the rows of a timetable."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: At most this many rows per upload: the longest rows must fit in the API's 64 KiB body.
    entries: list[TimetableEntry] = Field(min_length=1, max_length=300)


def apply_timetable(
    fleet: Fleet, config: Config, payload: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """Check every row, then hand them to the fleet.

    Returns:
        ``{"ok": true, "applied": n, "vehicles": [...]}``, or ``{"ok": false, "error": ...,
        "field": ...}`` naming the first bad row and field.
    """
    try:
        upload = TimetableUpload.model_validate(payload)
        horizon = Horizon(config)
        requests = [_request(fleet, horizon, k, e, now) for k, e in enumerate(upload.entries)]
    except ValidationError as exc:
        message, where = _first_error(exc)
        return {"ok": False, "error": message, "field": where}
    except CommandError as exc:
        return {"ok": False, "error": exc.message, "field": exc.field}
    for request in requests:
        fleet.request(request)
    return {"ok": True, "applied": len(requests), "vehicles": [r.vehicle_id for r in requests]}


def _request(
    fleet: Fleet, horizon: Horizon, index: int, entry: TimetableEntry, now: datetime
) -> VehicleRequest:
    where = f"entries.{index}"
    vehicle = fleet.index.by_id.get(entry.vehicle)
    if vehicle is None:
        raise CommandError(
            f"row {index + 1}: unknown vehicle '{entry.vehicle}'", f"{where}.vehicle"
        )
    if re.fullmatch(r"\d{1,2}:\d\d", entry.departure.strip()):
        try:
            departure = horizon.next_time(entry.departure.strip(), now)
        except ValueError:
            departure = None
    else:
        try:
            departure = datetime.fromisoformat(entry.departure.replace("Z", "+00:00"))
        except ValueError:
            departure = None
        if departure is not None and departure.tzinfo is None:
            raise CommandError(
                f"row {index + 1}: departure '{entry.departure}' needs a UTC offset",
                f"{where}.departure",
            )
    if departure is None:
        raise CommandError(
            f"row {index + 1}: departure '{entry.departure}' is neither 'HH:MM' nor a date-time",
            f"{where}.departure",
        )
    if departure <= now or departure - now > MAX_AHEAD:
        raise CommandError(
            f"row {index + 1}: departure {departure.isoformat()} is not within the next "
            f"{MAX_AHEAD.days} days",
            f"{where}.departure",
        )
    soc = _SOC.match(entry.target)
    energy = _KWH.match(entry.target)
    request = VehicleRequest(
        vehicle.id, f"urn:sitectl:timetable:{vehicle.id}", departure=departure, received_at=now
    )
    if soc is not None:
        value = float(soc.group(1))
        if value > 100:
            raise CommandError(
                f"row {index + 1}: target {value:g} % is not a SoC", f"{where}.target"
            )
        if vehicle.battery_kwh is None:
            raise CommandError(
                f"row {index + 1}: a SoC target needs battery_kwh for vehicle '{vehicle.id}'",
                f"{where}.target",
            )
        request.max_target_soc = value
    elif energy is not None and 0 < float(energy.group(1)) <= 10_000:
        request.energy_kwh = float(energy.group(1))
    else:
        raise CommandError(
            f"row {index + 1}: target '{entry.target}' is neither '90%' nor '250 kWh'",
            f"{where}.target",
        )
    return request
