"""Reports an event asks for (its reportDescriptors), from the grid meter's readings.

Supported: ``USAGE`` (energy per event interval, kWh: the meter's import register, else its
power integrated) and ``DEMAND`` (mean power per interval, kW), historical (the default:
``historical: true``). When a report is due follows the User Guide (§7.5): with ``startInterval``
``s`` (-1: the last interval), ``numIntervals`` ``n`` (-1: all up to ``s``), ``frequency`` ``f``
(-1: ``n``) and ``repeat`` ``r`` (-1: as long as there are intervals), report ``k`` covers the
``n`` intervals up to ``s + k·f`` and is sent once that interval has ended. A forecast
(``historical: false``), other payload types and ``OPEN_INTERVALS`` are noted, not sent.
Pure apart from the clock the caller passes.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from openadr3.entities.models import Event

__all__ = ["DueReport", "MeterHistory", "build_report", "due_reports"]

log = logging.getLogger(__name__)

SUPPORTED = {"USAGE": ("DIRECT_READ", "KWH"), "DEMAND": ("MEAN", "KW")}


@dataclass(frozen=True, slots=True)
class _Sample:
    ts: datetime
    energy_kwh: float | None
    power_kw: float | None


class MeterHistory:
    """The grid meter's recent good readings, thinned to one per ``spacing_s``.

    Args:
        max_age_s: how far back reports can look (older samples are dropped).
        spacing_s: the least time between two kept samples.
        max_gap_s: the longest stretch without a sample that still counts as measured.
    """

    def __init__(
        self, max_age_s: float = 2 * 86400, spacing_s: float = 5.0, max_gap_s: float = 120.0
    ) -> None:
        self.max_age = timedelta(seconds=max_age_s)
        self.spacing = timedelta(seconds=spacing_s)
        self.max_gap = timedelta(seconds=max_gap_s)
        self._samples: deque[_Sample] = deque()

    def add(self, reading: Any) -> None:
        """Keep an ``ok`` reading (`devices.meter.Reading`) if the last kept one is old enough."""
        if not getattr(reading, "ok", False):
            return
        ts = reading.ts
        if self._samples and ts - self._samples[-1].ts < self.spacing:
            return
        energy = reading.energy_import_kwh
        power = reading.power_total_kw
        if power is None and reading.power_kw is not None and None not in reading.power_kw:
            power = sum(reading.power_kw)
        if energy is None and power is None:
            return
        self._samples.append(_Sample(ts, energy, power))
        while self._samples and ts - self._samples[0].ts > self.max_age:
            self._samples.popleft()

    def _around(self, at: datetime) -> tuple[_Sample, _Sample] | None:
        times = [s.ts for s in self._samples]
        i = bisect.bisect_left(times, at)
        if i == 0 or i == len(times):
            if i < len(times) and times[i] == at:
                return self._samples[i], self._samples[i]
            return None
        before, after = self._samples[i - 1], self._samples[i]
        if after.ts - before.ts > self.max_gap:
            return None
        return before, after

    def _energy_at(self, at: datetime) -> float | None:
        pair = self._around(at)
        if pair is None or pair[0].energy_kwh is None or pair[1].energy_kwh is None:
            return None
        before, after = pair
        if after.ts == before.ts:
            return before.energy_kwh
        share = (at - before.ts) / (after.ts - before.ts)
        return before.energy_kwh + share * (after.energy_kwh - before.energy_kwh)

    def energy_kwh(self, start: datetime, end: datetime) -> float | None:
        """Energy imported in [start, end), or None when the meter did not cover it."""
        first, last = self._energy_at(start), self._energy_at(end)
        if first is not None and last is not None and last >= first:
            return last - first
        # No import register (or it stepped back): integrate the power, trapezoid by trapezoid.
        inside = [s for s in self._samples if start <= s.ts <= end and s.power_kw is not None]
        edges = [start, *(s.ts for s in inside), end]
        if not inside or any(b - a > self.max_gap for a, b in itertools.pairwise(edges)):
            return None
        total = 0.0
        points = [(start, inside[0].power_kw), *((s.ts, s.power_kw) for s in inside)]
        points.append((end, inside[-1].power_kw))
        for (t0, p0), (t1, p1) in itertools.pairwise(points):
            total += (p0 + p1) / 2 * (t1 - t0).total_seconds() / 3600
        return total


@dataclass(frozen=True, slots=True)
class DueReport:
    """One report to send: which event, which descriptor, which intervals."""

    key: tuple[str, int, int]  # (event id, descriptor index, report number): sent once
    event_id: str
    program_id: str
    event_name: str
    payload_type: str
    intervals: tuple[tuple[int, datetime, datetime], ...]  # (interval id, start, end)


def _int(descriptor: dict[str, Any], key: str, default: int) -> int:
    value = descriptor.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def due_reports(event: Event, now: datetime, done: set[tuple[str, int, int]]) -> list[DueReport]:
    """The reports of `event` that are due at `now` and not in `done` (unsupported: logged)."""
    out: list[DueReport] = []
    if not event.id or not event.report_descriptors:
        return out
    windows: list[tuple[int, datetime, datetime]] = []
    for interval in event.resolved_intervals():
        period = interval.interval_period
        if period is None or period.period is None:
            return out  # no time to report on (the mapping says why)
        start, end = (datetime.fromtimestamp(p.timestamp(), now.tzinfo) for p in period.period)
        windows.append((interval.id, start, end))
    if not windows:
        return out
    for index, descriptor in enumerate(event.report_descriptors):
        if not isinstance(descriptor, dict):
            continue
        kind = descriptor.get("payloadType")
        unsupported = (
            kind not in SUPPORTED
            or descriptor.get("historical", True) is False
            or descriptor.get("reportIntervals", "INTERVALS") == "OPEN_INTERVALS"
        )
        if unsupported:
            key = (event.id, index, -1)
            if key not in done:
                done.add(key)
                log.info(
                    "OpenADR: event %s asks for a %s report (historical %s, %s): not supported",
                    event.id,
                    kind,
                    descriptor.get("historical", True),
                    descriptor.get("reportIntervals", "INTERVALS"),
                )
            continue
        count = len(windows)
        start = _int(descriptor, "startInterval", -1)
        start = count - 1 if start < 0 else start
        span = _int(descriptor, "numIntervals", -1)
        span = start + 1 if span <= 0 else span
        every = _int(descriptor, "frequency", -1)
        every = span if every <= 0 else every
        repeat = _int(descriptor, "repeat", 1)
        number = 0
        while (repeat < 0 or number < max(repeat, 1)) and start + number * every < count:
            last = start + number * every
            key = (event.id, index, number)
            if key not in done and now >= windows[last][2]:
                covered = tuple(windows[max(0, last - span + 1) : last + 1])
                out.append(
                    DueReport(
                        key,
                        event.id,
                        event.program_id,
                        event.event_name or event.id,
                        kind,
                        covered,
                    )
                )
            number += 1
    return out


def _duration(seconds: float) -> str:
    whole = round(seconds)
    return f"PT{whole}S" if abs(seconds - whole) < 1e-6 else f"PT{seconds:.3f}S"


def build_report(
    due: DueReport, history: MeterHistory, client_name: str, resource_name: str
) -> dict[str, Any] | None:
    """The report's JSON (reportRequest), or None when the meter covered none of its intervals."""
    reading_type, units = SUPPORTED[due.payload_type]
    intervals = []
    for interval_id, start, end in due.intervals:
        energy = history.energy_kwh(start, end)
        if energy is None:
            log.info(
                "OpenADR: no meter data for %s %s..%s: left out of the report",
                due.payload_type,
                start.isoformat(),
                end.isoformat(),
            )
            continue
        hours = (end - start).total_seconds() / 3600
        value = energy if due.payload_type == "USAGE" else energy / hours
        intervals.append(
            {
                "id": interval_id,
                "intervalPeriod": {
                    "start": start.isoformat().replace("+00:00", "Z"),
                    "duration": _duration((end - start).total_seconds()),
                },
                "payloads": [{"type": due.payload_type, "values": [round(value, 4)]}],
            }
        )
    if not intervals:
        return None
    return {
        "programID": due.program_id,
        "eventID": due.event_id,
        "clientName": client_name,
        "reportName": f"{due.payload_type} for {due.event_name}"[:128],
        "payloadDescriptors": [
            {
                "objectType": "REPORT_PAYLOAD_DESCRIPTOR",
                "payloadType": due.payload_type,
                "readingType": reading_type,
                "units": units,
            }
        ],
        "resources": [{"resourceName": resource_name, "intervals": intervals}],
    }
