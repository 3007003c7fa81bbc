"""Is each charger wired the way the configuration says? Opportunistic phase detection.

The phase rotation comes from the configuration and was never checked; a charger wired
L2-L3-L1 but configured L1-L2-L3 loads an unmetered phase that sitectl believes free (issue #16,
phase detection). A balanced three-phase draw says nothing about rotation; an unbalanced step
does: when one charger's draw changes on one of its phases only (a single-phase vehicle starting,
pausing or following a new limit) while nothing else under the same meter changes, the meter's
phase that moves by about as much is that charger phase's site phase.

`PhaseWatch` looks at every cycle's fresh draws and trusted meter readings, keeps votes per
(charger, charger phase), and after `VOTES_TO_DECIDE` agreeing votes reports the finding: wired
as configured, or not (the loop raises ``phase_rotation_mismatch``). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from sitectl.config import GRID, Config

__all__ = ["QUIET_A", "QUIET_SHARE", "STEP_A", "VOTES_TO_DECIDE", "PhaseFinding", "PhaseWatch"]

Phases = tuple[float, float, float]

#: A step on one charger phase at least this large (A) is evidence.
STEP_A = 4.0
#: Everything else (other chargers under the meter, the charger's other phases) must move
#: less than this (A), and the meter's other phases less than this share of the step.
QUIET_A = 1.0
QUIET_SHARE = 0.3
#: Agreeing votes before a charger phase's site phase is decided.
VOTES_TO_DECIDE = 3


@dataclass(frozen=True, slots=True)
class PhaseFinding:
    """What the watch decided for one charger: the site phase of each charger phase seen."""

    charger_id: str
    observed: Mapping[int, int]  # charger phase index -> site phase index
    configured: tuple[int, ...]  # site phase of each charger phase, from the configuration

    @property
    def matches(self) -> bool:
        return all(self.configured[k] == p for k, p in self.observed.items())

    def describe(self) -> str:
        names = ", ".join(f"its L{k + 1} on L{p + 1}" for k, p in sorted(self.observed.items()))
        configured = "-".join(f"L{p + 1}" for p in self.configured)
        return f"draws with {names}, but is configured {configured}"


@dataclass
class PhaseWatch:
    """Collects the evidence of unbalanced steps, cycle by cycle.

    Args:
        config: the site configuration (chargers, rotations, circuit tree, meters).
    """

    config: Config
    _last_draw: dict[str, Phases] = field(default_factory=dict)
    _last_meter: dict[str, Phases] = field(default_factory=dict)
    _votes: dict[tuple[str, int], Counter[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        metered = {c.id for c in self.config.circuits if c.meter}
        if self.config.site.meter:
            metered.add(GRID)
        # Each charger is judged against the nearest metered circuit above it.
        self._meter_of: dict[str, str] = {}
        for charger in self.config.chargers:
            for node in self.config.circuit_path(charger.circuit):
                if node in metered:
                    self._meter_of[charger.id] = node
                    break
        self._rotation = {c.id: c.site_phases for c in self.config.chargers}

    def meter_of(self, charger_id: str) -> str | None:
        """The nearest metered circuit above a charger (``None``: nothing measures it)."""
        return self._meter_of.get(charger_id)

    def under(self, circuit: str) -> list[str]:
        """The chargers judged against a metered circuit."""
        return [c for c, m in self._meter_of.items() if m == circuit]

    def judge(
        self, circuit: str, steps: Mapping[str, Phases], meter_step: Phases
    ) -> tuple[str, int, int] | str:
        """Judge one step seen by a circuit's meter.

        Args:
            circuit: the metered circuit.
            steps: per charger under it, its draw's change (charger phases); a charger
                missing here is unknown and counts as moving.
            meter_step: the meter's change over the same time (site phases).

        Returns:
            ``(charger, charger phase, site phase)`` for a clean unbalanced step of one
            charger, else why the step is no evidence.
        """
        under = self.under(circuit)
        moving = [c for c in under if c not in steps or max(map(abs, steps[c])) >= QUIET_A]
        if not moving:
            return "no charger under the meter moved"
        if len(moving) != 1:
            return f"several chargers moved or were not measured ({', '.join(sorted(moving))})"
        charger_id = moving[0]
        if charger_id not in steps:
            return f"{charger_id} has no fresh measurement"
        step = steps[charger_id]
        k = max(range(3), key=lambda i: abs(step[i]))
        size = step[k]
        if abs(size) < STEP_A:
            return f"{charger_id} moved by {abs(size):.1f} A only (at least {STEP_A:g} A needed)"
        if any(abs(step[i]) >= QUIET_A for i in range(3) if i != k):
            return f"{charger_id} moved on more than one of its phases (a balanced step)"
        p = max(range(3), key=lambda i: abs(meter_step[i]))
        if meter_step[p] * size <= 0 or abs(meter_step[p]) < (1 - QUIET_SHARE) * abs(size):
            return (
                f"the meter did not follow (its largest change {meter_step[p]:+.1f} A on "
                f"L{p + 1} for a step of {size:+.1f} A)"
            )
        if any(abs(meter_step[i]) >= QUIET_SHARE * abs(size) for i in range(3) if i != p):
            return "the meter moved on more than one phase (other load changed too)"
        return charger_id, k, p

    def vote(self, charger_id: str, k: int, p: int) -> PhaseFinding | None:
        """Count one clean step: charger phase `k` seen on site phase `p`.

        Returns the finding when this vote decides it (each charger phase is decided once,
        until `forget`); conflicting evidence starts that charger phase over.
        """
        votes = self._votes.setdefault((charger_id, k), Counter())
        votes[p] += 1
        if votes[p] == VOTES_TO_DECIDE and len(votes) == 1:
            return PhaseFinding(charger_id, {k: p}, self._rotation[charger_id])
        if len(votes) > 1:
            self._votes[(charger_id, k)] = Counter({p: 1})
        return None

    def forget(self, charger_id: str) -> None:
        """Drop a charger's votes (an on-demand test starts from no evidence)."""
        for key in [key for key in self._votes if key[0] == charger_id]:
            del self._votes[key]

    def observe(
        self,
        draws: Mapping[str, Phases],
        measured: Mapping[str, Phases],
        skip: Collection[str] = (),
    ) -> list[PhaseFinding]:
        """One cycle: `draws` per charger (charger phases, fresh only), `measured` per circuit.

        Chargers in `skip` get no votes from here (an on-demand test judges its own steps,
        `sitectl.control.phase_test`; its steps counted twice would be double evidence).
        Returns the findings decided in this cycle (each charger phase is decided once).
        """
        decided: list[PhaseFinding] = []
        steps: dict[str, Phases] = {}
        for charger_id, now in draws.items():
            before = self._last_draw.get(charger_id)
            if before is not None:
                steps[charger_id] = (now[0] - before[0], now[1] - before[1], now[2] - before[2])
        meter_steps: dict[str, Phases] = {}
        for circuit, now in measured.items():
            before = self._last_meter.get(circuit)
            if before is not None:
                meter_steps[circuit] = (
                    now[0] - before[0],
                    now[1] - before[1],
                    now[2] - before[2],
                )
        self._last_draw = dict(draws)
        self._last_meter = dict(measured)
        for circuit, meter_step in meter_steps.items():
            judged = self.judge(circuit, steps, meter_step)
            if isinstance(judged, str) or judged[0] in skip:
                continue
            finding = self.vote(*judged)
            if finding is not None:
                decided.append(finding)
        return decided
