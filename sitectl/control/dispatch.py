"""Dispatch: from a verified allocation to charging profiles on the chargers, safely.

Rules (DESIGN.md safety model; reference D3, S20, S26–S28):

- **Decreases first.** Every lower limit goes out and must be accepted (within
  ``dispatch_timeout_s``) before any higher limit is sent. If a decrease fails (rejected, timeout,
  charger gone) no increase is sent this cycle: the commanded sum never exceeds a limit, even
  transiently. A charger that refused a profile is marked uncontrollable and is budgeted at its
  maximum until it accepts again.
- **Deadband and rate.** An increase smaller than ``deadband_a`` is skipped (keeping the lower,
  verified limit is always safe); an unchanged limit is re-sent only when its validity would
  otherwise lapse within two control periods. A limit at or below the charger's fail-safe is
  given ``low_limit_validity_s`` (1 h) instead of ``profile_validity_s``: outliving sitectl it
  is no worse than the fail-safe, and a paused charger is not written every 20 s (flash wear).
  At most one profile per charger per cycle.
- **Limits** are rounded down to 0.1 A, and are 0 or at least the charger's minimum.
- **Fail-safe** profiles are installed once per connection, before any dynamic limit.
- **Quirks** (`sitectl.quirks`, when the loop sets `Dispatcher.quirks`): a charger's own minimum
  current raises the floor; an increase or an unchanged limit is not written again sooner than its
  ``min_write_interval_s`` (flash wear, rate limits; issue #17.8), a decrease always is; and a
  Rejected refresh or increase inside that interval is a rate limit, not a refusal: the charger
  keeps the lower limit it accepted and is not marked uncontrollable.

All profiles go through the `ProfileKeeper`, so a CSMS clear cannot wipe them for long.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sitectl.config import ChargerConfig, Config
from sitectl.control.memory import ChargerMemory
from sitectl.control.snapshot import efficiency
from sitectl.ocpp.profiles import ProfileIds, ProfileSpec, build_set_profile, round_limit
from sitectl.quirks import ChargerQuirks

__all__ = ["Command", "DispatchReport", "Dispatcher"]

log = logging.getLogger(__name__)

SetProfile = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Command:
    """A new dynamic limit for one charger."""

    charger_id: str
    limit_a: float  # charger-wide, A per phase (rounded)
    connectors: Mapping[int, float]  # per connector (multi-connector chargers only)
    previous_a: float | None
    kind: str  # "decrease", "increase" or "refresh"


@dataclass
class DispatchReport:
    """What one dispatch did."""

    sent: list[Command]
    failed: dict[str, str]  # charger -> why
    skipped_increases: bool = False
    deferred_increases: int = 0  # increases held for a cycle after a large decrease
    order: list[str] | None = None  # charger ids in the order their profiles went out


#: Decreases that free this much (A per phase, summed) defer the cycle's increases by a cycle;
#: smaller ones (the noise of a re-plan) do not, or increases would never go out.
DEFER_INCREASES_FREED_A = 2.0
#: A charger clock this far from the skew its limit was timed with gets the limit again (s).
SKEW_RETIME_S = 5.0


class Dispatcher:
    """Turns per-charger limits into profiles and sends them in a safe order.

    Args:
        config: the validated configuration.
        set_profile: sends a SetChargingProfile and returns the answer (the keeper's).
        versions: the OCPP version each charger speaks (read when a profile is built).
    """

    def __init__(
        self, config: Config, set_profile: SetProfile, versions: Callable[[str], str]
    ) -> None:
        self.config = config
        self.control = config.control
        self._set_profile = set_profile
        self._versions = versions
        self.chargers = {c.id: c for c in config.chargers}
        self.ids = {
            c.id: ProfileIds.for_charger(config.ocpp.profile_id_base, index)
            for index, c in enumerate(config.chargers)
        }
        self.failsafe_level, self.dynamic_level = config.ocpp.profile_stack_levels
        #: Phase voltage for a DC charger's power limit: the loop sets the lowest measured
        #: (more current per watt is the safe side); nominal until a meter says otherwise.
        self.voltage_v = config.site.nominal_voltage_v
        #: Charger id -> how far its clock is ahead of sitectl's (s); set by the loop.
        self.clock_skew_s: dict[str, float] = {}
        #: Charger id -> the skew its dynamic limit in force was timed with (s): a skew learned
        #: or changed since then re-sends the limit on the charger's real clock.
        self.timed_skew_s: dict[str, float] = {}
        #: Charger id -> its effective quirks (`sitectl.quirks.effective_quirks`); set by the
        #: loop. ``None``: the configuration alone decides, as before quirks existed.
        self.quirks: Callable[[str], ChargerQuirks] | None = None
        #: Chargers the closed-loop check found ignoring the dynamic stack level (the loop
        #: adds them): their limits go out in single-level mode (`single_level`).
        self.single_level_learned: set[str] = set()

    def _min_a(self, charger: ChargerConfig) -> float:
        if self.quirks is None:
            return charger.min_current_a
        return max(charger.min_current_a, self.quirks(charger.id).min_current_a)

    def held_minimum_a(self, charger_id: str) -> float | None:
        """The least a charger that refuses 0 A is held at (a quirk); ``None``: it pauses."""
        if self.quirks is None or not self.quirks(charger_id).refuses_zero_a:
            return None
        return self._min_a(self.chargers[charger_id])

    def mistimed(self, charger_id: str) -> bool:
        """Whether its limit in force was timed with a skew the charger's clock no longer has.

        Before a charger's first timestamp its skew is unknown (taken as 0): a charger 10 min
        behind then reads the limit as starting in the future and runs its fail-safe.
        """
        timed = self.timed_skew_s.get(charger_id)
        if timed is None:
            return False
        return abs(self.clock_skew_s.get(charger_id, 0.0) - timed) > SKEW_RETIME_S

    def _write_interval_s(self, charger_id: str) -> float:
        return 0.0 if self.quirks is None else self.quirks(charger_id).min_write_interval_s

    # Planning (pure).

    def plan(
        self,
        limits: Mapping[str, tuple[float, Mapping[int, float]]],
        memory: Mapping[str, ChargerMemory],
        now_mono: float,
    ) -> list[Command]:
        """Commands for this cycle from the wanted limits (charger-wide, per connector)."""
        commands = []
        for charger_id, (wanted, connectors) in limits.items():
            charger = self.chargers[charger_id]
            min_a = self._min_a(charger)
            limit = round_limit(wanted, min_a)
            per_connector = (
                {c: round_limit(a, min_a) for c, a in connectors.items()}
                if charger.connectors > 1
                else {}
            )
            if self.held_minimum_a(charger_id) is not None:
                # It rejects 0 A (and would be marked uncontrollable): its pause is its
                # minimum, which the problem builder reserves for a session on it (#17).
                limit = max(limit, min_a)
                per_connector = {c: max(a, min_a) for c, a in per_connector.items()}
            mem = memory[charger_id]
            previous = mem.commanded_a
            # Not written again before its interval: only a decrease is urgent (issue #17.8).
            # The refresh still comes before the validity lapses, whatever the interval.
            recent = (
                mem.commanded_at is not None
                and now_mono - mem.commanded_at < self._write_interval_s(charger_id)
            )
            if previous is None or limit < previous - 1e-9:
                kind = "decrease" if previous is not None else "increase"
                if previous is None and limit == 0:
                    kind = "decrease"
            elif (
                limit > previous + 1e-9
                and limit - previous >= self.control.deadband_a
                and not recent
            ):
                kind = "increase"
            elif any(
                per_connector.get(c, 0.0) < amps - 1e-9
                for c, amps in mem.commanded_connectors.items()
            ):
                # Same total, but one connector's share lowered (issue #17.9: only the total
                # was compared): a decrease, with the total kept where it is.
                limit, kind = min(limit, previous), "decrease"
            elif (
                mem.commanded_at is None
                or now_mono - mem.commanded_at
                >= self.validity_s(charger, previous) - 2 * self.control.period_s
                or self.mistimed(charger_id)
            ):
                limit = previous
                kind = "refresh"
            else:
                continue
            commands.append(Command(charger_id, limit, per_connector, previous, kind))
        return commands

    # Sending.

    async def install_failsafe(self, charger_id: str, now: datetime) -> str | None:
        """Install the permanent fail-safe profile(s); returns the problem, ``None`` if taken."""
        charger = self.chargers[charger_id]
        specs = [self._spec(charger, 0, charger.failsafe_current_a, dynamic=False, now=now)]
        if charger.connectors > 1:
            specs += [
                self._spec(charger, c, charger.failsafe_current_a, dynamic=False, now=now)
                for c in range(1, charger.connectors + 1)
            ]
        problem = await self._send_specs(charger_id, specs)
        if problem is not None:
            log.warning("%s: fail-safe profile not installed: %s", charger_id, problem)
            return problem
        single = self.single_level(charger_id)
        log.info(
            "%s: fail-safe limit %.1f A installed (stack level %d%s)",
            charger_id,
            charger.failsafe_current_a,
            self.failsafe_level if single is None else single,
            "" if single is None else ", single-level mode",
        )
        return None

    async def send(
        self,
        commands: list[Command],
        memory: dict[str, ChargerMemory],
        now: datetime,
        now_mono: float,
    ) -> DispatchReport:
        """Decreases first (all accepted within the timeout), then increases and refreshes."""
        report = DispatchReport([], {}, order=[])
        decreases = [c for c in commands if c.kind == "decrease"]
        others = [c for c in commands if c.kind != "decrease"]
        if decreases:
            await self._batch(decreases, memory, now, now_mono, report)
        if report.failed:
            report.skipped_increases = bool(others)
            if others:
                log.warning(
                    "not raising any limit this cycle: %d decrease(s) not accepted (%s)",
                    len(report.failed),
                    ", ".join(sorted(report.failed)),
                )
            return report
        freed = sum(
            (c.previous_a or 0.0) - c.limit_a for c in decreases if c.previous_a is not None
        )
        if freed >= DEFER_INCREASES_FREED_A:
            # "Decreases first" must order currents, not acknowledgements (#17.5): a lowered
            # charger takes seconds to come down. The headroom it frees is planned again next
            # cycle, when its ramp-down is budgeted (`ProblemBuilder._ramping`).
            deferred = [c for c in others if c.kind == "increase"]
            others = [c for c in others if c.kind != "increase"]
            report.deferred_increases = len(deferred)
        if others:
            await self._batch(others, memory, now, now_mono, report)
        return report

    async def _batch(
        self,
        commands: list[Command],
        memory: dict[str, ChargerMemory],
        now: datetime,
        now_mono: float,
        report: DispatchReport,
    ) -> None:
        tasks = {asyncio.create_task(self._one(command, now)): command for command in commands}
        assert report.order is not None
        report.order += [c.charger_id for c in commands]
        done, pending = await asyncio.wait(tasks, timeout=self.control.dispatch_timeout_s)
        for task in pending:
            task.cancel()
            command = tasks[task]
            report.failed[command.charger_id] = "no answer in time"
            memory[command.charger_id].uncontrollable = True
        for task in done:
            command = tasks[task]
            problem = task.result()
            mem = memory[command.charger_id]
            if problem is None:
                mem.record_limit(command.limit_a, now_mono)
                mem.commanded_connectors = dict(command.connectors)
                mem.uncontrollable = False
                report.sent.append(command)
            elif self._rate_limited(command, mem, problem, now_mono):
                # It keeps the (lower) limit it accepted last: not a refusal (issue #17.8).
                report.failed[command.charger_id] = f"rate limited: {problem}"
            else:
                report.failed[command.charger_id] = problem
                if command.kind == "decrease" or "refused" in problem:
                    mem.uncontrollable = True

    def _rate_limited(
        self, command: Command, mem: ChargerMemory, problem: str, now_mono: float
    ) -> bool:
        """A Rejected refresh or increase inside the charger's write interval."""
        return (
            command.kind != "decrease"
            and problem.startswith("refused (Rejected")
            and mem.commanded_at is not None
            and now_mono - mem.commanded_at < max(self._write_interval_s(command.charger_id), 0.0)
            and not mem.uncontrollable
        )

    async def _one(self, command: Command, now: datetime) -> str | None:
        """Send one charger's profiles; returns a problem description or ``None``."""
        charger = self.chargers[command.charger_id]
        specs = [self._spec(charger, 0, command.limit_a, dynamic=True, now=now)]
        specs += [
            self._spec(charger, c, amps, dynamic=True, now=now)
            for c, amps in sorted(command.connectors.items())
        ]
        if (
            self.quirks is not None
            and command.previous_a == 0
            and command.limit_a > 0
            and self.quirks(command.charger_id).ignores_limit_after_zero
        ):
            # The first limit after a 0 A pause is ignored (it resumes without a limit);
            # the one after it holds: the resume goes out twice, back to back.
            specs += specs
        return await self._send_specs(command.charger_id, specs)

    async def _send_specs(self, charger_id: str, specs: list[ProfileSpec]) -> str | None:
        """Send profiles in order; returns the first problem, or ``None`` if all accepted."""
        version = self._versions(charger_id)
        for spec in specs:
            try:
                answer = await self._set_profile(charger_id, build_set_profile(version, spec))
            except Exception as exc:  # CallFailed, schema errors: this charger only
                return f"{type(exc).__name__}: {exc}"
            if answer.get("status") != "Accepted":
                return f"refused ({answer.get('status')})"
        return None

    def validity_s(self, charger: ChargerConfig, amps: float) -> float:
        """How long a dynamic limit of `amps` is given for (s).

        A limit at or below the charger's fail-safe may outlive sitectl: the charger then draws
        no more than the fail-safe proof already allows for. So it is written rarely (issue
        #17.8: a paused charger got a profile every 20 s, 4,300 flash writes a day); a limit
        above it keeps the short validity that makes it a dead man's switch.
        """
        short = self.control.profile_validity_s
        if amps <= charger.failsafe_current_a + 1e-9:
            return max(short, self.control.low_limit_validity_s)
        return short

    def single_level(self, charger_id: str) -> int | None:
        """The one stack level a charger honours, when it is not sitectl's dynamic level.

        From its quirks (a file or its declared ChargeProfileMaxStackLevel below sitectl's
        dynamic level) or learned by the closed-loop check (`single_level_learned`): its limits
        then go out as one profile holding the limit and, after it, the fail-safe.
        """
        ceiling = self.quirks(charger_id).max_stack_level if self.quirks is not None else None
        if ceiling is not None and ceiling < self.dynamic_level:
            return min(ceiling, self.failsafe_level)
        if charger_id in self.single_level_learned:
            return self.failsafe_level
        return None

    def _spec(
        self, charger: ChargerConfig, connector: int, amps: float, dynamic: bool, now: datetime
    ) -> ProfileSpec:
        ids = self.ids[charger.id]
        single = self.single_level(charger.id)
        # In single-level mode the fail-safe's own profile id carries the limit (and replaces
        # itself at every refresh); otherwise the dynamic limit has its own id above it.
        as_dynamic = dynamic and single is None
        profile_id = ids.connector(connector, as_dynamic) if connector else ids.station(as_dynamic)
        # Schedules are read on the charger's clock: start them on its clock (issue #17.7).
        skew = self.clock_skew_s.get(charger.id, 0.0)
        now = now + timedelta(seconds=skew)
        if dynamic:
            self.timed_skew_s[charger.id] = skew
        if single is not None:
            level = single
        else:
            level = self.dynamic_level if dynamic else self.failsafe_level
        duration = int(self.validity_s(charger, amps)) if dynamic else None
        then = (
            self._value(charger, charger.failsafe_current_a)
            if dynamic and single is not None
            else None
        )
        unit, phases = ("W", 3) if charger.kind == "dc" else ("A", charger.phases)
        value = self._value(charger, amps)
        return ProfileSpec(profile_id, level, connector, value, unit, phases, duration, now, then)

    def _value(self, charger: ChargerConfig, amps: float) -> float:
        """A limit in the profile's unit: A per phase, or W of output for a DC charger."""
        if charger.kind != "dc":
            return amps
        # DC chargers are limited in output power; their AC input is three-phase and
        # balanced, and larger than the output by the efficiency: P_out = η · 3 · U · I_ac.
        volts = min(self.voltage_v, self.config.site.nominal_voltage_v)
        return math.floor(amps * 3 * volts * efficiency(charger) * 10) / 10
