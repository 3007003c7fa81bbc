"""The control loop: measured site state in, a verified limit for every charger out.

Every ``control.period_s`` (and at once when a circuit reads above its limit, a session starts or
ends, a charger connects or disconnects, or a meter changes trust) the loop:

1. installs the fail-safe profile on chargers that do not have it yet;
2. judges compliance (a charger drawing above its limit for longer than the grace is budgeted at
   its measured draw and reported);
3. builds the problem (`snapshot`), solves it in a worker thread within the solver budget,
   and verifies the answer with the optimizer's verifier; a failed, late or unverified answer
   is replaced by the fallback heuristic, and that is logged, counted and alarmed if it persists;
4. dispatches the limits, decreases first (`dispatch`).

Cycles never overlap: a trigger during a cycle starts the next one as soon as it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from optimizer import fallback
from optimizer.allocation import Allocation, Status
from optimizer.lp import Allocator
from optimizer.verify import verify
from sitectl.config import Config
from sitectl.control.applied import AppliedCheck
from sitectl.control.compliance import ComplianceCheck
from sitectl.control.dispatch import Dispatcher, DispatchReport
from sitectl.control.draw import Draw
from sitectl.control.explain import Explainer
from sitectl.control.limit_watch import LimitWatch
from sitectl.control.memory_store import ControlMemoryStore
from sitectl.control.meters import MeterState, MeterSupervisor
from sitectl.control.phase_test import PhaseTests
from sitectl.control.phases import PhaseWatch
from sitectl.control.plans import PlanWatch
from sitectl.control.response import StepResponses
from sitectl.control.snapshot import Built, ChargerMemory, ProblemBuilder
from sitectl.ocpp.observe import IN_SESSION_STATUSES
from sitectl.quirks import ChargerQuirks, effective_quirks
from sitectl.state import (
    SOLVE_BUCKETS_S,
    Change,
    CircuitStatus,
    SessionPlan,
    Severity,
    SiteState,
)
from sitectl.store import Store

__all__ = ["ControlLoop"]

#: A reconnect without a BootNotification (sitectl restarted) waits this long before sitectl
#: sends its own calls; after an accepted boot they go at once.
BOOT_GRACE_S = 3.0
#: A fail-safe install (a few SetChargingProfile calls) may take this many dispatch timeouts.
FAILSAFE_CALLS_TIMEOUT_FACTOR = 3
#: A charger clock further off than this (s) is an alarm (cleared below half of it).
CLOCK_SKEW_ALARM_S = 60.0
#: Retry a failed fail-safe install after this, doubling up to the maximum (rate limits, a
#: charger answering NotImplemented: never hammer it).
FAILSAFE_BACKOFF_S = 5.0
FAILSAFE_BACKOFF_MAX_S = 300.0

log = logging.getLogger(__name__)

_TRIGGERS = frozenset(
    {
        "override",
        "limits",  # a limit source changed its windows (override, OpenADR, §14a; issue #20)
        "session_started",
        "session_restored",
        "session_ended",
        "charger_connected",
        "profiles_cleared",
        "charger_disconnected",
        "charger_booted",
        "session_needs",
        "firmware_status",  # a charger starting or ending its install (local rollouts)
        "phase_test",  # an installer asked for a phase test: it starts at once
    }
)

#: Firmware statuses of a charger that is installing (1.6, 1.6 security whitepaper, 2.0.1).
_INSTALLING = frozenset({"Installing", "InstallRebooting"})


class ControlLoop:
    """Turns SiteState into charger limits, every period and on events.

    Args:
        config: the validated configuration.
        state: the site state (the loop subscribes to it).
        set_profile: sends a SetChargingProfile to a charger (the profile keeper's).
        unavailable: the chargers a firmware rollout has taken out of control.
        on_cycle: called after every completed cycle (the systemd watchdog).
        store: keeps the limits in force across restarts (`ControlMemoryStore`).
        on_not_supported: told of a permanent NotImplemented/NotSupported answer (the probe).
        call: sends one of sitectl's calls to a charger (the OCPP server's); with it, the
            closed-loop check asks chargers what they apply (`AppliedCheck`).
        phase_tests: the on-demand phase tests the commands start (made here if not given).
        wall_clock: UTC now; monotonic: seconds (both injectable for tests).
        plan_clock: the time the plan is made for (departures, tariffs, limit windows, their
            audit), the wall clock unless given: a scenario runs it faster, with the simulated
            vehicles' energy sped up to match, to play an hour of limit windows in a minute
            while profiles stay timed on the chargers' real clocks.
    """

    name = "control"

    def __init__(
        self,
        config: Config,
        state: SiteState,
        set_profile: Callable[[str, dict[str, Any]], Any],
        unavailable: Callable[[], set[str]] | None = None,
        on_cycle: Callable[[], None] | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        store: Store | None = None,
        on_not_supported: Callable[[str, str, str], None] | None = None,
        call: Callable[..., Any] | None = None,
        phase_tests: PhaseTests | None = None,
        plan_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.control = config.control
        self.state = state
        self.unavailable = unavailable
        self.on_cycle = on_cycle
        self.wall_clock = wall_clock
        self.plan_clock = plan_clock or wall_clock
        self.monotonic = monotonic
        self.builder = ProblemBuilder(config)
        self.allocator = Allocator(known_slots=self.builder.slots())
        self.dispatcher = Dispatcher(config, set_profile, lambda c: state.chargers[c].ocpp_version)
        # What each charger is known to do (its quirk file narrowed by its probe, issue #17).
        pins = {c.id: getattr(c, "quirks", None) for c in config.chargers}
        # Cached (27 µs each, asked several times per charger per cycle); a boot or a probe
        # answer forgets a charger's entry (`_on_change`).
        self._quirks: dict[str, ChargerQuirks] = {}

        def quirks(charger_id: str) -> ChargerQuirks:
            found = self._quirks.get(charger_id)
            if found is None:
                found = effective_quirks(state.chargers[charger_id], pins.get(charger_id))
                self._quirks[charger_id] = found
            return found

        self.dispatcher.quirks = quirks
        self.builder.held_minimum_a = self.dispatcher.held_minimum_a
        self.on_not_supported = on_not_supported
        self.memory: dict[str, ChargerMemory] = {c.id: ChargerMemory() for c in config.chargers}
        self.compliance = ComplianceCheck(self.control, state, self.memory, self.builder.chargers)
        self.responses = StepResponses(state, self.memory)
        self.builder.ramp_hold_s = lambda charger_id: self.responses.hold_s(
            charger_id, self.control.ramp_down_s
        )
        # The limits in force from the last run (issue #17.6): budgets and decrease-first hold
        # from the first cycle after a restart.
        self.kept = ControlMemoryStore(store) if store is not None else None
        if self.kept is not None:
            self._keep(
                self.kept.load,
                self.memory,
                wall_clock(),
                monotonic(),
                self.control.profile_validity_s,
            )
        self.meters = MeterSupervisor(
            self.control.meter_grace_s,
            self.control.failsafe_hold_s,
            self.control.good_readings_to_recover,
        )
        self.device_circuits: dict[str, list[str]] = {}
        #: Devices whose CTs are labelled differently from the site's phases.
        self.phase_maps = {
            d.name: d.site_phases for d in config.devices if d.site_phases != (0, 1, 2)
        }
        for circuit, device in self.builder.meters.items():
            if device is not None:
                self.meters.watch(circuit)
                self.device_circuits.setdefault(device, []).append(circuit)
        self.limits_a = config.circuit_limits_a()
        self.phase_watch = PhaseWatch(config)
        self.plan_watch = PlanWatch(state, self.builder.horizon.zone)  # forecasts, late alarm
        self.explainer = Explainer(state)  # why each limited session gets what it gets
        # Every limit window starting, changing, ending; silent sources (issue #20.4).
        self.limit_watch = LimitWatch(state, store, self.control.limit_history_days)
        self.phase_tests = phase_tests if phase_tests is not None else PhaseTests(config, state)
        self._wake = asyncio.Event()
        self.last: tuple[Built, Allocation, DispatchReport] | None = None
        self.cycle_done = asyncio.Event()  # set after every cycle (tests wait on it)
        self._failsafe_tasks: dict[str, asyncio.Task[None]] = {}
        nominal = config.site.nominal_voltage_v
        self.applied = (
            AppliedCheck(
                config,
                state,
                self.memory,
                call,
                self.dispatcher.quirks,
                self._single_level,
                monotonic,
                wall_clock,
                lambda: min(self.dispatcher.voltage_v, nominal),
            )
            if call is not None
            else None
        )
        if self.applied is not None:
            self.applied.single_level_of = self.dispatcher.single_level
            self.applied.mistimed = self.dispatcher.mistimed
        state.subscribe(self._on_change)

    # Triggers.

    def trigger(self) -> None:
        """Run a cycle as soon as possible."""
        self._wake.set()

    def _on_change(self, change: Change) -> None:
        if change.kind in ("charger_booted", "capabilities"):
            self._quirks.pop(change.subject, None)
        if change.kind in _TRIGGERS:
            if change.kind == "charger_disconnected":
                self.memory[change.subject].disconnected_at = self.monotonic()
                self.memory[change.subject].failsafe_installed = False
            elif change.kind == "profiles_cleared":
                # The CSMS cleared profiles on it, perhaps sitectl's too: the charger may hold
                # nothing now. Budgeted at its maximum until its fail-safe is back, then sent its
                # *current* limit (never a remembered one, issue #17.4).
                mem = self.memory[change.subject]
                mem.failsafe_installed = mem.failsafe_ever = False
                mem.commanded_a = mem.commanded_at = None
                if self.kept is not None:
                    self._keep(self.kept.failsafe_lost, change.subject, self.wall_clock())
            elif change.kind == "charger_connected":
                mem = self.memory[change.subject]
                mem.disconnected_at = None
                mem.connected_at = self.monotonic()
                mem.failsafe_retry_at = 0.0  # a new connection: try at once
            self.trigger()
        elif change.kind == "reading":
            self._reading(change.subject)

    def _reading(self, device: str) -> None:
        reading = self._on_site_phases(device, self.state.readings.get(device))
        now = self.monotonic()
        for circuit in self.device_circuits.get(device, []):
            changed = self.meters.reading(circuit, reading, now)
            if changed is not None:
                self._meter_changed(circuit, changed)
                self.trigger()
            currents = getattr(reading, "current_a", None)
            status = self.state.control.circuits.get(circuit)  # a lower window counts too
            in_force = status.limit_a if status is not None else self.limits_a[circuit]
            if (
                getattr(reading, "ok", False)
                and currents is not None
                and any((a or 0.0) > limit for a, limit in zip(currents, in_force, strict=True))
            ):
                self.trigger()  # overload: act now, not at the next period

    def _phases(self, draws: dict[str, dict[int, Draw]], built: Built, now_mono: float) -> None:
        """Feed the phase watch; alarm on a charger wired unlike its configuration."""
        per_charger: dict[str, tuple[float, float, float]] = {}
        for charger_id, connectors in draws.items():
            if not connectors:
                charger = self.state.chargers[charger_id]
                idle = charger.connected and all(
                    c.session is None and c.status not in IN_SESSION_STATUSES
                    for c in charger.connectors.values()
                )
                if idle:
                    per_charger[charger_id] = (0.0, 0.0, 0.0)  # nothing plugged in: quiet
                continue
            total = [0.0, 0.0, 0.0]
            for draw in connectors.values():
                for k in range(3):
                    total[k] += draw.est[k]
            per_charger[charger_id] = (total[0], total[1], total[2])
        tests = self.phase_tests
        findings = self.phase_watch.observe(per_charger, built.measured, tests.running())
        held = {c: mem.commanded_a for c, mem in self.memory.items()}
        findings += tests.cycle(
            self.phase_watch, per_charger, built.measured, held, built.steerable, now_mono
        )
        for finding in findings:
            if finding.matches:
                log.info(
                    "%s: wiring confirmed by the meter (%s)",
                    finding.charger_id,
                    finding.describe().split(", but")[0],
                )
                self.state.clear_alarm("phase_rotation_mismatch", finding.charger_id)
            else:
                self.state.raise_alarm(
                    "phase_rotation_mismatch",
                    finding.charger_id,
                    Severity.WARNING,
                    f"{finding.describe()} (seen by the meter on unbalanced steps): fix "
                    "phase_rotation or the wiring; until then the unmetered phases may carry "
                    "more than sitectl plans",
                )

    def _keep(self, write: Callable[..., Any], *args: Any) -> None:
        """Run a control-memory write; a failing store must not stop control."""
        try:
            write(*args)
        except Exception as exc:
            log.warning("control memory not kept (%s: %s)", type(exc).__name__, exc)

    def _on_site_phases(self, device: str, reading: Any) -> Any:
        """A reading with its per-phase values in site phase order (the device's phase_map)."""
        order = self.phase_maps.get(device)
        if order is None or reading is None:
            return reading
        changes = {}
        for name in ("current_a", "voltage_v", "power_kw"):
            values = getattr(reading, name, None)
            if values is not None:
                site = [0.0, 0.0, 0.0]
                for k, phase in enumerate(order):
                    site[phase] = values[k]
                changes[name] = (site[0], site[1], site[2])
        return dataclasses.replace(reading, **changes) if changes else reading

    def _meter_changed(self, circuit: str, state: MeterState) -> None:
        if state is MeterState.FAILED:
            log.warning(
                "meter of %s not trusted (%s): fail-safe budget",
                circuit,
                self.meters.reason(circuit),
            )
            self.state.raise_alarm(
                "meter_failed",
                circuit,
                Severity.WARNING,
                f"meter not trusted ({self.meters.reason(circuit)}); "
                "circuit on its fail-safe budget",
            )
        else:
            log.info("meter of %s trusted again", circuit)
            self.state.clear_alarm("meter_failed", circuit)

    # The loop.

    async def run(self) -> None:
        """Cycle until cancelled."""
        try:
            await self._run()
        finally:
            for task in self._failsafe_tasks.values():
                task.cancel()
            if self.applied is not None:
                self.applied.cancel()

    @property
    def triggered(self) -> bool:
        """Whether something asked for a cycle since the last one began (an event, an
        overload): `run` starts one at once; a driver in simulated time polls this."""
        return self._wake.is_set()

    async def turn(self) -> bool:
        """One turn of `run`, without its wait: clear the triggers, run a cycle (a failing
        one is logged, not raised), feed the watchdog, tell the waiters.

        `run` calls it every period and on triggers; ``sitectl simulate`` calls it in
        simulated time (`sitectl.whatif`). Returns whether the cycle completed.
        """
        self._wake.clear()
        try:
            await self.cycle()
        except Exception:
            # One bad cycle must not end control: the chargers keep their last limits
            # (until validity lapses to the fail-safe) and the next cycle tries again.
            log.exception("control cycle failed")
            completed = False
        else:
            if self.on_cycle is not None:
                # The service watchdog is fed from here, after a completed cycle, so a
                # stuck or failing control loop gets the process restarted.
                self.on_cycle()
            completed = True
        self.cycle_done.set()
        return completed

    async def _run(self) -> None:
        while True:
            started = self.monotonic()
            await self.turn()
            remaining = self.control.period_s - (self.monotonic() - started)
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):  # not wait_for: see ChargerLink._timer
                        await self._wake.wait()

    async def cycle(self) -> None:
        """One control cycle."""
        now, now_mono, plan_now = self.wall_clock(), self.monotonic(), self.plan_clock()
        self._mark_unavailable()
        try:
            self.limit_watch.tick(plan_now)
        except Exception:  # the audit must never cost control
            log.exception("limit audit failed this cycle")
        for circuit in self.meters.tracks:
            changed = self.meters.update(circuit, now_mono)
            if changed is not None:
                self._meter_changed(circuit, changed)
        self._install_failsafes(now, now_mono)
        # Chargers holding sitectl's fail-safe as this cycle is built (installs finish in the
        # background, so the flag may change before the dispatch): only these get limits.
        secured = {c for c, mem in self.memory.items() if mem.failsafe_installed}
        draws = self.builder.draws(self.state, now_mono)
        self.compliance.check(draws, now_mono)
        self.responses.observe(draws, now_mono)
        built = self.builder.build(self.state, self.meters, self.memory, plan_now, now_mono, draws)
        for circuit in built.implausible:
            self._meter_changed(circuit, MeterState.FAILED)
        self._unmatched(built, now_mono)
        self._phases(draws, built, now_mono)
        self.dispatcher.voltage_v = built.voltage_v
        self._clocks()
        allocation = await self._solve(built)
        # A phase test's bounds only lower limits (sitectl.control.phase_test).
        limits = self.phase_tests.bound(self._limits(built, allocation, now_mono, secured))
        # One that reconnected while this cycle was solved holds no fail-safe yet: its limit
        # waits for the next cycle, after its fail-safe (issue #17.9).
        limits = {c: v for c, v in limits.items() if self.memory[c].failsafe_installed}
        commands = self.dispatcher.plan(limits, self.memory, now_mono)
        report = await self.dispatcher.send(commands, self.memory, now, now_mono)
        self._after_dispatch(report)
        if self.applied is not None:
            for command in report.sent:
                if command.kind != "refresh":
                    self.applied.changed(command.charger_id, now_mono)
            self.applied.tick(now_mono)
        if self.kept is not None and report.sent:
            sent = [(c.charger_id, c.limit_a) for c in report.sent]
            self._keep(self.kept.limits_sent, sent, now, self.control.profile_validity_s)
        self._publish(built, allocation, now, plan_now)
        self.last = (built, allocation, report)

    def _mark_unavailable(self) -> None:
        # A local rollout's chargers in their install phase, and any charger that reports
        # installing (an update the CSMS sent) while it has no session (reference F10).
        updating = set(self.unavailable()) if self.unavailable is not None else set()
        for charger_id, charger in self.state.chargers.items():
            if charger.firmware_status in _INSTALLING and not any(
                c.session for c in charger.connectors.values()
            ):
                updating.add(charger_id)
        for charger_id, mem in self.memory.items():
            now_unavailable = charger_id in updating
            if now_unavailable and not mem.unavailable:
                log.info("%s is installing firmware: no limits sent, draw budgeted", charger_id)
            elif mem.unavailable and not now_unavailable:
                log.info("%s is back from its firmware install: steered again", charger_id)
            mem.unavailable = now_unavailable

    def _install_failsafes(self, now: datetime, now_mono: float) -> None:
        """Start a background install for every connected charger without its fail-safe.

        The cycle never waits on one (a charger whose socket answers pings while its OCPP
        stack is stuck would stall every other charger's control, issue #17.2); until its
        install succeeds a charger is not steered and is budgeted at what it may hold.
        """
        for charger_id, charger in self.state.chargers.items():
            mem = self.memory[charger_id]
            running = self._failsafe_tasks.get(charger_id)
            if (
                not charger.connected
                or mem.failsafe_installed
                or (running is not None and not running.done())
                or now_mono < mem.failsafe_retry_at
            ):
                continue
            connected_for = now_mono - (
                mem.connected_at if mem.connected_at is not None else now_mono
            )
            if not charger.boot_accepted and connected_for < BOOT_GRACE_S:
                # Real stations refuse (and never answer) calls before their boot is accepted;
                # a reconnect without a boot (sitectl restarted) gets a short grace instead.
                continue
            self._failsafe_tasks[charger_id] = asyncio.create_task(
                self._install_failsafe(charger_id, now), name=f"fail-safe {charger_id}"
            )

    async def _install_failsafe(self, charger_id: str, now: datetime) -> None:
        mem = self.memory[charger_id]
        timeout = FAILSAFE_CALLS_TIMEOUT_FACTOR * self.control.dispatch_timeout_s
        try:
            async with asyncio.timeout(timeout):
                problem = await self.dispatcher.install_failsafe(charger_id, now)
        except TimeoutError:
            problem = f"no answer within {timeout:g} s"
        except Exception as exc:  # this charger only
            problem = f"{type(exc).__name__}: {exc}"
        if not self.state.chargers[charger_id].connected:
            return  # it left meanwhile: tried again on its next connection
        if problem is None:
            mem.failsafe_installed = mem.failsafe_ever = True
            if self.kept is not None:
                self._keep(self.kept.failsafe_installed, charger_id, self.wall_clock())
            mem.failsafe_failures = 0
            if self.applied is not None:
                self.applied.changed(charger_id, self.monotonic())
            self.state.clear_alarm("failsafe_not_installed", charger_id)
            self.trigger()  # it can be steered now
            return
        permanent = next(
            (code for code in ("NotImplemented", "NotSupported") if code in problem), None
        )
        if permanent is not None and self.on_not_supported is not None:
            # A permanent answer: recorded as a capability (the probe), retried only slowly.
            self.on_not_supported(charger_id, "SetChargingProfile", permanent)
        mem.failsafe_failures += 1
        backoff = min(FAILSAFE_BACKOFF_MAX_S, FAILSAFE_BACKOFF_S * 2 ** (mem.failsafe_failures - 1))
        mem.failsafe_retry_at = self.monotonic() + backoff
        self.state.raise_alarm(
            "failsafe_not_installed",
            charger_id,
            Severity.WARNING,
            f"its fail-safe profile was not installed ({problem}): not steered, budgeted at "
            f"{'its maximum' if not mem.failsafe_ever else 'the limit it holds'}; next try in "
            f"{backoff:g} s",
        )

    def _single_level(self, charger_id: str) -> None:
        """The closed-loop check found a charger ignoring the dynamic stack level."""
        self.dispatcher.single_level_learned.add(charger_id)
        self.memory[charger_id].commanded_at = None  # re-sent next cycle, as one profile
        if self.applied is not None:
            self.applied.changed(charger_id, self.monotonic() + self.control.period_s)
        self.trigger()

    async def _solve(self, built: Built) -> Allocation:
        problem = built.problem
        try:
            allocation = await asyncio.to_thread(
                self.allocator.solve, problem, self.control.solver_budget_s
            )
        except Exception as exc:
            log.exception("optimizer failed; using the fallback")
            allocation = fallback.allocate(problem)
            allocation = Allocation(
                allocation.dispatch_a,
                allocation.plan_a,
                allocation.energy_kwh,
                Status.SOLVER_ERROR,
                "fallback",
                detail=str(exc),
            )
        violations = verify(problem, allocation)
        if violations:
            log.error("allocation failed verification (%s); using the fallback", violations[0])
            allocation = fallback.allocate(problem)
            violations = verify(problem, allocation)
        if violations:
            # Never send what does not verify: pause everything this cycle.
            log.critical(
                "fallback failed verification too (%s); pausing all sessions", violations[0]
            )
            self.state.raise_alarm(
                "allocation_invalid",
                "site",
                Severity.CRITICAL,
                f"no verified allocation: {violations[0]}",
            )
            zero = dict.fromkeys(allocation.dispatch_a, 0.0)
            allocation = Allocation(
                zero,
                allocation.plan_a * 0,
                dict.fromkeys(zero, 0.0),
                Status.FALLBACK,
                "fallback",
                detail="all paused",
            )
        else:
            self.state.clear_alarm("allocation_invalid", "site")
        status = self.state.control
        total = sum(allocation.dispatch_a.values())
        if allocation.method == "fallback":
            status.fallback_reason = (
                f"{allocation.status}: {allocation.detail}"
                if allocation.detail
                else str(allocation.status)
            )
            last = status.last_lp_dispatch_a
            status.fallback_shortfall_pct = max(0.0, 100 * (last - total) / last) if last else None
            status.fallback_count += 1
            status.consecutive_fallbacks += 1
            log.warning("fallback allocation in use (%s: %s)", allocation.status, allocation.detail)
            if status.consecutive_fallbacks >= self.control.fallback_alarm_after:
                self.state.raise_alarm(
                    "fallback_solver",
                    "site",
                    Severity.WARNING,
                    f"the optimizer has failed {status.consecutive_fallbacks}"
                    f" cycles in a row ({status.fallback_reason}); the fallback dispatches "
                    + (
                        f"{status.fallback_shortfall_pct:.0f} % less current than the last optimum"
                        if status.fallback_shortfall_pct is not None
                        else "a safe but less good allocation"
                    ),
                )
        else:
            status.consecutive_fallbacks = 0
            status.fallback_reason = status.fallback_shortfall_pct = None
            status.last_lp_dispatch_a = total
            self.state.clear_alarm("fallback_solver", "site")
        return allocation

    def _unmatched(self, built: Built, now_mono: float) -> None:
        """Alarm on connectors in use whose transaction stays unknown (they get a floor)."""
        grace = max(3 * self.control.period_s, 30.0)
        for charger_id, charger in self.state.chargers.items():
            mem = self.memory[charger_id]
            for connector in charger.connectors.values():
                key = connector.connector_id
                subject = f"{charger_id}/{key}"
                waiting = (
                    charger.connected
                    and connector.session is None
                    and connector.status in IN_SESSION_STATUSES
                )
                if not waiting:
                    if mem.unmatched_since.pop(key, None) is not None:
                        self.state.clear_alarm("session_unmatched", subject)
                    continue
                since = mem.unmatched_since.setdefault(key, now_mono)
                if now_mono - since >= grace:
                    floor = built.floors.get(subject, 0.0)
                    self.state.raise_alarm(
                        "session_unmatched",
                        subject,
                        Severity.WARNING,
                        f"reports {connector.status} but no transaction is known (sitectl "
                        f"restarted mid-session?); budgeted with at least {floor:g} A and "
                        "charged as a session of unknown need",
                    )

    def _clocks(self) -> None:
        """Pass each charger's clock skew to the dispatcher; alarm on a large one."""
        skews: dict[str, float] = {}
        for charger_id, charger in self.state.chargers.items():
            skew = charger.clock_skew_s
            if skew is None:
                continue
            skews[charger_id] = skew
            if abs(skew) > CLOCK_SKEW_ALARM_S:
                self.state.raise_alarm(
                    "charger_clock_skew",
                    charger_id,
                    Severity.WARNING,
                    f"its clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
                    "sitectl's: profiles are timed on its clock; fix its time source (NTP)",
                )
            elif abs(skew) < CLOCK_SKEW_ALARM_S / 2:
                self.state.clear_alarm("charger_clock_skew", charger_id)
        self.dispatcher.clock_skew_s = skews

    def _limits(
        self, built: Built, allocation: Allocation, now_mono: float, secured: set[str]
    ) -> dict[str, tuple[float, dict[int, float]]]:
        """Charger-wide and per-connector limits from the dispatch (A per phase)."""
        per_connector: dict[str, dict[int, float]] = {c: {} for c in built.steerable}
        for session_id, amps in allocation.dispatch_a.items():
            charger_id, connector = built.sessions[session_id]
            amps += built.floors.get(session_id, 0.0)  # reserved below the LP's share
            per_connector[charger_id][connector] = amps
            mem = self.memory[charger_id]
            if amps <= 0 and connector not in mem.paused_since:
                mem.paused_since[connector] = now_mono
                mem.resumed_at.pop(connector, None)
            elif amps > 0 and connector in mem.paused_since:
                del mem.paused_since[connector]
                mem.resumed_at[connector] = now_mono
        limits: dict[str, tuple[float, dict[int, float]]] = {}
        for charger_id, connectors in per_connector.items():
            # The charger-wide cap is the connectors' sum: per phase exact for one connector,
            # and for several (each with its own TxDefaultProfile) their total.
            limits[charger_id] = (sum(connectors.values()), connectors)
        for charger_id, phases in built.fixed.items():
            # Chargers budgeted as fixed loads still get a limit equal to their budget: an
            # uncontrollable one shows by accepting that it can be steered again, and a
            # non-compliant one keeps a limit it may start to follow.
            mem = self.memory[charger_id]
            if not self.state.chargers[charger_id].connected or mem.unavailable:
                continue  # an installing charger is sent nothing until it is back
            if charger_id not in secured:
                # Without its fail-safe a dynamic limit would outlive sitectl as nothing: the
                # charger would fall back to its hardware maximum (issue #17.3).
                continue
            if mem.uncontrollable:
                amps = self.builder.chargers[charger_id].max_current_a
            elif mem.commanded_a is not None:
                amps = mem.commanded_a  # not raised to its draw: it is judged against this
            else:
                amps = max(phases)
            limits[charger_id] = (amps, {})
        return limits

    def _after_dispatch(self, report: DispatchReport) -> None:
        for charger_id, problem in report.failed.items():
            if self.memory[charger_id].uncontrollable:
                self.state.chargers[charger_id].compliance = "uncontrollable"
                self.state.raise_alarm(
                    "charger_uncontrollable",
                    charger_id,
                    Severity.WARNING,
                    f"profile not accepted ({problem}); budgeted at its maximum",
                )
        for command in report.sent:
            charger = self.state.chargers[command.charger_id]
            charger.limit_a = command.limit_a
            if charger.compliance == "uncontrollable":
                charger.compliance = "ok"
                self.state.clear_alarm("charger_uncontrollable", command.charger_id)

    # Status for the uplink and the API.

    def _publish(
        self, built: Built, allocation: Allocation, now: datetime, plan_now: datetime
    ) -> None:
        status = self.state.control
        status.cycles += 1
        status.last_cycle_at = now
        status.last_solve_s = allocation.solve_s
        status.solve_s_total += allocation.solve_s
        for k, bound in enumerate(SOLVE_BUCKETS_S):
            if allocation.solve_s <= bound:
                status.solve_buckets[k] += 1
                break
        status.method = allocation.method
        status.status = str(allocation.status)
        status.sessions_charging = sum(1 for a in allocation.dispatch_a.values() if a > 0)
        status.sessions_paused = sum(1 for a in allocation.dispatch_a.values() if a <= 0)
        planned: dict[str, list[float]] = {node: [0.0, 0.0, 0.0] for node in self.limits_a}

        def add_up(node: str | None, phases: tuple[float, float, float]) -> None:
            while node is not None:
                if node in planned:
                    for k in range(3):
                        planned[node][k] += phases[k]
                node = self.builder.parents.get(node)

        for load in built.problem.loads:
            # Non-EV loads hang off circuits; fixed, over-draw and floor loads off chargers.
            node = load.node
            if node.startswith("charger:"):
                node = self.builder.chargers[node.removeprefix("charger:")].circuit
            add_up(node, (load.current_a[0][0], load.current_a[1][0], load.current_a[2][0]))
        plans: dict[str, SessionPlan] = {}
        why = self.explainer(
            built,
            allocation,
            memory=self.memory,
            builder=self.builder,
            now=plan_now,
            now_mono=self.monotonic(),
        )
        for session in built.problem.sessions:
            amps = allocation.dispatch_a.get(session.id, 0.0)
            info = built.info.get(session.id)
            if info is not None:
                plans[session.id] = SessionPlan(
                    info.departure,
                    info.departure_source,
                    info.need_kwh,
                    info.need_source,
                    info.capped,
                    amps + built.floors.get(session.id, 0.0),
                    limited_by=why.get(session.id, ()),
                )
            phases = [0.0, 0.0, 0.0]
            for p in session.phases:
                phases[p] = amps
            charger_id, _ = built.sessions[session.id]
            add_up(self.builder.chargers[charger_id].circuit, (phases[0], phases[1], phases[2]))
        status.sessions = plans
        self.plan_watch.update(built.problem, allocation, plan_now, built.sessions, built.floors)
        for node, limit in self.builder.effective_limits(self.state, plan_now).items():
            meter = (
                "none" if self.builder.meters.get(node) is None else self.meters.state(node).value
            )
            status.circuits[node] = CircuitStatus(
                limit_a=limit,
                measured_a=built.measured.get(node),
                non_ev_a=built.non_ev.get(node, (0.0, 0.0, 0.0)),
                planned_a=(planned[node][0], planned[node][1], planned[node][2]),
                meter_state=meter,
            )
