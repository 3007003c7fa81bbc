"""How a simulated charger misbehaves: the quirks of real chargers, as data.

A simulator that only does what the controller expects proves nothing (issue #16). Each field
is one behaviour seen on real hardware; `SimCharger` reads them. The default is a charger that
behaves by the book.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REPORTS", "Quirks"]

#: How a charger reports what its vehicle draws in MeterValues.
REPORTS = (
    "per_phase",  # Current.Import per phase (by the book)
    "l1_only",  # Current.Import for L1 only (many 1.6 firmwares), whatever the vehicle uses
    "phaseless",  # one Current.Import without a phase
    "power_only",  # Power.Active.Import only, no current (most DC and many 1.6 AC chargers)
    "energy_only",  # only the energy register (nothing to judge the draw by)
)


@dataclass
class Quirks:
    """One simulated charger's departures from the book.

    Attributes:
        reports: what its MeterValues carry (one of `REPORTS`).
        dc_efficiency: a DC charger: it reports its DC output power, the AC input times this
            (its AC input current is what the site's meter sees).
        ignores_limits: accepts profiles and draws what the vehicle wants anyway.
        refuses_below_a: rejects a profile whose limit is below this (firmware that refuses
            0 A, or anything under 6 A).
        ramp_a_per_s: the draw follows a new limit at most this fast (slow ramps).
        mute: the OCPP stack hangs: the socket stays open, no call is answered and no
            MeterValues are sent (the simulation's own explicit calls still go through).
        clock_skew_s: its clock is off by this much (its timestamps say so).
        answers_triggers: sends the message a TriggerMessage asks for (some ignore them).
        max_stack_level: the highest stack level it honours (ABB Terra AC, Wallbox Pulsar: 0).
        above_max_level: what it does with a profile above that: "reject" it (answers
            Rejected) or "ignore" it (answers Accepted, stores and applies nothing — only its
            composite schedule or its current tells).
        ignores_limit_after_zero: after a pause at 0 A, the next higher limit is ignored and
            it runs at its maximum until it is given another profile (go-e).
        keeps_sampling_interval: refuses a new MeterValues interval (its firmware's fixed one).
        ignores_connector_profiles: a twin charger that accepts per-connector profiles and
            applies only its station-wide ones (each connector may take the whole total).
    """

    reports: str = "per_phase"
    dc_efficiency: float | None = None
    ignores_limits: bool = False
    refuses_below_a: float | None = None
    ramp_a_per_s: float | None = None
    mute: bool = False
    clock_skew_s: float = 0.0
    answers_triggers: bool = True
    max_stack_level: int | None = None
    above_max_level: str = "reject"
    ignores_limit_after_zero: bool = False
    keeps_sampling_interval: bool = False
    ignores_connector_profiles: bool = False

    def __post_init__(self) -> None:
        if self.above_max_level not in ("reject", "ignore"):
            raise ValueError(
                f"above_max_level must be reject or ignore, not {self.above_max_level!r}"
            )
        if self.reports not in REPORTS:
            raise ValueError(f"reports must be one of {', '.join(REPORTS)}, not {self.reports!r}")
