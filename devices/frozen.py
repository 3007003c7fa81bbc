"""Stuck-value detection: a meter whose readings stopped moving while power flows. No I/O here.

A gateway that serves cached registers after losing its meter, or a meter whose measuring part
hangs, answers every poll on time with well-formed, plausible values: the ones it had when it
stopped. Only the history of the readings shows it. Two rules, each needing time to pass:

1. **Identical registers.** Every value register (``Sample.words``) unchanged over at least
   ``min_polls`` consecutive polls spanning at least ``frozen_after_s``, while some phase current
   exceeds ``min_current_a`` (or, for a device without current registers, ``|power_total|``
   exceeds ``min_power_kw``). A real meter shows noise in the last digits of its currents,
   powers, voltages and frequency whenever current flows. A meter reading exactly the same with
   no current (an idle site) is legitimately constant and never judged.
2. **Energy counters not advancing.** Neither energy counter (import nor export, whichever the
   device has) changed while ``|power_total|`` stayed above ``min_power_kw`` for at least
   ``frozen_after_s`` and the energy that power carries exceeds ``counter_margin`` × the
   counter's resolution. With both counters either one moving will do, whichever the direction:
   a site exporting (PV) advances only export, and a meter with an overridden sign advances the
   register the other way round. With one counter only, only power in its direction counts.

The detector is fed one ``Sample`` per poll that delivered values (errors in between neither
reset nor extend a run) and says why the latest one is frozen, or ``None``. A frozen reading is
``stale`` in ``devices.meter``: the data is old, however new the poll.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_FROZEN_AFTER_S", "FreezeDetector", "FreezeRules", "Sample"]

#: Default time without any change before a meter carrying current is called frozen.
DEFAULT_FROZEN_AFTER_S = 30.0

PhaseTuple = tuple[float | None, float | None, float | None]


@dataclass(frozen=True, slots=True)
class FreezeRules:
    """Thresholds of the stuck-value rules.

    Args:
        frozen_after_s: Least time without change (rule 1) or with power flowing and the
            counters still (rule 2) before a reading is frozen.
        min_polls: Least number of identical polls for rule 1 (a slow poll period must still
            show the registers unchanged more than once).
        min_current_a: A phase current above this means current flows (rule 1).
        min_power_kw: ``|power_total|`` above this means power flows (rule 2, and rule 1 for
            devices without current registers).
        counter_margin: The energy carried must exceed this many counter steps (rule 2).
        min_resolution_kwh: The least counter step assumed: a meter may update its energy
            registers in internal steps coarser than the register's own resolution (and the
            step of a float counter is unknown).
    """

    frozen_after_s: float = DEFAULT_FROZEN_AFTER_S
    min_polls: int = 3
    min_current_a: float = 1.0
    min_power_kw: float = 1.0
    counter_margin: float = 2.0
    min_resolution_kwh: float = 0.1


@dataclass(frozen=True, slots=True)
class Sample:
    """What the rules need of one poll.

    Args:
        mono: ``time.monotonic()`` of the poll.
        words: The words of every value register, in map order (helper registers such as
            SunSpec scale factors left out).
        current_a: Phase currents, ``None`` if the device has none.
        power_total_kw: Total active power, ``None`` if unknown.
        energy_kwh: ``(import, export)`` counters, ``None`` each if the device lacks it.
        resolution_kwh: One step of the coarser energy counter, ``None`` if unknown.
    """

    mono: float
    words: tuple[int, ...]
    current_a: PhaseTuple | None = None
    power_total_kw: float | None = None
    energy_kwh: tuple[float | None, float | None] = (None, None)
    resolution_kwh: float | None = None


class FreezeDetector:
    """Keeps the runs of unchanged values of one device and judges each new sample.

    Args:
        rules: The thresholds.
        max_gap_s: A gap between two samples longer than this restarts the energy rule (what
            the counter did meanwhile cannot be told from the two ends); default no limit.
    """

    def __init__(self, rules: FreezeRules | None = None, max_gap_s: float = math.inf) -> None:
        self.rules = rules or FreezeRules()
        self.max_gap_s = max_gap_s
        self.reset()

    def reset(self) -> None:
        """Forget every run (e.g. the device was replaced or its map changed)."""
        # Rule 1: the words of the current run, when it started, how many polls it has.
        self._words: tuple[int, ...] | None = None
        self._words_since = 0.0
        self._words_polls = 0
        # Rule 2: the counters of the current run, the previous sample, the energy the
        # measured power carried meanwhile and for how long power flowed.
        self._counters: tuple[float | None, float | None] | None = None
        self._prev: Sample | None = None
        self._carried_kwh = 0.0
        self._flowing_s = 0.0

    def observe(self, sample: Sample) -> str | None:
        """Feed the next sample; return why it is frozen, or ``None`` if it is not."""
        reasons = [r for r in (self._same_words(sample), self._still_counters(sample)) if r]
        return "frozen: " + "; ".join(reasons) if reasons else None

    # Internals.

    def _same_words(self, s: Sample) -> str | None:
        rules = self.rules
        if s.words != self._words:
            self._words, self._words_since, self._words_polls = s.words, s.mono, 1
            return None
        self._words_polls += 1
        span = s.mono - self._words_since
        if self._words_polls < rules.min_polls or span < rules.frozen_after_s:
            return None
        currents = [abs(c) for c in s.current_a or () if c is not None]
        if currents:
            if max(currents) <= rules.min_current_a:
                return None  # idle: a constant reading is what an idle meter shows
            flow = f"{max(currents):.4g} A flows"
        elif s.power_total_kw is not None and abs(s.power_total_kw) > rules.min_power_kw:
            flow = f"{s.power_total_kw:.4g} kW flows"
        else:
            return None
        return (
            f"every value register unchanged for {span:.3g} s ({self._words_polls} "
            f"polls) while {flow}; a live meter's last digits move (stuck meter, or a gateway "
            "serving cached registers?)"
        )

    def _still_counters(self, s: Sample) -> str | None:
        rules = self.rules
        prev, self._prev = self._prev, s
        if s.power_total_kw is None or s.energy_kwh == (None, None):
            self._counters = None
            return None
        if (
            s.energy_kwh != self._counters
            or prev is None
            or prev.power_total_kw is None
            or s.mono - prev.mono > self.max_gap_s
        ):
            self._counters, self._carried_kwh, self._flowing_s = s.energy_kwh, 0.0, 0.0
            return None
        flows = _counted_flow(s.energy_kwh, rules.min_power_kw)
        p0, p1 = abs(prev.power_total_kw), abs(s.power_total_kw)
        if flows(prev.power_total_kw) and flows(s.power_total_kw):
            # Only intervals with power flowing at both ends count: a real meter has a starting
            # current and its counter need not move for a CT offset at an idle site.
            dt = max(s.mono - prev.mono, 0.0)
            self._carried_kwh += (p0 + p1) / 2 * dt / 3600
            self._flowing_s += dt
        step = max(s.resolution_kwh or 0.0, rules.min_resolution_kwh)
        if (
            not flows(s.power_total_kw)
            or self._flowing_s < rules.frozen_after_s
            or self._carried_kwh <= rules.counter_margin * step
        ):
            return None
        imp, exp = s.energy_kwh
        counters = ", ".join(
            f"{name} {value:.7g} kWh"  # 7 digits: a float32 counter has no more
            for name, value in (("import", imp), ("export", exp))
            if value is not None
        )
        return (
            f"energy counters unchanged ({counters}) over {self._flowing_s:.3g} s with "
            f"power flowing (now {s.power_total_kw:.4g} kW): {self._carried_kwh:.3g} kWh should "
            f"have been counted, counter step {step:.3g} kWh"
        )


def _counted_flow(
    energy_kwh: tuple[float | None, float | None], low: float
) -> Callable[[float], bool]:
    """Whether a power must move a counter: with both counters either direction does; with
    only one, only the direction it counts (an import-only map at a site exporting PV)."""
    imp, exp = energy_kwh
    if imp is not None and exp is not None:
        return lambda p: abs(p) > low
    if imp is not None:
        return lambda p: p > low
    return lambda p: p < -low
