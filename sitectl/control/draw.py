"""What a connector really draws, from what its charger reports: bounds, not a guess.

Chargers report differently: per-phase ``Current.Import``, a current without a phase, only
``Power.Active.Import`` (most DC chargers, many 1.6 AC ones), or nothing fresh. Each use needs
the error on its own safe side (issue #16, "unknown means the worst case for the breaker"):

- ``lo`` is subtracted from a circuit meter to estimate its non-EV load: it must not be more
  than the vehicle draws on any phase, or the building looks smaller than it is.
- ``hi`` is a budget for a charger sitectl cannot steer: it must not be less.
- ``est`` is the best estimate, for judging compliance and over-draw.

All per *charger* phase (L1, L2, L3 of the charger; the rotation maps them to the site).
A phase not reported is unknown, which means in use: ``lo`` 0, ``hi`` and ``est`` the highest
reported phase. A current without a phase is the current of every phase in use. From power
alone the phases in use decide the split; for an AC charger whose vehicle's phases are not
known, 1, 2 and 3 phases are all possible (``hi`` the most per phase over those cases, ``lo`` the
least). A DC charger's AC input is three-phase and balanced, and more than its output by its
efficiency: ``P_out / (η · 3 · U)`` per phase. Measured voltages are used where they make
the bound safer (a lower voltage means more current for the same power).

Freshness is monotonic: a sample older than the maximum age, or stamped in the future, is not
fresh. Pure functions; the caller passes the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from sitectl.state import ConnectorState

__all__ = ["LOW_SAMPLES_TO_DROP", "Draw", "connector_draw", "phases_in_use"]

Phases = tuple[float, float, float]

#: Samples in a row that must report a phase low before it counts as unused.
LOW_SAMPLES_TO_DROP = 3


@dataclass(frozen=True, slots=True)
class Draw:
    """One connector's draw per charger phase (A): at least, best estimate, at most."""

    lo: Phases
    est: Phases
    hi: Phases
    source: str  # "current", "current_phaseless" or "power"


def fresh(stamp: float | None, now_mono: float, max_age_s: float) -> bool:
    """A monotonic stamp no older than `max_age_s` and not in the future."""
    return stamp is not None and 0.0 <= now_mono - stamp <= max_age_s


def phases_in_use(connector: ConnectorState, charger_phases: int) -> tuple[int, ...]:
    """The charger phases the vehicle is taken to use: all, but those reported low for long."""
    if charger_phases == 1:
        return (0,)
    used = tuple(
        k for k in range(3) if connector.phase_low_samples[k] < LOW_SAMPLES_TO_DROP
    )
    return used or (0,)  # every phase low: it draws nothing; L1 carries a restart


def _on(amps: float, phases: tuple[int, ...]) -> Phases:
    out = [0.0, 0.0, 0.0]
    for k in phases:
        out[k] = amps
    return (out[0], out[1], out[2])


def connector_draw(
    connector: ConnectorState,
    *,
    charger_phases: int,
    dc: bool,
    efficiency: float,
    now_mono: float,
    max_age_s: float,
    nominal_voltage_v: float,
    max_current_a: float,
) -> Draw | None:
    """The connector's draw from its freshest measurement, or ``None`` when nothing is fresh.

    Args:
        connector: its state (measurements with monotonic stamps).
        charger_phases: 1 or 3 (wiring of the charger).
        dc: a DC charger (reports its output power; AC input three-phase balanced).
        efficiency: a DC charger's AC-to-DC efficiency (0.5–1).
        now_mono: now, monotonic; max_age_s: freshness limit.
        nominal_voltage_v: the site's line-to-neutral voltage.
        max_current_a: the charger's maximum per phase (no estimate goes above it).
    """
    in_use = phases_in_use(connector, charger_phases) if not dc else (0, 1, 2)
    if fresh(connector.current_mono, now_mono, max_age_s):
        if connector.current_a is not None:
            reported = [a for a in connector.current_a if a is not None]
            peak = max(reported, default=0.0)
            lo = tuple(a if a is not None else 0.0 for a in connector.current_a)
            hi = tuple(a if a is not None else peak for a in connector.current_a)
            est = tuple(
                a if a is not None else (peak if k in in_use else 0.0)
                for k, a in enumerate(connector.current_a)
            )
            if charger_phases == 1:  # a single-phase charger carries everything on its L1
                lo, est, hi = (max(lo), 0.0, 0.0), (max(est), 0.0, 0.0), (max(hi), 0.0, 0.0)
            return Draw(lo, est, hi, "current")  # type: ignore[arg-type]
        if connector.current_phaseless_a is not None:
            amps = max(0.0, connector.current_phaseless_a)
            every = (0, 1, 2) if charger_phases == 3 else (0,)
            return Draw(_on(amps, (0,)), _on(amps, in_use), _on(amps, every), "current_phaseless")
    if fresh(connector.power_mono, now_mono, max_age_s) and connector.power_kw is not None:
        watts = max(0.0, connector.power_kw * 1000)
        measured = connector.voltage_v if connector.voltage_v and connector.voltage_v > 50 else None
        u_low = min(nominal_voltage_v, measured) if measured else nominal_voltage_v
        u_high = max(nominal_voltage_v, measured) if measured else nominal_voltage_v
        cap = max_current_a

        def per(n: int, volts: float, eta: float = 1.0) -> float:
            return min(cap, watts / (eta * n * volts))

        if dc:
            return Draw(
                _on(per(3, u_high), (0, 1, 2)),
                _on(per(3, nominal_voltage_v, efficiency), (0, 1, 2)),
                _on(per(3, u_low, efficiency), (0, 1, 2)),
                "power",
            )
        if charger_phases == 1:
            one = (0,)
            return Draw(
                _on(per(1, u_high), one), _on(per(1, nominal_voltage_v), one),
                _on(per(1, u_low), one), "power",
            )
        n = len(in_use)
        return Draw(
            (per(3, u_high), 0.0, 0.0),
            _on(per(n, nominal_voltage_v), in_use),
            (per(1, u_low), per(2, u_low), per(3, u_low)),
            "power",
        )
    return None
