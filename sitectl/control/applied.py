"""Closed loop: does each charger apply the limit sitectl gave it? (issue #17)

"The charger accepted the profile but did not apply it" is the most repeated complaint about
smart charging (a charger honouring stack level 0 only, a CSMS profile above sitectl's, a stored
profile that sticks). An accepted SetChargingProfile proves nothing; two things the charger says
afterwards do:

- its **composite schedule** (GetCompositeSchedule on connector/EVSE 0, 1.6 §5.7, 2.0.1 K08):
  asked after every accepted change of limit and every `RECHECK_S` while nothing changes
  (`RECHECK_FLAGGED_S` while a mismatch stands), in the background with a deadline, never
  holding a control cycle; at most `MAX_IN_FLIGHT` at once;
- its **Current.Offered** (MeterValues): what it offers the vehicle, judged once the charger has
  had its ramp time after the last change.

Verdicts (`AppliedFinding.verdict`), acted on by the problem builder and the dispatcher:

- ``above``: it applies more than sitectl's limit (or no limit at all). Budgeted at what it
  applies (`ChargerMemory.applied_above_a`), warning alarm ``charger_limit_not_applied`` with the
  evidence. When what it applies is its fail-safe while the dynamic limit differs, it ignores
  sitectl's dynamic stack level: learned, and its limits go out in single-level mode from then
  on (`Dispatcher.single_level`), which the next check confirms.
- ``below``: it applies less (another profile, its own derating): planned with that as its
  maximum for `BELOW_HOLD_S` (then tested again), info alarm ``charger_limit_lower``, so the
  headroom goes to vehicles that can use it.
- ``unsupported``: GetCompositeSchedule answered NotImplemented/NotSupported: not asked again
  on this connection; the measured current (the loop's compliance check) stays the evidence.

Pure bookkeeping plus one call per check; the alarms are raised through the site state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sitectl.config import ChargerConfig, Config
from sitectl.control.memory import AppliedFinding, ChargerMemory
from sitectl.control.snapshot import efficiency
from sitectl.ocpp.composite import parse_time
from sitectl.ocpp.link import CallErrorResponse
from sitectl.quirks import ChargerQuirks
from sitectl.state import Severity, SiteState

__all__ = ["AppliedCheck", "composite_now"]

log = logging.getLogger(__name__)

Caller = Callable[..., Awaitable[dict[str, Any]]]

#: A composite within this of the limit sent agrees with it (0.1 A rounding, W to A).
TOLERANCE_A = 0.5
#: Re-ask a charger whose last check agreed after this long without a change (s).
RECHECK_S = 300.0
#: Re-ask one with a mismatch standing this often (s): it may apply the limit later.
RECHECK_FLAGGED_S = 30.0
#: How long a lower applied limit is planned with before it is tested again (s).
BELOW_HOLD_S = 600.0
#: Composite-schedule calls at once, site-wide (500 chargers must not flood the event loop).
MAX_IN_FLIGHT = 8
#: A charger that sent no timestamp this long after connecting is taken to keep sitectl's
#: time when its fail-safe shows under a dynamic limit (s).
SKEW_GRACE_S = 60.0
#: The schedule asked for (s): only its first period matters.
ASK_DURATION_S = 60
#: Answers that say the charger cannot do it at all.
PERMANENT_ERRORS = ("NotImplemented", "NotSupported")


def composite_now(answer: dict[str, Any], now: datetime) -> tuple[bool, float | None, str, int]:
    """The limit a GetCompositeSchedule answer puts in force at `now`.

    Returns ``(answered, limit, unit, phases)``: ``answered`` is False when the charger would
    not compute one (status Rejected); ``limit`` is ``None`` when it answered without a
    schedule (nothing limits it); ``unit`` "A" (per phase) or "W"; ``phases`` the period's
    numberPhases (3 when not given).

    Raises:
        ValueError, KeyError, TypeError: a schedule that cannot be read (no usable period, a
            limit that is not a number): the caller takes it as not answered.
    """
    if answer.get("status") != "Accepted":
        return False, None, "A", 3
    schedule = answer.get("chargingSchedule")  # 1.6
    start_text = answer.get("scheduleStart")
    if schedule is None and isinstance(answer.get("schedule"), dict):  # 2.0.1
        schedule = answer["schedule"]
        start_text = schedule.get("scheduleStart")
    if not isinstance(schedule, dict):
        return True, None, "A", 3
    unit = "W" if schedule.get("chargingRateUnit") == "W" else "A"
    listed = schedule.get("chargingSchedulePeriod")
    periods = [p for p in listed if isinstance(p, dict)] if isinstance(listed, list) else []
    if not periods:
        # A schedule without a usable period is not an answer (the schema needs one or more).
        raise ValueError(f"no usable chargingSchedulePeriod in {str(listed)[:80]}")
    elapsed = 0.0
    start = parse_time(start_text)
    if start is not None:
        elapsed = (now - start).total_seconds()
    in_force = periods[0]
    for period in sorted(periods, key=lambda p: float(p.get("startPeriod", 0))):
        if float(period.get("startPeriod", 0)) <= elapsed:
            in_force = period
    return True, float(in_force["limit"]), unit, int(in_force.get("numberPhases") or 3)


class AppliedCheck:
    """Asks chargers what they apply and compares it with what sitectl sent.

    Args:
        config: the validated configuration.
        state: the site state (connections, measurements, alarms).
        memory: the control loop's memory of each charger (findings are written there).
        call: sends one of sitectl's calls: ``call(identity, action, payload, timeout)``.
        quirks: a charger's effective quirks (its ramp time).
        on_single_level: told when a charger is found ignoring the dynamic stack level.
        monotonic, wall_clock: the loop's clocks.
    """

    def __init__(
        self,
        config: Config,
        state: SiteState,
        memory: Mapping[str, ChargerMemory],
        call: Caller,
        quirks: Callable[[str], ChargerQuirks],
        on_single_level: Callable[[str], None],
        monotonic: Callable[[], float],
        wall_clock: Callable[[], datetime],
        voltage_v: Callable[[], float],
    ) -> None:
        self.config = config
        self.control = config.control
        self.state = state
        self.memory = memory
        self._call = call
        self._quirks = quirks
        self._on_single_level = on_single_level
        self.monotonic = monotonic
        self.wall_clock = wall_clock
        self.voltage_v = voltage_v  # the phase voltage the dispatcher turns A into W with
        self.chargers = {c.id: c for c in config.chargers}
        #: Charger id -> when its composite is due (monotonic); set on every change.
        self._due: dict[str, float] = {}
        self._last: dict[str, float] = {}  # charger id -> when last asked
        self._unsupported: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._connected_at: dict[str, float | None] = {}
        #: The stack level a charger's limits go out at as one profile, ``None``: two
        #: levels (the loop sets the dispatcher's `Dispatcher.single_level`).
        self.single_level_of: Callable[[str], int | None] = lambda charger_id: None
        #: Whether a charger's limit in force was timed with a clock skew it does not have
        #: (the dispatcher's `Dispatcher.mistimed`): then holding the fail-safe is a timing
        #: matter, not an ignored stack level.
        self.mistimed: Callable[[str], bool] = lambda charger_id: False
        self._timing_known: dict[str, bool] = {}
        #: When a charger was found ignoring the dynamic level, when its last change was
        #: accepted, and when its last composite check was asked (monotonic): an answer to
        #: a check asked before the single-level profile took is not evidence of "below".
        self._learned_at: dict[str, float] = {}
        self._changed_at: dict[str, float] = {}
        self._asked_at: dict[str, float] = {}

    # Scheduling (called by the loop every cycle; never waits).

    def changed(self, charger_id: str, now_mono: float) -> None:
        """A new limit (or fail-safe) was accepted: ask soon."""
        self._due[charger_id] = now_mono
        self._changed_at[charger_id] = now_mono

    def tick(self, now_mono: float) -> None:
        """Start the checks that are due; judge Current.Offered reports."""
        for charger_id, charger in self.state.chargers.items():
            mem = self.memory[charger_id]
            if self._connected_at.get(charger_id) != mem.connected_at:
                # A new connection: a charger that was updated may answer now.
                self._connected_at[charger_id] = mem.connected_at
                self._unsupported.discard(charger_id)
            if not charger.connected or not mem.failsafe_installed or mem.unavailable:
                continue
            self._offered(charger_id, mem, now_mono)
            if charger_id in self._unsupported:
                continue
            running = self._tasks.get(charger_id)
            if running is not None and not running.done():
                continue
            last = self._last.get(charger_id)
            flagged = mem.applied_above_a is not None or mem.applied_cap_a(now_mono) is not None
            every = RECHECK_FLAGGED_S if flagged else RECHECK_S
            due = self._due.get(charger_id)
            if due is None and last is not None and now_mono - last < every:
                continue
            if due is not None and due > now_mono:
                continue
            if sum(1 for t in self._tasks.values() if not t.done()) >= MAX_IN_FLIGHT:
                return
            self._due.pop(charger_id, None)
            self._last[charger_id] = now_mono
            self._tasks[charger_id] = asyncio.create_task(
                self._check(charger_id), name=f"applied {charger_id}"
            )

    def cancel(self) -> None:
        """Stop every check under way (the loop is stopping)."""
        for task in self._tasks.values():
            task.cancel()

    # The composite schedule.

    async def _check(self, charger_id: str) -> None:
        try:
            await self._ask(charger_id)
        except Exception:  # a bug here must not go unseen, nor stop other chargers' checks
            log.exception("%s: closed-loop check failed", charger_id)

    async def _ask(self, charger_id: str) -> None:
        charger = self.chargers[charger_id]
        mem = self.memory[charger_id]
        sent = mem.commanded_a if mem.commanded_a is not None else charger.failsafe_current_a
        version = self.state.chargers[charger_id].ocpp_version
        unit = "W" if charger.kind == "dc" else "A"
        key = "connectorId" if version == "1.6" else "evseId"
        payload = {key: 0, "duration": ASK_DURATION_S, "chargingRateUnit": unit}
        if self.mistimed(charger_id):
            # Timed with a clock skew the charger does not have: the dispatcher re-sends it on
            # the charger's clock this cycle (its fail-safe holds meanwhile); ask after that.
            self._record(charger_id, "composite", sent, "unanswered")
            self._due[charger_id] = self.monotonic() + self.control.period_s
            return
        self._asked_at[charger_id] = self.monotonic()
        # Judged as asked: a limit re-timed while the answer is on its way is not this one.
        # A charger that sent no timestamp for a while is taken to keep sitectl's time.
        connected_for = self.monotonic() - (mem.connected_at or self.monotonic())
        known = self.state.chargers[charger_id].clock_skew_s is not None
        self._timing_known[charger_id] = known or connected_for > SKEW_GRACE_S
        try:
            answer = await self._call(
                charger_id, "GetCompositeSchedule", payload, self.control.dispatch_timeout_s
            )
        except CallErrorResponse as exc:
            if exc.code in PERMANENT_ERRORS:
                self._unsupported.add(charger_id)
                log.info(
                    "%s: no composite schedule (%s): judged by its current", charger_id, exc.code
                )
                self._record(charger_id, "composite", sent, "unsupported")
            else:
                log.info("%s: composite schedule refused: %s", charger_id, exc)
                self._record(charger_id, "composite", sent, "unanswered")
            return
        except Exception as exc:  # offline, timeout, a bad answer: this charger only
            log.info("%s: composite schedule not answered: %s", charger_id, exc)
            self._record(charger_id, "composite", sent, "unanswered")
            return
        now_sent = mem.commanded_a if mem.commanded_a is not None else charger.failsafe_current_a
        if now_sent != sent:
            self._due[charger_id] = self.monotonic()  # changed meanwhile: ask again
            return
        skew = self.state.chargers[charger_id].clock_skew_s or 0.0
        at = self.wall_clock() + timedelta(seconds=skew)  # its schedule is on its clock
        try:
            answered, applied, unit, phases = composite_now(answer, at)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: composite schedule not understood: %s", charger_id, exc)
            answered = False
        if not answered:
            self._record(charger_id, "composite", sent, "unanswered")
            return
        self.judge(charger_id, "composite", sent, self._amps(charger, applied, unit, phases))
        await self._connectors(charger_id, charger, mem, key, at)

    def _amps(
        self, charger: ChargerConfig, applied: float | None, unit: str, phases: int
    ) -> float | None:
        if applied is not None and unit == "W":
            # Watts back to A per phase the way the dispatcher turned A into W (a DC
            # charger's limit is on its output: its AC input is more by 1/η).
            eta = efficiency(charger) if charger.kind == "dc" else 1.0
            applied /= (3 if charger.kind == "dc" else phases) * self.voltage_v() * eta
        return applied

    async def _connectors(
        self, charger_id: str, charger: ChargerConfig, mem: ChargerMemory, key: str, at: datetime
    ) -> None:
        """A twin charger's per-connector shares, checked on each connector in use (#17.9).

        Connector 0 proves the charger's total; a charger that ignores the per-connector
        profiles lets one vehicle take the other's share (the total still holds, so the
        budget stands): an info alarm says so, and the API shows each connector's finding.
        """
        shares = dict(mem.commanded_connectors)
        if charger.connectors < 2 or not shares:
            return
        unit = "W" if charger.kind == "dc" else "A"
        connectors = self.state.chargers[charger_id].connectors
        found: dict[str, Any] = {}
        over: list[str] = []
        for connector_id, share in sorted(shares.items()):
            connector = connectors.get(connector_id)
            if connector is None or connector.session is None:
                continue
            payload = {key: connector_id, "duration": ASK_DURATION_S, "chargingRateUnit": unit}
            try:
                answer = await self._call(
                    charger_id, "GetCompositeSchedule", payload, self.control.dispatch_timeout_s
                )
                answered, applied, answered_unit, phases = composite_now(answer, at)
            except Exception as exc:  # this connector unanswered: no evidence either way
                log.info(
                    "%s/%d: composite schedule not answered: %s", charger_id, connector_id, exc
                )
                continue
            if not answered or mem.commanded_connectors.get(connector_id) != share:
                continue  # refused, or the share changed meanwhile
            amps = self._amps(charger, applied, answered_unit, phases)
            effective = charger.max_current_a if amps is None else min(amps, charger.max_current_a)
            found[str(connector_id)] = {"sent_a": share, "applied_a": amps}
            if effective > share + TOLERANCE_A:
                shown = "no limit" if amps is None else f"{amps:.1f} A"
                over.append(f"connector {connector_id} applies {shown}, its share is {share:.1f} A")
        if found:
            self.state.chargers[charger_id].applied["connectors"] = found
        if over:
            if self.state.raise_alarm(
                "connector_share_not_applied",
                charger_id,
                Severity.INFO,
                "; ".join(over) + " (the charger's total holds)",
            ):
                log.info("%s: %s", charger_id, "; ".join(over))
        elif found:
            self.state.clear_alarm("connector_share_not_applied", charger_id)

    # Current.Offered.

    def _offered(self, charger_id: str, mem: ChargerMemory, now_mono: float) -> None:
        if mem.commanded_a is None or not mem.limit_history:
            return
        settle = self._quirks(charger_id).ramp_up_s + 2 * self.control.period_s
        changed_at = mem.limit_history[-1][0]
        if now_mono - changed_at < settle:
            return
        offered = [
            c.offered_a
            for c in self.state.chargers[charger_id].connectors.values()
            if c.session is not None
            and c.offered_a is not None
            and c.offered_mono is not None
            and c.offered_mono > changed_at + settle
        ]
        if not offered:
            return
        highest = max(offered)
        if highest > mem.commanded_a + TOLERANCE_A:
            self.judge(charger_id, "offered", mem.commanded_a, highest)
        elif mem.applied is not None and mem.applied.source == "offered":
            self.judge(charger_id, "offered", mem.commanded_a, mem.commanded_a)

    # Verdicts.

    def judge(self, charger_id: str, source: str, sent: float, applied: float | None) -> None:
        """Record one piece of evidence and act on it (alarms, budgets, single-level mode)."""
        charger = self.chargers[charger_id]
        mem = self.memory[charger_id]
        now, now_mono = self.wall_clock(), self.monotonic()
        ceiling = charger.max_current_a
        effective = ceiling if applied is None else min(applied, ceiling)
        if effective > sent + TOLERANCE_A:
            verdict = "above"
        elif effective < sent - TOLERANCE_A:
            verdict = "below"
        else:
            verdict = "ok"
        mem.applied = AppliedFinding(now, source, sent, applied, verdict)
        try:
            self._judge(charger_id, charger, mem, source, sent, applied, effective, verdict)
        finally:
            self._show(charger_id, mem, now_mono)

    def _record(self, charger_id: str, source: str, sent: float, verdict: str) -> None:
        """A check without evidence: the budgets stay as the last evidence left them."""
        mem = self.memory[charger_id]
        mem.applied = AppliedFinding(self.wall_clock(), source, sent, None, verdict)
        self._show(charger_id, mem, self.monotonic())

    def _show(self, charger_id: str, mem: ChargerMemory, now_mono: float) -> None:
        """The finding as the API shows it (plain data on the charger's state)."""
        shown: dict[str, Any] = mem.applied.as_dict() if mem.applied is not None else {}
        shown["budgeted_at_a"] = mem.applied_above_a
        shown["planned_at_most_a"] = mem.applied_cap_a(now_mono)
        shown["single_level"] = self.single_level_of(charger_id)
        self.state.chargers[charger_id].applied = shown

    def _judge(
        self,
        charger_id: str,
        charger: ChargerConfig,
        mem: ChargerMemory,
        source: str,
        sent: float,
        applied: float | None,
        effective: float,
        verdict: str,
    ) -> None:
        now, now_mono = self.wall_clock(), self.monotonic()
        subject = charger_id
        failsafe_held = (
            verdict != "ok"
            and source == "composite"
            and applied is not None
            and abs(applied - charger.failsafe_current_a) <= TOLERANCE_A
            and abs(sent - charger.failsafe_current_a) > TOLERANCE_A
            and not mem.dynamic_level_ignored
        )
        timing_known = self._timing_known.get(charger_id, False)
        if failsafe_held and not timing_known:
            # Its clock is not known yet: the limit may start later on its clock (then it
            # holds its fail-safe for a while), or it ignores the dynamic level. Nothing is
            # learned; above its limit it is budgeted at the fail-safe (the breaker's side),
            # below it the plan is not capped (the bus's side). Asked again soon.
            self._due[charger_id] = now_mono + 2 * self.control.period_s
            if verdict == "below":
                mem.applied = AppliedFinding(now, source, sent, applied, "unanswered")
                return
        learned = failsafe_held and timing_known
        if learned:
            # It holds the fail-safe under sitectl's dynamic limit: the dynamic stack level
            # is ignored. One profile at the fail-safe's level carries both from now on, and
            # the next check says whether that took.
            mem.dynamic_level_ignored = True
            levels = self.config.ocpp.profile_stack_levels
            log.warning(
                "%s applies its fail-safe %.1f A, not sitectl's %.1f A: it ignores stack level "
                "%d; its limits go out at level %d as one profile",
                charger_id,
                applied,
                sent,
                levels[1],
                levels[0],
            )
            self._on_single_level(charger_id)
            self._learned_at[charger_id] = now_mono
        if verdict == "above":
            first = mem.applied_above_a is None
            mem.applied_above_a = effective
            shown = "no limit" if applied is None else f"{applied:.1f} A"
            evidence = "its composite schedule says" if source == "composite" else "it offers"
            self.state.raise_alarm(
                "charger_limit_not_applied",
                subject,
                Severity.WARNING,
                f"{evidence} {shown} while sitectl's limit is {sent:.1f} A "
                f"({now:%H:%M:%S}): budgeted at {effective:.1f} A",
            )
            if first:
                log.warning("%s applies %s, not sitectl's %.1f A", charger_id, shown, sent)
            return
        if learned:
            return  # below, and being mended: not planned lower meanwhile
        learned_at = self._learned_at.get(charger_id)
        if verdict == "below" and source == "composite" and learned_at is not None:
            changed_at = self._changed_at.get(charger_id, -1.0)
            if changed_at < learned_at or self._asked_at.get(charger_id, -1.0) < changed_at:
                # Asked before its single-level profile took: not evidence yet; ask again.
                mem.applied = AppliedFinding(now, source, sent, applied, "unanswered")
                self._due[charger_id] = now_mono + 2 * self.control.period_s
                return
        if mem.applied_above_a is not None:
            mem.applied_above_a = None
            log.info("%s applies sitectl's limit again", charger_id)
        self.state.clear_alarm("charger_limit_not_applied", subject)
        if verdict == "below":
            mem.applied_below_a = effective
            mem.applied_below_until = now_mono + BELOW_HOLD_S
            self.state.raise_alarm(
                "charger_limit_lower",
                subject,
                Severity.INFO,
                f"it applies {effective:.1f} A, below sitectl's {sent:.1f} A (another profile "
                f"or its own limit): planned at {effective:.1f} A",
            )
        elif (
            mem.applied_cap_a(now_mono) is None or sent > (mem.applied_below_a or 0.0) + TOLERANCE_A
        ):
            # Only a check above the old cap proves it gone (at or below it, both agree).
            mem.applied_below_a = None
            self.state.clear_alarm("charger_limit_lower", subject)
