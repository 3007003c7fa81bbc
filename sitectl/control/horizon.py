"""The planning horizon in wall-clock terms: its steps, when a car leaves on it, what a step costs.

The grid is ``control.step_s`` up to ``near_horizon_s``, then ``far_step_s`` to the end
(`ControlConfig.step_durations_s`, issue #18). Only step 0 is dispatched and the plan is solved
again every period, so far steps only need to say what is still to come.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from optimizer.problem import Tariff
from sitectl.config import Config
from sitectl.prices import PriceWindow

__all__ = ["Horizon"]


class Horizon:
    """Step boundaries of the planning grid, and the site's local time for departures and prices."""

    def __init__(self, config: Config) -> None:
        self.control = config.control
        self.tariff_config = config.tariff
        self.zone = ZoneInfo(config.site.timezone)
        self.durations_s = config.control.step_durations_s()
        #: End of every step, seconds from now.
        self.ends_s = list(itertools.accumulate(self.durations_s))

    def end(self, now: datetime) -> datetime:
        """The end of the last step of a plan made at ``now``."""
        return now + timedelta(seconds=self.ends_s[-1])

    def next_time(self, hhmm: str, now: datetime) -> datetime:
        """The next local ``HH:MM`` after ``now`` (tomorrow's if today's has passed)."""
        hours, minutes = (int(x) for x in hhmm.split(":"))
        local = now.astimezone(self.zone)
        candidate = datetime.combine(local.date(), time(hours, minutes), self.zone)
        if candidate <= local:
            candidate += timedelta(days=1)
        return candidate

    def departure_step(self, seconds_left: float) -> tuple[int, float]:
        """The first step at which a car leaving in ``seconds_left`` is gone, and the share
        of its last step it is still there (1.0 on step 0: see `Session.last_step_share`)."""
        ends = self.ends_s
        if seconds_left > ends[-1]:
            # Beyond the horizon: count on in steps of the last length.
            last = ends[-1] - (ends[-2] if len(ends) > 1 else 0.0)
            return len(ends) + math.ceil((seconds_left - ends[-1]) / last), 1.0
        step = bisect.bisect_left(ends, seconds_left)
        if step == 0:
            return 1, 1.0
        start = ends[step - 1]
        share = (seconds_left - start) / (ends[step] - start)
        return step + 1, min(1.0, max(share, 1e-3))

    def tariff(self, now: datetime, external: Sequence[PriceWindow] = ()) -> Tariff:
        """The tariff as one price per step from ``now``.

        ``external`` (e.g. OpenADR PRICE events, `sitectl.prices`) replaces the configured price
        wherever one of its windows covers a moment; where none does, the configured tariff
        holds, and without one the mean of the external prices on the horizon (a neutral price:
        the end of a price series must not look like free energy).
        """
        tariff = self.tariff_config
        starts = sorted(
            ((int(p.start[:2]) * 60 + int(p.start[3:5])), p.eur_per_kwh) for p in tariff.periods
        )
        horizon_end = self.end(now)
        external = [w for w in external if w.start < horizon_end and (w.end is None or w.end > now)]
        if not starts and not external:
            return Tariff(demand_charge_per_kw=tariff.demand_charge_eur_per_kw)

        def price_at(offset_s: float) -> float | None:
            at = now + timedelta(seconds=offset_s)
            for window in external:
                if window.covers(at):
                    return window.price_per_kwh
            if not starts:
                return None
            local = at.astimezone(self.zone)
            minute = local.hour * 60 + local.minute
            price = starts[-1][1]  # before the first start of the day: yesterday's last
            for start, value in starts:
                if start <= minute:
                    price = value
            return price

        # A step longer than step_s gets the time-weighted mean of its step_s slices: a price
        # change inside an hour-long far step moves part of its hour, not all or nothing.
        fine = float(self.control.step_s)
        steps: list[list[float | None]] = []
        offset = 0.0
        for duration in self.durations_s:
            slices = max(1, round(duration / fine))
            width = duration / slices
            steps.append([price_at(offset + k * width) for k in range(slices)])
            offset += duration
        known = [p for step in steps for p in step if p is not None]
        if not known:  # external windows only between the slice points
            return Tariff(demand_charge_per_kw=tariff.demand_charge_eur_per_kw)
        neutral = sum(known) / len(known)
        prices = [sum(neutral if p is None else p for p in step) / len(step) for step in steps]
        return Tariff(tuple(prices), tariff.demand_charge_eur_per_kw)
