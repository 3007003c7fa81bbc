"""On-demand phase detection: "check charger X's wiring now" (issue #16, phase detection).

`PhaseWatch` waits for unbalanced steps to happen by themselves; an installer commissioning a
depot wants the answer now. A phase test makes the steps, through the control loop's safe path:

- It only ever *lowers* limits (`PhaseTests.bound`, applied to the loop's verified limits
  before dispatch). The charger under test is bounded by its minimum current for a plateau (a
  short pause when the minimum would step too little), then by the limit it held when the test
  began, and the normal allocation brings it back up. Every other charger under the same meter
  is bounded by the limit it held when the test began: the headroom the test frees is not
  given away, so those chargers do not move the meter.
- It compares plateaus, not cycles: the charger's draw (charger phases) and the meter (site
  phases), each averaged over a settled plateau. Each step between two plateaus goes to
  `PhaseWatch.judge` and, if clean, `PhaseWatch.vote`: the same rules and the same votes as
  opportunistic detection, so the finding raises or clears ``phase_rotation_mismatch`` the
  same way (the loop does that). Opportunistic votes for the charger are skipped meanwhile.
- A balanced three-phase vehicle gives no rotation information (every rotation of a balanced
  draw looks the same to the meter, and then the rotation does not change any phase's load
  either): the test says so at its first step and ends. A single-phase vehicle (or a
  single-phase charger) gives a step on one phase, which the meter places.

Stages: ``base`` (the limit in force) -> ``low`` -> ``high`` -> ``low`` -> ... until the watch
decides, a step shows that it cannot, or the time is up. A plateau counts once the limit has
taken effect (the charger accepted it) and the vehicle has settled: two distinct charger
measurements in a row agree, or ``ramp_down_s`` has passed.

Pure apart from reading SiteState: no I/O, no clock (the loop passes monotonic time).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sitectl.config import PHASE_NAMES, Config
from sitectl.control.phases import QUIET_A, QUIET_SHARE, STEP_A, PhaseFinding, PhaseWatch
from sitectl.state import SiteState

__all__ = ["Outcome", "PhaseTest", "PhaseTestBusy", "PhaseTests", "default_timeout_s"]

Phases = tuple[float, float, float]
Limits = dict[str, tuple[float, dict[int, float]]]

#: Cycles sampled on each settled plateau (averaged: a meter and a charger report seldom
#: fall on the same instant).
SAMPLES = 3
#: Plateaus at most (base + low/high steps): three agreeing votes and a few spoiled steps.
MAX_PLATEAUS = 8
#: Lower the charger to its minimum only if that steps at least this many times STEP_A;
#: otherwise pause it briefly (a vehicle at 9 A on a 6 A minimum steps too little to see).
LOW_MARGIN = 2.0


class Outcome(enum.StrEnum):
    """Where a test is, or how it ended."""

    RUNNING = "running"
    MATCHES = "matches"  # wired as configured
    MISMATCH = "mismatch"  # wired otherwise: phase_rotation_mismatch
    UNDECIDABLE = "undecidable"  # the test ran but cannot tell (the text says why)
    NO_SESSION = "no_session"
    NOT_CHARGING = "not_charging"  # a session, but the vehicle draws (almost) nothing
    OFFLINE = "offline"
    NO_METER = "no_meter"  # no meter above the charger: nothing can see its phases
    NOT_STEERED = "not_steered"  # no dynamic limit now (fail-safe missing, firmware...)


class Stage(enum.StrEnum):
    BASE = "base"
    LOW = "low"
    HIGH = "high"


class PhaseTestBusy(Exception):
    """Another test runs under the same meter (two at once would spoil each other's steps)."""


def default_timeout_s(config: Config) -> float:
    """How long a test may take: every plateau may need the vehicle's ramp, two charger
    reports (at most the measurement age apart) and a few cycles."""
    control = config.control
    plateau = control.ramp_down_s + 2 * control.ev_measurement_max_age_s + 4 * control.period_s
    return MAX_PLATEAUS * plateau


@dataclass
class _Plateau:
    stage: Stage
    effective_at: float | None = None  # the limit took effect (monotonic)
    seen: list[tuple[float, Phases]] = field(default_factory=list)  # distinct measurements
    settled: bool = False
    samples: list[tuple[dict[str, Phases], Phases]] = field(default_factory=list)


@dataclass
class PhaseTest:
    """One test of one charger, from the request to its answer."""

    charger_id: str
    requested_at: datetime
    timeout_s: float
    meter: str | None
    configured: str
    outcome: Outcome = Outcome.RUNNING
    text: str = "waiting for the next control cycle"
    finished_at: datetime | None = None
    observed: dict[str, str] = field(default_factory=dict)  # charger phase -> site phase
    steps: int = 0  # steps judged
    votes: int = 0  # clean steps counted
    started_mono: float | None = None
    base_limit_a: float | None = None
    low_a: float = 0.0
    hold_a: dict[str, float] = field(default_factory=dict)
    plateau: _Plateau = field(default_factory=lambda: _Plateau(Stage.BASE))
    means: list[tuple[dict[str, Phases], Phases]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.outcome is not Outcome.RUNNING

    def view(self) -> dict[str, Any]:
        """What the API and the MQTT reply show."""
        return {
            "charger": self.charger_id,
            "state": str(self.outcome),
            "done": self.done,
            "text": self.text,
            "meter": self.meter,
            "configured": self.configured,
            "observed": dict(self.observed),
            "stage": None if self.done else str(self.plateau.stage),
            "steps": self.steps,
            "votes": self.votes,
            "requested_at": self.requested_at,
            "finished_at": self.finished_at,
            "timeout_s": self.timeout_s,
        }


class PhaseTests:
    """The on-demand phase tests of one site: started by commands, run by the control loop.

    Args:
        config: the validated configuration.
        state: the site state (connections, sessions, measurement stamps, the clock).

    The command side calls `start` (and `get`); the loop calls `cycle` once a cycle after
    the phase watch and `bound` on its limits before dispatch.
    """

    def __init__(self, config: Config, state: SiteState) -> None:
        self.config = config
        self.state = state
        self.chargers = {c.id: c for c in config.chargers}
        self.tests: dict[str, PhaseTest] = {}
        self._watch = PhaseWatch(config)  # for the meter map only; votes go to the loop's

    # The command side.

    def get(self, charger_id: str) -> PhaseTest | None:
        """The running or latest test of a charger since sitectl started."""
        return self.tests.get(charger_id)

    def start(self, charger_id: str, timeout_s: float | None = None) -> PhaseTest:
        """Ask for a test; answered at once when it cannot run (offline, no meter, no session).

        A test already running on the charger is returned as is.

        Raises:
            KeyError: no such charger.
            PhaseTestBusy: another charger's test runs under the same meter.
        """
        charger = self.chargers[charger_id]
        current = self.tests.get(charger_id)
        if current is not None and not current.done:
            return current
        meter = self._watch.meter_of(charger_id)
        for other in self.tests.values():
            if not other.done and other.meter is not None and other.meter == meter:
                raise PhaseTestBusy(
                    f"a phase test of {other.charger_id} runs under the same meter ({meter}); "
                    "try again when it has ended"
                )
        configured = "-".join(PHASE_NAMES[p] for p in charger.site_phases)
        test = PhaseTest(
            charger_id,
            self.state.clock(),
            timeout_s if timeout_s is not None else default_timeout_s(self.config),
            meter,
            configured,
        )
        self.tests[charger_id] = test
        state = self.state.chargers[charger_id]
        if meter is None:
            self._finish(
                test,
                Outcome.NO_METER,
                "no meter measures this charger's circuit or any circuit above it: its "
                "phases cannot be seen (add a meter, or check the wiring by hand)",
            )
        elif not state.connected:
            self._finish(test, Outcome.OFFLINE, "the charger is not connected")
        elif not any(c.session is not None for c in state.connectors.values()):
            self._finish(
                test,
                Outcome.NO_SESSION,
                "no session on this charger: plug in a vehicle (single-phase if it can be: "
                "a balanced three-phase one does not show the rotation), start charging and "
                "ask again",
            )
        return test

    def running(self) -> set[str]:
        """Chargers with a test under way."""
        return {c for c, t in self.tests.items() if not t.done}

    # The loop side.

    def bound(self, limits: Limits) -> Limits:
        """The loop's limits with the tests' upper bounds applied (never raised)."""
        caps: dict[str, float] = {}
        for test in self.tests.values():
            if test.done or test.started_mono is None:
                continue
            own = test.low_a if test.plateau.stage is Stage.LOW else test.base_limit_a
            if own is not None:
                caps[test.charger_id] = own
            for other, amps in test.hold_a.items():
                caps[other] = min(caps.get(other, math.inf), amps)
        out = dict(limits)
        for charger_id, cap in caps.items():
            if charger_id not in out:
                continue
            total, connectors = out[charger_id]
            if total <= cap:
                continue
            share = cap / total if total > 0 else 0.0
            out[charger_id] = (cap, {n: a * share for n, a in connectors.items()})
        return out

    def cycle(
        self,
        watch: PhaseWatch,
        draws: Mapping[str, Phases],
        measured: Mapping[str, Phases],
        commanded: Mapping[str, float | None],
        steerable: set[str] | tuple[str, ...],
        now_mono: float,
    ) -> list[PhaseFinding]:
        """One control cycle of every running test.

        Args:
            watch: the loop's phase watch (its judgement and its votes).
            draws: per charger its draw (charger phases) as the watch is fed: fresh ones,
                and zeros for an idle connected charger.
            measured: trusted currents per metered circuit (site phases).
            commanded: per charger the limit it holds (accepted), ``None`` if none.
            steerable: the chargers that get a dynamic limit this cycle.
            now_mono: now, monotonic.

        Returns:
            The findings the tests decided (the loop alarms on them like on the watch's).
        """
        found: list[PhaseFinding] = []
        for test in list(self.tests.values()):
            if test.done:
                continue
            finding = self._advance(test, watch, draws, measured, commanded, steerable, now_mono)
            if finding is not None:
                found.append(finding)
        return found

    # The state machine.

    def _advance(
        self,
        test: PhaseTest,
        watch: PhaseWatch,
        draws: Mapping[str, Phases],
        measured: Mapping[str, Phases],
        commanded: Mapping[str, float | None],
        steerable: set[str] | tuple[str, ...],
        now_mono: float,
    ) -> PhaseFinding | None:
        charger_id, meter = test.charger_id, test.meter
        assert meter is not None  # tests without a meter end in `start`
        state = self.state.chargers[charger_id]
        if not state.connected:
            return self._finish(test, Outcome.OFFLINE, "the charger went offline during the test")
        if not any(c.session is not None for c in state.connectors.values()):
            return self._finish(test, Outcome.NO_SESSION, "the session ended during the test")
        if charger_id not in steerable:
            return self._finish(
                test,
                Outcome.NOT_STEERED,
                "sitectl does not steer this charger now (no fail-safe yet, a firmware "
                "install, or it refuses or ignores its limits): nothing to step",
            )
        if test.started_mono is None:
            test.started_mono = now_mono
            test.base_limit_a = commanded.get(charger_id)
            # Every charger below the meter's circuit, sub-metered ones too: they all move it.
            for charger in self.config.chargers:
                amps = commanded.get(charger.id)
                if (
                    charger.id != charger_id
                    and amps is not None
                    and meter in self.config.circuit_path(charger.circuit)
                ):
                    test.hold_a[charger.id] = amps
            watch.forget(charger_id)
            test.plateau = _Plateau(Stage.BASE, effective_at=now_mono)
            test.text = "measuring the draw at the limit in force"
        if now_mono - test.started_mono > test.timeout_s:
            return self._finish(
                test,
                Outcome.UNDECIDABLE,
                f"no answer within {test.timeout_s:g} s ({test.steps} steps judged, "
                f"{test.votes} clean): {test.text}",
            )
        plateau = test.plateau
        if plateau.effective_at is None:
            held = commanded.get(charger_id)
            lowered = plateau.stage is Stage.LOW and held is not None and held <= test.low_a + 0.05
            raised = plateau.stage is Stage.HIGH and (held is None or held >= test.low_a + STEP_A)
            if not (lowered or raised):
                return None  # the limit is not in force yet
            plateau.effective_at = now_mono
        if not plateau.settled:
            stamp = self._stamp(charger_id)
            draw = draws.get(charger_id)
            newer = not plateau.seen or (stamp is not None and stamp > plateau.seen[-1][0])
            if stamp is not None and draw is not None and stamp >= plateau.effective_at and newer:
                plateau.seen.append((stamp, draw))
            # Settled: it moved and two reports in a row agree, or one came after the
            # longest ramp (a vehicle that does not follow is found out by the step).
            moved = not test.means or (
                bool(plateau.seen)
                and abs(max(plateau.seen[-1][1]) - max(test.means[-1][0][charger_id])) >= STEP_A / 2
            )
            steady = (
                moved
                and len(plateau.seen) >= 2
                and all(
                    abs(a - b) < QUIET_A
                    for a, b in zip(plateau.seen[-1][1], plateau.seen[-2][1], strict=True)
                )
            )
            ramped = bool(plateau.seen) and (
                plateau.seen[-1][0] - plateau.effective_at >= self.config.control.ramp_down_s
            )
            plateau.settled = steady or ramped
            if not plateau.settled:
                return None
        reading = measured.get(meter)
        under = watch.under(meter)
        missing = [c for c in under if c not in draws]
        if reading is None or missing:
            # This cycle says nothing: a charger without a fresh draw may be moving.
            test.text = (
                f"waiting for a trusted reading of the meter of {meter}"
                if reading is None
                else f"waiting for a fresh measurement of {', '.join(sorted(missing))}"
            )
            return None
        plateau.samples.append(({c: draws[c] for c in under}, reading))
        if len(plateau.samples) < SAMPLES:
            return None
        return self._plateau_done(test, watch)

    def _plateau_done(self, test: PhaseTest, watch: PhaseWatch) -> PhaseFinding | None:
        plateau = test.plateau
        chargers = plateau.samples[0][0]
        mean_draw = {c: _mean([s[0][c] for s in plateau.samples]) for c in chargers}
        mean_meter = _mean([s[1] for s in plateau.samples])
        test.means.append((mean_draw, mean_meter))
        if plateau.stage is Stage.BASE:
            peak = max(mean_draw[test.charger_id])
            if peak < STEP_A:
                return self._finish(
                    test,
                    Outcome.NOT_CHARGING,
                    f"the vehicle draws {peak:.1f} A: too little to step (at least "
                    f"{STEP_A:g} A needed); try when it charges",
                )
            minimum = self.chargers[test.charger_id].min_current_a
            paused = peak - minimum < LOW_MARGIN * STEP_A
            test.low_a = 0.0 if paused else minimum
            how = "pausing it briefly" if paused else f"lowering it to {minimum:g} A"
            test.text = f"draws {peak:.1f} A; {how}"
            test.plateau = _Plateau(Stage.LOW)
            return None
        (before_draw, before_meter), (after_draw, after_meter) = test.means[-2:]
        steps = {c: _diff(after_draw[c], before_draw[c]) for c in after_draw if c in before_draw}
        judged = watch.judge(test.meter or "", steps, _diff(after_meter, before_meter))
        test.steps += 1
        nxt = Stage.HIGH if plateau.stage is Stage.LOW else Stage.LOW
        if isinstance(judged, tuple) and judged[0] == test.charger_id:
            _, k, p = judged
            test.votes += 1
            test.observed[PHASE_NAMES[k]] = PHASE_NAMES[p]
            finding = watch.vote(test.charger_id, k, p)
            if finding is not None:
                outcome = Outcome.MATCHES if finding.matches else Outcome.MISMATCH
                text = (
                    f"wired as configured ({test.configured}): "
                    + finding.describe().split(", but")[0]
                    if finding.matches
                    else finding.describe()
                )
                self._finish(test, outcome, f"{text} ({test.votes} clean steps)")
                return finding
            test.text = f"step {test.steps}: its L{k + 1} seen on L{p + 1}"
        else:
            reason = judged if isinstance(judged, str) else f"{judged[0]} moved instead"
            own = steps.get(test.charger_id, (0.0, 0.0, 0.0))
            moved = [k for k in range(3) if abs(own[k]) >= QUIET_A]
            if len(moved) > 1 and max(abs(a) for a in own) >= STEP_A:
                size = max(abs(a) for a in own)
                meter_step = _diff(after_meter, before_meter)
                seen = [p for p in range(3) if abs(meter_step[p]) >= (1 - QUIET_SHARE) * size]
                if len(seen) == 1:
                    # The charger reports every phase alike (an unreported phase counts as in
                    # use) but the meter saw one: its reports cannot tell which of its phases.
                    why = (
                        f"the charger reports a {size:.1f} A step on {len(moved)} of its "
                        f"phases but the meter saw it on {PHASE_NAMES[seen[0]]} only: the "
                        "charger does not report its phases apart, so which of its phases is "
                        f"on {PHASE_NAMES[seen[0]]} cannot be told"
                    )
                else:
                    why = (
                        f"the vehicle draws on {len(moved)} phases alike (a balanced step of "
                        f"{size:.1f} A): every rotation looks the same to the meter, so the "
                        "wiring cannot be told (nor does it change any phase's load for this "
                        "vehicle); repeat with a single-phase vehicle"
                    )
                return self._finish(test, Outcome.UNDECIDABLE, why)
            if test.steps == 1 and max(abs(a) for a in own) < STEP_A:
                return self._finish(
                    test,
                    Outcome.UNDECIDABLE,
                    f"its draw moved by {max(abs(a) for a in own):.1f} A only when its limit "
                    f"went to {test.low_a:g} A: the vehicle does not follow its limit",
                )
            test.text = f"step {test.steps} no evidence: {reason}"
        if len(test.means) >= MAX_PLATEAUS:
            return self._finish(
                test,
                Outcome.UNDECIDABLE,
                f"no decision after {test.steps} steps ({test.votes} clean): {test.text}",
            )
        test.plateau = _Plateau(nxt)
        return None

    def _stamp(self, charger_id: str) -> float | None:
        """The newest measurement stamp (monotonic) of a charger's connectors."""
        stamps = [
            s
            for c in self.state.chargers[charger_id].connectors.values()
            for s in (c.current_mono, c.power_mono)
            if s is not None
        ]
        return max(stamps, default=None)

    def _finish(self, test: PhaseTest, outcome: Outcome, text: str) -> None:
        test.outcome = outcome
        test.text = text
        test.finished_at = self.state.clock()
        return None


def _mean(rows: list[Phases]) -> Phases:
    n = len(rows)
    return (
        sum(r[0] for r in rows) / n,
        sum(r[1] for r in rows) / n,
        sum(r[2] for r in rows) / n,
    )


def _diff(a: Phases, b: Phases) -> Phases:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])
