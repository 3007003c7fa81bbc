"""§14a EnWG dimming: the grid operator's contact becomes a hard kW limit on a node.

German distribution system operators may dim controllable consumers (SteuVE: charging points,
heat pumps, storage) on the low-voltage grid, never below a minimum, through their control box:
a relay contact (or EEBus LPC). sitectl reads the contact as a digital input
(`grid_signals.dimming_14a`, an I/O device of `devices`) and, while it says "dim", publishes one
hard kW `GridLimit` on the configured node to the `LimitBoard` (source ``14a:<device>``). The
LP shares that limit out among the sessions like any other: chargers are turned down, never
switched off for it (evcc dims to 0 W; §14a forbids going below the minimum).

Rules:

- Active (the contact as configured): the limit at once, open-ended. Released: withdrawn after
  `hold_s`.
- Unknown is the worst case for the breaker: an input not read for longer than
  `unknown_after_s` (device down, bad value, no poll at all) applies the limit and raises the
  warning ``dimming_input_unknown``; a readable input decides again (with the hold).
- Every publish carries a heartbeat of `unknown_after_s` with the limit as its fail-safe: if
  this task stops publishing, the board answers the limit by itself.
- Each activation and release is logged at INFO and raises/clears the info alarm
  ``grid_dimming_active`` (subject: the node) naming the limit.

The minimum: 4.2 kW per controllable device (BNetzA, Festlegung BK6-22-300 zu §14a EnWG); for
several devices behind one energy management system the total is n × 4.2 kW scaled by the
simultaneity factor of the same determination (`SIMULTANEITY`). ``limit_kw`` replaces the
formula with a value agreed with the grid operator.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from devices.meter import DEFAULT_STALE_PERIODS
from sitectl.limits import GridLimit

if TYPE_CHECKING:
    from sitectl.config import Config, Dimming14aConfig
    from sitectl.state import Change, SiteState

__all__ = [
    "ALARM_ACTIVE",
    "ALARM_UNKNOWN",
    "PER_DEVICE_KW",
    "SIMULTANEITY",
    "Dimming14a",
    "DimmingLogic",
    "Why",
    "minimum_kw",
    "simultaneity",
]

log = logging.getLogger(__name__)

ALARM_ACTIVE = "grid_dimming_active"
ALARM_UNKNOWN = "dimming_input_unknown"

#: The minimum a controllable device may be dimmed to (BNetzA BK6-22-300, §14a EnWG).
PER_DEVICE_KW = 4.2

#: Simultaneity factor (Gleichzeitigkeitsfaktor) by the number of controllable devices behind
#: one energy management system, BNetzA BK6-22-300 (Anlage 1); 9 or more: 0.45.
#: [verify] against the determination's current text before a grid operator's acceptance test.
SIMULTANEITY: dict[int, float] = {1: 1.0, 2: 0.8, 3: 0.75, 4: 0.7, 5: 0.65, 6: 0.6, 7: 0.55, 8: 0.5}
_SIMULTANEITY_MANY = 0.45


def simultaneity(devices: int) -> float:
    """The simultaneity factor for `devices` controllable devices behind one EMS."""
    if devices < 1:
        raise ValueError(f"controllable devices: at least 1, got {devices}")
    return SIMULTANEITY.get(devices, _SIMULTANEITY_MANY)


def minimum_kw(devices: int, per_device_kw: float = PER_DEVICE_KW) -> float:
    """The least the grid operator may dim `devices` controllable devices to, in kW."""
    return devices * per_device_kw * simultaneity(devices)


def describe_limit(cfg: Dimming14aConfig) -> str:
    """How the limit was found, for reasons and logs."""
    if cfg.limit_kw is not None:
        return f"{cfg.limit_kw:g} kW (configured limit_kw)"
    n = cfg.controllable_devices
    return (
        f"{cfg.dimming_kw:.4g} kW ({n} controllable device{'s' if n != 1 else ''} × "
        f"{PER_DEVICE_KW:g} kW × {simultaneity(n):g}, BNetzA BK6-22-300)"
    )


class Why(enum.StrEnum):
    """Why the limit is in force (or not)."""

    OFF = "off"  # released (or never active)
    ACTIVE = "active"  # the contact says dim
    HELD = "held"  # released, within hold_s
    UNKNOWN = "unknown"  # not read for longer than unknown_after_s


@dataclass(frozen=True, slots=True)
class Decision:
    """What `DimmingLogic.evaluate` found: why the limit stands (or not), how long the input
    has gone unread, and when a hold ends."""

    why: Why
    unknown_for_s: float  # 0 while the input is read
    held_until: float | None = None  # monotonic end of the hold, while held

    @property
    def in_force(self) -> bool:
        return self.why is not Why.OFF


class DimmingLogic:
    """The decision, without I/O: readings in (`observe`), what must be in force out.

    Args:
        active_when: "closed" (the input reads on while dimming) or "open".
        hold_s: how long the limit stays after the contact releases.
        unknown_after_s: how long the input may go unread before the worst case applies.
        fresh_s: how long one reading of the input counts as current (the pool calls a
            device stale after 3 poll periods).
        start: the monotonic time the logic starts (an input never read is unknown from then).
    """

    def __init__(
        self,
        active_when: str,
        hold_s: float,
        unknown_after_s: float,
        fresh_s: float,
        start: float,
    ) -> None:
        self.active_when = active_when
        self.hold_s = hold_s
        self.unknown_after_s = unknown_after_s
        self.fresh_s = fresh_s
        self.state: bool | None = None  # the input as last read (None: unknown)
        self.read_at: float | None = None  # when a definite state was last read
        self.known_since = start  # unknown durations count from here when never read
        self.cause = "not read yet"  # why the input is unknown, for the alarm
        self._held_from: float | None = None
        self._last = Why.OFF

    def observe(self, state: bool | None, cause: str | None, mono: float) -> None:
        """A reading of the input arrived at `mono` (``None``: it could not be told)."""
        self.state = state
        if state is not None:
            self.read_at = mono
        else:
            self.cause = cause or "unknown"

    def active(self) -> bool | None:
        """Whether the contact says "dim" as last read (``None``: unknown)."""
        if self.state is None:
            return None
        return self.state if self.active_when == "closed" else not self.state

    def unknown_for(self, mono: float) -> float:
        """How long the input has gone without a current, definite reading (0: it has one)."""
        if self.state is not None and self.read_at is not None:
            if mono - self.read_at <= self.fresh_s:
                return 0.0
            # Readings stopped coming at all (a hung poll): as unknown as a failed one. The
            # words stay the same while it lasts (they end up in the limit's reason).
            self.cause = f"no reading for more than {self.fresh_s:g} s"
        since = self.read_at if self.read_at is not None else self.known_since
        return max(0.0, mono - since)

    def evaluate(self, mono: float) -> Decision:
        """What must be in force at `mono`."""
        unknown = self.unknown_for(mono)
        active = self.active() if unknown == 0.0 else None
        if active:
            why = Why.ACTIVE
        elif active is None:
            # Unknown past the limit: the worst case. Briefly unknown: the last decision
            # stands (a dropped poll changes nothing, and a hold keeps running).
            why = Why.UNKNOWN if unknown > self.unknown_after_s else self._last
        elif self._last is Why.OFF:
            why = Why.OFF
        else:
            # Released, or readable again and not dimming: the hold runs from the first such
            # reading.
            if self._held_from is None:
                self._held_from = mono
            why = Why.HELD if mono - self._held_from < self.hold_s else Why.OFF
        if why is not Why.HELD:
            self._held_from = None
        self._last = why
        held_until = self._held_from + self.hold_s if self._held_from is not None else None
        return Decision(why, unknown, held_until)


class Dimming14a:
    """The §14a source: reads its input from the site state, publishes to `state.limits`.

    Args:
        config: the validated configuration (`grid_signals.dimming_14a` must be set).
        state: the site state; its readings feed the logic, its `limits` board and alarms
            take the result. Its clocks are used unless others are given.
        tick_s: how often to judge and republish without a new reading (timeouts, the hold,
            the heartbeat); default a quarter of `unknown_after_s`, at most 1 s.
        clock: UTC now (the limits' times); monotonic: seconds (timeouts), both injectable.
    """

    name = "grid-14a"

    def __init__(
        self,
        config: Config,
        state: SiteState,
        *,
        tick_s: float | None = None,
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        cfg = config.grid_signals.dimming_14a
        if cfg is None:
            raise ValueError("grid_signals.dimming_14a is not configured")
        self.cfg = cfg
        self.state = state
        self.clock = clock or state.clock
        self.monotonic = monotonic or state.monotonic
        self.source = f"14a:{cfg.device}"
        self.limit_kw = cfg.dimming_kw
        device = next(d for d in config.devices if d.name == cfg.device)
        self.logic = DimmingLogic(
            cfg.active_when,
            cfg.hold_s,
            cfg.unknown_after_s,
            fresh_s=DEFAULT_STALE_PERIODS * device.poll_period_s,
            start=self.monotonic(),
        )
        self.tick_s = tick_s if tick_s is not None else min(1.0, cfg.unknown_after_s / 4)
        self.decision: Decision | None = None
        self._since: datetime | None = None  # when the limit went into force (wall clock)
        self._unsubscribe = state.subscribe(self._on_change)
        self._what = f"input {cfg.input} of {cfg.device}"

    # Inputs.

    def _on_change(self, change: Change) -> None:
        if change.kind == "reading" and change.subject == self.cfg.device:
            self.observe(self.state.readings.get(self.cfg.device))
            self.evaluate()

    def observe(self, reading: Any) -> None:
        """Take a reading of the device (an `IoReading`; anything else counts as unknown)."""
        state_of = getattr(reading, "state", None)
        value = state_of(self.cfg.input) if callable(state_of) else None
        cause = getattr(reading, "error", None) or f"no value for input {self.cfg.input}"
        self.logic.observe(value, cause, self.monotonic())

    async def run(self) -> None:
        """Judge and republish every tick until cancelled."""
        try:
            while True:
                self.evaluate()
                await asyncio.sleep(self.tick_s)
        finally:
            self._unsubscribe()

    # The decision and its effects.

    def evaluate(self) -> Decision:
        """Judge the input now; publish, log and raise or clear alarms on a change."""
        mono, now = self.monotonic(), self.clock()
        decision = self.logic.evaluate(mono)
        previous, self.decision = self.decision, decision
        if decision.in_force and self._since is None:
            self._since = now
        limits = [self._limit(decision, now, mono)] if decision.in_force else []
        self.state.limits.publish(
            self.source,
            limits,
            now,
            valid_until=now + timedelta(seconds=self.cfg.unknown_after_s),
            fail_safe=[self._fail_safe(now)],
        )
        changed = previous is None or previous.why is not decision.why
        if changed:
            self._announce(previous, decision)
        if not decision.in_force:
            self._since = None
        return decision

    def _limit(self, decision: Decision, now: datetime, mono: float) -> GridLimit:
        cfg = self.cfg
        assert self._since is not None
        end = None
        if decision.why is Why.UNKNOWN:
            reason = (
                f"§14a EnWG: {self._what} unreadable for more than {cfg.unknown_after_s:g} s "
                f"({self.logic.cause}): dimming limit {describe_limit(cfg)} applied, unknown is "
                "the worst case"
            )
        else:
            contact = "closed" if cfg.active_when == "closed" else "open"
            reason = f"§14a EnWG dimming: {self._what} {contact}: {describe_limit(cfg)}"
            if decision.why is Why.HELD and decision.held_until is not None:
                end = now + timedelta(seconds=max(decision.held_until - mono, 0.001))
                reason += f"; released, held {cfg.hold_s:g} s"
        return GridLimit(
            node=cfg.node,
            source=self.source,
            start=min(self._since, now),
            end=end,
            limit_kw=self.limit_kw,
            hard=True,
            reason=reason,
            ref=f"{cfg.device}/{cfg.input}",
        )

    def _fail_safe(self, now: datetime) -> GridLimit:
        return GridLimit(
            node=self.cfg.node,
            source=self.source,
            start=now,
            limit_kw=self.limit_kw,
            hard=True,
            reason=(
                f"§14a EnWG: the dimming source stopped confirming {self._what}: dimming limit "
                f"{describe_limit(self.cfg)} applied"
            ),
            ref=f"{self.cfg.device}/{self.cfg.input}",
        )

    def _announce(self, previous: Decision | None, decision: Decision) -> None:
        from sitectl.state import Severity  # sitectl.state imports the config, which imports us

        cfg, state = self.cfg, self.state
        before = previous.why if previous is not None else Why.OFF
        where = f"{self.limit_kw:.4g} kW on '{cfg.node}'"
        if decision.why is Why.UNKNOWN:
            text = (
                f"§14a {self._what} unreadable for more than {cfg.unknown_after_s:g} s "
                f"({self.logic.cause}): dimming limit {where} applied (unknown is the worst case)"
            )
            log.warning("%s", text)
            state.raise_alarm(ALARM_UNKNOWN, cfg.device, Severity.WARNING, text)
        elif before is Why.UNKNOWN:
            read = self.logic.active()
            log.info(
                "§14a %s readable again (%s)", self._what, "dimming" if read else "not dimming"
            )
            state.clear_alarm(ALARM_UNKNOWN, cfg.device)
        if decision.why is Why.ACTIVE and before in (Why.OFF, Why.HELD, Why.UNKNOWN):
            if before is Why.OFF:
                log.info("§14a dimming active: %s says dim; limit %s", self._what, where)
            elif before is Why.HELD:
                log.info("§14a dimming active again within the hold: limit %s stays", where)
        elif decision.why is Why.HELD and before is Why.ACTIVE:
            log.info(
                "§14a dimming released by %s; limit %s held for %g s", self._what, where, cfg.hold_s
            )
        elif decision.why is Why.OFF and before is not Why.OFF:
            held = f" after the {cfg.hold_s:g} s hold" if cfg.hold_s else ""
            log.info("§14a dimming released: limit %s withdrawn%s", where, held)
        if decision.in_force and before is Why.OFF:
            state.raise_alarm(
                ALARM_ACTIVE,
                cfg.node,
                Severity.INFO,
                f"§14a EnWG dimming limit {where} in force ({self.source}: {describe_limit(cfg)})",
            )
        elif not decision.in_force:
            state.clear_alarm(ALARM_ACTIVE, cfg.node)
        state.notify("limits", self.source)
