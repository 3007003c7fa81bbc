"""External energy prices (issue #20.2): price windows from a named source, e.g. OpenADR PRICE.

A source (``openadr:<program>``) publishes its whole set of windows at once, like limit sources
on `sitectl.limits.LimitBoard`; the control loop's tariff (`sitectl.control.horizon.Horizon.tariff`)
takes an external price wherever a window covers a step and the configured tariff elsewhere.
Plain data, no I/O; used from the event loop only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

__all__ = ["PriceBoard", "PriceWindow"]


@dataclass(frozen=True, slots=True)
class PriceWindow:
    """One energy price over a time window, from one source.

    Attributes:
        start: when it begins (UTC, aware).
        end: when it ends (UTC, aware), or None: until replaced.
        price_per_kwh: currency per kWh (the tariff's unit); may be negative (market prices
            are), never NaN or infinite.
        source: who set it, e.g. "openadr:<program>".
        ref: the source's own id for it (event id and interval id).
    """

    start: datetime
    end: datetime | None
    price_per_kwh: float
    source: str
    ref: str = ""

    def __post_init__(self) -> None:
        if not math.isfinite(self.price_per_kwh):
            raise ValueError(f"price_per_kwh: must be finite, got {self.price_per_kwh!r}")
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValueError("start/end: timezone-aware datetimes required")
        if self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")

    def covers(self, at: datetime) -> bool:
        """Whether the price applies at `at`."""
        return self.start <= at and (self.end is None or at < self.end)


class PriceBoard:
    """Every price source's current windows; sources publish, the tariff reads."""

    def __init__(self) -> None:
        self._sources: dict[str, tuple[PriceWindow, ...]] = {}

    def publish(self, source: str, windows: Iterable[PriceWindow]) -> None:
        """Replace `source`'s windows (an empty set withdraws them)."""
        windows = tuple(windows)
        for window in windows:
            if window.source != source:
                raise ValueError(f"price from {window.source!r} published as {source!r}")
        if windows:
            self._sources[source] = windows
        else:
            self._sources.pop(source, None)

    def windows(self, start: datetime, end: datetime) -> list[PriceWindow]:
        """Every window overlapping [start, end), sources in name order."""
        return [
            window
            for name in sorted(self._sources)
            for window in self._sources[name]
            if window.start < end and (window.end is None or window.end > start)
        ]
