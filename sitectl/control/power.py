"""The kW rows of the circuit tree with the meters' measured active power (issue #16.10).

The optimizer takes a node's power as ``U · Σ I`` over its loads and sessions (one current per
load serves both the per-phase rows and the kW row; `optimizer.problem.Node`), with the highest
measured voltage. For the non-EV load that is the current estimate: measured current minus the
EV draw under the meter. Where the meter also reports active power, the non-EV *power* is
measured too: ``P_meter − P_EV``, with the EV power at its lower bound (the chargers' fresh
``lo`` currents at the lowest voltage and a power factor of `EV_POWER_FACTOR`), so that the
building is never made smaller than it is.

Both estimates are kept and the larger wins, per metered node: a kW limit is on real power,
which the meter measures, while the current estimate is the breaker's (what flows, reactive part
included). With a building at a power factor below 1, ``U · Σ I`` is the larger and nothing
changes; when it is the smaller (phasor sums: the EV and building currents are not in phase, so
the meter's current is less than their sum and ``I_meter − I_EV`` understates the building),
the measured power takes over, so the kW row cannot be optimistic either way. The difference is
taken off the node's ``limit_kw`` (the optimizer's loads stay currents), held at its peak like
the non-EV currents are (a meter and the chargers' MeterValues are sampled at different times).

Pure: the caller passes the readings, estimates and time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from sitectl.config import GRID, Config

__all__ = ["EV_POWER_FACTOR", "MeasuredPower", "reading_power_kw"]

Phases = tuple[float, float, float]

#: The least power factor taken for a vehicle's draw when its power is estimated from its
#: currents: on-board chargers correct theirs (≥ 0.98 at rated current in datasheets; IEC
#: 61000-3-12 limits the harmonics that would lower it). A lower true factor makes the EV power
#: smaller and the non-EV power larger than estimated, which only the current estimate covers.
EV_POWER_FACTOR = 0.98


def reading_power_kw(reading: Any) -> float | None:
    """A meter reading's total active power (kW): the total, else the sum of its phases."""
    total = getattr(reading, "power_total_kw", None)
    if total is not None:
        return float(total)
    phases = getattr(reading, "power_kw", None)
    if phases is not None and all(p is not None for p in phases):
        return float(sum(phases))
    return None


class MeasuredPower:
    """How much each node's kW row must reserve beyond ``U · Σ I`` of its non-EV loads.

    Args:
        config: the validated configuration (the circuit tree, the chargers' circuits).
        hold_s: how long a peak of the measured non-EV power is held (the non-EV hold).
    """

    def __init__(self, config: Config, hold_s: float) -> None:
        self.hold_s = hold_s
        self.children: dict[str, list[str]] = {}
        for circuit in config.circuits:
            self.children.setdefault(circuit.parent, []).append(circuit.id)
        self.chargers_under: dict[str, list[str]] = {}
        for charger in config.chargers:
            for node in config.circuit_path(charger.circuit):
                self.chargers_under.setdefault(node, []).append(charger.id)
        self._history: dict[str, deque[tuple[float, float]]] = {}

    def non_ev_kw(
        self,
        power_kw: Mapping[str, float],
        ev_lo: Mapping[str, Phases],
        voltage_low_v: float,
        now: float,
    ) -> dict[str, float]:
        """Measured non-EV power per node (kW), held at its peak for `hold_s`.

        Args:
            power_kw: per node whose meter is trusted and reports it, its active power.
            ev_lo: per charger, its fresh draw's lower bound (A, site phases).
            voltage_low_v: the lowest phase voltage measured (or nominal).
            now: monotonic seconds.
        """
        out: dict[str, float] = {}
        for node, measured in power_kw.items():
            amps = sum(
                sum(ev_lo.get(c, (0.0, 0.0, 0.0))) for c in self.chargers_under.get(node, [])
            )
            ev_kw = EV_POWER_FACTOR * voltage_low_v * amps / 1000.0
            history = self._history.setdefault(node, deque())
            history.append((now, measured - ev_kw))
            while history and now - history[0][0] > self.hold_s:
                history.popleft()
            out[node] = max(value for _, value in history)
        for node in [n for n in self._history if n not in power_kw]:
            del self._history[node]  # no trusted power now: its peak is not kept
        return out

    def kw_cuts(
        self,
        non_ev_placed: Mapping[str, Phases],
        non_ev_kw: Mapping[str, float],
        voltage_ln_v: float,
    ) -> dict[str, float]:
        """Per node, the kW to take off its ``limit_kw`` (only nodes that need a cut).

        Args:
            non_ev_placed: the non-EV current placed at each node (the problem's loads).
            non_ev_kw: the measured non-EV power per node (`non_ev_kw`).
            voltage_ln_v: the voltage the optimizer converts currents to power with.

        A node's cut is the larger of its own shortfall (measured non-EV power above ``U · Σ I``
        of the non-EV loads in its subtree) and the sum of its children's cuts: a child's
        measured power is inside its parent's row too.
        """
        cuts: dict[str, float] = {}

        def visit(node: str) -> tuple[float, float]:
            """(non-EV A summed over phases in the subtree, the subtree's cut in kW)."""
            amps = sum(non_ev_placed.get(node, (0.0, 0.0, 0.0)))
            below = 0.0
            for child in self.children.get(node, []):
                child_amps, child_cut = visit(child)
                amps += child_amps
                below += child_cut
            cut = below
            if node in non_ev_kw:
                cut = max(cut, non_ev_kw[node] - voltage_ln_v * amps / 1000.0)
            if cut > 0:
                cuts[node] = cut
            return amps, max(cut, 0.0)

        visit(GRID)
        return cuts


def lowered(limit_kw: float | None, cut_kw: float) -> float | None:
    """A kW limit less a cut, never below 0 (no limit stays none)."""
    if limit_kw is None:
        return None
    return max(0.0, limit_kw - cut_kw)


def trusted_power_kw(readings: Iterable[tuple[str, Any]]) -> dict[str, float]:
    """Per node, the active power of its trusted reading, where the meter reports one."""
    out: dict[str, float] = {}
    for node, reading in readings:
        power = reading_power_kw(reading) if reading is not None else None
        if power is not None:
            out[node] = power
    return out
