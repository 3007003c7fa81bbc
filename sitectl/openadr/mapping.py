"""OpenADR 3 events -> limit windows and prices: pure functions, no I/O.

An event's intervals (the library's `Event.resolved_intervals`: each interval inherits the
event's ``intervalPeriod`` start and duration) become:

- ``IMPORT_CAPACITY_LIMIT``: a hard `GridLimit` on the configured node, in kW (units KW, W, MW;
  no units: KW) or A per phase (units AMPS);
- ``SIMPLE`` levels 1-3: the kW of ``simple_levels_kw`` (level 0 is normal operation: none);
- ``PRICE``: a `PriceWindow` (units KWH or MWH; the currency must be the tariff's);
- ``EXPORT_CAPACITY_LIMIT``: noted, not applied (a charging depot does not export);
- anything else: noted as not understood.

Bad input never lifts a limit: a value that is not a finite number >= 0, an interval without a
start or duration, an unknown unit, a level without a kW, are *problems*; the caller keeps the
event's last good windows while its limit payloads have problems (`EventSignals.limit_problem`).
Start ``0001-01-01`` means now and duration ``P9999Y`` means open-ended (User Guide); looping
(an event ``duration`` longer than its intervals) is not followed.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import openadr3
from openadr3.entities.models import Event, Interval

from sitectl.config import OpenAdrConfig
from sitectl.limits import GridLimit
from sitectl.prices import PriceWindow

__all__ = ["SPEC_NOW", "EventSignals", "coverage_end", "map_event", "payload_units"]

LIMIT_TYPES = ("IMPORT_CAPACITY_LIMIT", "SIMPLE")
#: A start on this day means "now" (the spec's intervalPeriod description).
SPEC_NOW = "0001-01-01"
_KW_PER_UNIT = {None: 1.0, "KW": 1.0, "W": 0.001, "MW": 1000.0}
_KWH_PER_UNIT = {None: 1.0, "KWH": 1.0, "WH": 0.001, "MWH": 1000.0}
# "P9999Y" is the spec's infinity; the library adds it to the start (beyond year 9999: an
# error), so it is read as this, and any end so far out as open-ended.
_FOREVER = re.compile(r"^P\d{4,}Y$")
_OPEN_AFTER = timedelta(days=365 * 50)


@dataclass
class EventSignals:
    """What one event says, as sitectl's windows, and what could not be used."""

    event_id: str
    name: str
    limits: list[GridLimit] = field(default_factory=list)
    prices: list[PriceWindow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # understood, deliberately not applied
    limit_problem: bool = False  # a limit payload was bad: keep the last good limits
    event: Event | None = None


def payload_units(*descriptor_lists: Any) -> dict[str, tuple[str | None, str | None]]:
    """payloadType -> (units, currency) from payloadDescriptors, the first list winning."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for descriptors in descriptor_lists:
        for descriptor in descriptors or ():
            payload_type = getattr(descriptor, "payload_type", None)
            if isinstance(payload_type, str) and payload_type not in found:
                units = getattr(descriptor, "units", None)
                currency = getattr(descriptor, "currency", None)
                found[payload_type] = (
                    units.upper() if isinstance(units, str) else None,
                    currency.upper() if isinstance(currency, str) else None,
                )
    return found


def _prepare(raw: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A copy with 'now' starts and infinite durations made readable for the library."""
    raw = copy.deepcopy(raw)
    periods = [raw.get("intervalPeriod")]
    intervals = raw.get("intervals")
    if isinstance(intervals, list):
        periods += [i.get("intervalPeriod") for i in intervals if isinstance(i, dict)]
    for period in periods:
        if not isinstance(period, dict):
            continue
        start = period.get("start")
        if isinstance(start, str) and start.startswith(SPEC_NOW):
            period["start"] = now.isoformat()
        duration = period.get("duration")
        if isinstance(duration, str) and _FOREVER.match(duration):
            period["duration"] = "P100Y"
    return raw


def _number(value: Any) -> float | None:
    """A finite number (JSON number or numeric string), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, ArithmeticError):
        return None
    return number if math.isfinite(number) else None


def _window(interval: Interval) -> tuple[datetime, datetime | None] | str:
    period = interval.interval_period
    if period is None or period.start is None:
        return "no start"
    if period.duration is None or period.period is None:
        return "no duration"
    first, last = (p.timestamp() for p in period.period)
    if last <= first:
        return "a duration of zero"
    start = datetime.fromtimestamp(first, UTC)
    if last - first >= _OPEN_AFTER.total_seconds():
        return start, None
    return start, datetime.fromtimestamp(last, UTC)


def map_event(
    raw: dict[str, Any],
    *,
    program: str,
    program_descriptors: Any,
    config: OpenAdrConfig,
    source: str,
    now: datetime,
) -> EventSignals:
    """One event (its raw JSON) as limit windows and prices for `source`."""
    event_id = raw.get("id") if isinstance(raw.get("id"), str) else "?"
    out = EventSignals(event_id, str(raw.get("eventName") or event_id))
    try:
        event = openadr3.coerce(_prepare(raw, now))
        if not isinstance(event, Event):
            raise TypeError(f"objectType {raw.get('objectType')!r}")
        intervals = event.resolved_intervals()
    except Exception as exc:  # the library meets garbage in many ways; none may stop us
        out.problems.append(f"malformed event ({type(exc).__name__}: {exc})"[:300])
        out.limit_problem = True
        return out
    out.event = event
    if not intervals:
        out.problems.append("no intervals")
        out.limit_problem = True
        return out
    units = payload_units(event.payload_descriptors, program_descriptors)
    for interval in intervals:
        window = _window(interval)
        where = f"interval {interval.id}"
        if isinstance(window, str):
            out.problems.append(f"{where}: {window}")
            if any(p.type in LIMIT_TYPES for p in interval.payloads):
                out.limit_problem = True
            continue
        start, end = window
        for payload in interval.payloads:
            _payload(
                out,
                payload.type,
                payload.values,
                (start, end, where, interval.id),
                units,
                config=config,
                program=program,
                source=source,
            )
    return out


def _payload(
    out: EventSignals,
    kind: str,
    values: list[Any],
    at: tuple[datetime, datetime | None, str, int],
    units: dict[str, tuple[str | None, str | None]],
    *,
    config: OpenAdrConfig,
    program: str,
    source: str,
) -> None:
    start, end, where, interval_id = at
    value = _number(values[0]) if len(values) == 1 else None
    ref = f"{out.event_id}#{interval_id}"
    span = f"{start:%H:%M}-{end:%H:%M}" if end is not None else f"from {start:%H:%M}"
    label = f"OpenADR {program}: event '{out.name}' {span}"
    if kind == "IMPORT_CAPACITY_LIMIT":
        unit = units.get(kind, (None, None))[0]
        if value is None or value < 0:
            out.problems.append(f"{where}: import capacity {values!r} is not a number >= 0")
            out.limit_problem = True
        elif unit in ("AMPS", "A"):
            out.limits.append(
                GridLimit(
                    config.node,
                    source,
                    start,
                    end,
                    limit_a=(value,) * 3,
                    reason=f"{label}: import capacity {value:g} A",
                    ref=ref,
                )
            )
        elif unit in _KW_PER_UNIT:
            kw = value * _KW_PER_UNIT[unit]
            out.limits.append(
                GridLimit(
                    config.node,
                    source,
                    start,
                    end,
                    limit_kw=kw,
                    reason=f"{label}: import capacity {kw:g} kW",
                    ref=ref,
                )
            )
        else:
            out.problems.append(f"{where}: import capacity in unknown units '{unit}'")
            out.limit_problem = True
    elif kind == "SIMPLE":
        level = int(value) if value is not None and value == int(value) else None
        if level is None or not 0 <= level <= 3:
            out.problems.append(f"{where}: SIMPLE level {values!r} is not 0, 1, 2 or 3")
            out.limit_problem = True
        elif level > 0 and level not in config.simple_levels_kw:
            out.problems.append(f"{where}: SIMPLE level {level} has no kW in simple_levels_kw")
            out.limit_problem = True
        elif level > 0:
            kw = config.simple_levels_kw[level]
            out.limits.append(
                GridLimit(
                    config.node,
                    source,
                    start,
                    end,
                    limit_kw=kw,
                    reason=f"{label}: SIMPLE level {level} = {kw:g} kW",
                    ref=ref,
                )
            )
    elif kind == "PRICE":
        unit, currency = units.get(kind, (None, None))
        if value is None:
            out.problems.append(f"{where}: price {values!r} is not a number")
        elif unit not in _KWH_PER_UNIT:
            out.problems.append(f"{where}: price per unknown unit '{unit}'")
        elif currency is not None and currency != config.currency.upper():
            out.problems.append(f"{where}: price in {currency}, the tariff is {config.currency}")
        else:
            price = value / _KWH_PER_UNIT[unit]
            out.prices.append(PriceWindow(start, end, price, source, ref))
    elif kind == "EXPORT_CAPACITY_LIMIT":
        out.notes.append(f"{where}: export capacity limit not applied (sitectl does not export)")
    else:
        out.problems.append(f"{where}: payload type '{kind}' not understood")


def coverage_end(limits: list[GridLimit], now: datetime) -> datetime:
    """Until when the windows cover the present without a gap (a heartbeat program's rule).

    Returns ``now`` when nothing covers it, and ``datetime.max`` (UTC) when the cover is
    open-ended.
    """
    forever = datetime.max.replace(tzinfo=UTC)
    covered = now
    while True:
        reach = [
            forever if w.end is None else w.end
            for w in limits
            if w.start <= covered and (w.end is None or w.end > covered)
        ]
        if not reach:
            return covered
        furthest = max(reach)
        if furthest == forever:
            return forever
        covered = furthest
