"""Times for the utilization report: what a user types, and the site's nights.

A moment is an ISO date (``2026-03-01``: local midnight of that date in the site's time zone),
an ISO date and time (with an offset or ``Z``; without one it is local), ``now``, ``today`` and
``yesterday`` (local midnights), or a time relative to now: ``-7d``, ``-12h``, ``-30m``, ``-2w``
(``+`` for ahead).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["MOMENT_PATTERN", "local_midnight", "night_bounds", "nights_between", "parse_moment"]

#: What `parse_moment` reads, as a regular expression (the API documents it).
MOMENT_PATTERN = (
    r"^(now|today|yesterday|[+-]\d+(\.\d+)?[mhdw]|\d{4}-\d{2}-\d{2}"
    r"([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?)$"
)

_RELATIVE = re.compile(r"([+-])\s*(\d+(?:\.\d+)?)\s*([mhdw])")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The furthest a relative time may reach (a typo like -70000d is an error, not year 1827).
_MAX_RELATIVE_S = 20 * 366 * 86400


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The start of a local date, in UTC (the first moment of it, across DST changes)."""
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def parse_moment(text: str, zone: ZoneInfo, now: datetime) -> datetime:
    """A moment as the user wrote it (see the module), in UTC.

    Raises:
        ValueError: with a message that says what is accepted.
    """
    value = text.strip()
    lowered = value.lower()
    if lowered == "now":
        return now.astimezone(UTC)
    if lowered in ("today", "yesterday"):
        today = now.astimezone(zone).date()
        return local_midnight(today - timedelta(days=lowered == "yesterday"), zone)
    match = _RELATIVE.fullmatch(lowered)
    if match:
        sign, amount, unit = match.groups()
        seconds = float(amount) * _UNITS[unit]
        if seconds > _MAX_RELATIVE_S:
            raise ValueError(f"'{text}' reaches more than 20 years away")
        return (now + timedelta(seconds=seconds if sign == "+" else -seconds)).astimezone(UTC)
    if len(value) > 64:
        raise ValueError(f"'{value[:20]}…' is too long for a time")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return local_midnight(date.fromisoformat(value), zone)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(
            f"'{text}' is not a time: give an ISO date (2026-03-01), date and time "
            "(2026-03-01T18:00, local unless it has an offset or Z), now, today, yesterday, "
            "or a relative time like -7d, -12h, -30m, -2w"
        ) from None


def night_bounds(night: date, starts_at: time, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC start and end of the night named by the local date it starts on."""
    start = datetime.combine(night, starts_at, zone).astimezone(UTC)
    end = datetime.combine(night + timedelta(days=1), starts_at, zone).astimezone(UTC)
    return start, end


def nights_between(
    start: datetime, end: datetime, starts_at: time, zone: ZoneInfo
) -> list[tuple[date, datetime, datetime]]:
    """The nights that start in [start, end): (local date, UTC start, UTC end)."""
    out = []
    day = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date()
    while day <= last:
        begin, finish = night_bounds(day, starts_at, zone)
        if start <= begin < end:
            out.append((day, begin, finish))
        day += timedelta(days=1)
    return out
