"""Meter supervision: when a circuit's measurement may be trusted, and when it may not.

A circuit with a meter is *measured* while its readings are ``ok`` and fresh. When no ``ok``
reading has arrived for ``meter_grace_s``, the circuit is *failed*: its budget drops to the
fail-safe budget (see `sitectl.control.snapshot`), and stays there for at least
``failsafe_hold_s`` and until ``good_readings_to_recover`` consecutive ``ok`` readings have come in,
so that a flapping meter cannot make the limits oscillate (reference B10/B11, after the EEBus
LPC fail-safe: LPC-911, LPC-921/922).

At start-up nothing is known: every metered circuit starts failed, without the hold, and is
measured once its first run of good readings is in. A meter that has not been trusted within
``meter_grace_s`` of the first look at it is announced as failed once (a depot commissioned with a
dead gateway must raise an alarm, not run silently on fail-safe budgets). Pure: the caller passes
the time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MeterState", "MeterSupervisor"]


class MeterState(enum.Enum):
    """Whether a circuit's meter feeds control."""

    MEASURED = "measured"
    FAILED = "failed"


@dataclass
class _Track:
    state: MeterState = MeterState.FAILED
    failed_at: float | None = None  # None: failed since start-up (no hold)
    good_run: int = 0
    last_ok: Any = None  # the latest ok reading
    last_ok_mono: float | None = None
    last_seen_mono: float | None = None
    reason: str = "no reading yet"
    latest_ok: bool = False  # whether the latest reading was ok
    latest_quality: str = ""
    first_look_mono: float | None = None  # the first update: the start of the grace at start-up
    announced: bool = False  # its failure was reported (a change returned)


@dataclass
class MeterSupervisor:
    """Tracks every metered circuit's trust state.

    Args:
        grace_s: how long without an ``ok`` reading before a circuit is failed.
        hold_s: the least time a failed circuit stays failed.
        good_to_recover: consecutive ``ok`` readings needed to trust a meter again.
    """

    grace_s: float
    hold_s: float
    good_to_recover: int
    tracks: dict[str, _Track] = field(default_factory=dict)

    def watch(self, circuit: str) -> None:
        """Start tracking a metered circuit (failed until its readings are good)."""
        self.tracks.setdefault(circuit, _Track())

    def reading(self, circuit: str, reading: Any, now: float) -> MeterState | None:
        """Feed one reading (``reading.ok``); returns the new state if it changed."""
        track = self.tracks[circuit]
        track.last_seen_mono = now
        track.latest_ok = bool(getattr(reading, "ok", False))
        quality = getattr(reading, "quality", "")
        track.latest_quality = str(getattr(quality, "value", quality))
        if track.latest_ok:
            track.last_ok = reading
            track.last_ok_mono = now
            track.good_run += 1
        else:
            track.good_run = 0
            track.reason = getattr(reading, "error", None) or str(getattr(reading, "quality", "?"))
        return self.update(circuit, now)

    def update(self, circuit: str, now: float) -> MeterState | None:
        """Re-evaluate with the passage of time; returns the new state if it changed."""
        track = self.tracks[circuit]
        if track.first_look_mono is None:
            track.first_look_mono = now
        if track.state is MeterState.MEASURED:
            silent = track.last_ok_mono is None or now - track.last_ok_mono > self.grace_s
            if silent:
                track.state = MeterState.FAILED
                track.failed_at = now
                track.good_run = 0
                if track.reason == "no reading yet":
                    track.reason = f"no good reading for {self.grace_s:g} s"
                track.announced = True
                return track.state
            return None
        if not track.announced and now - track.first_look_mono > self.grace_s:
            # Never trusted since start-up: say so once (the state itself does not change).
            track.announced = True
            if track.reason == "no reading yet":
                track.reason = "no reading"
            track.reason = f"never read since start: {track.reason}"
            return MeterState.FAILED
        held = track.failed_at is None or now - track.failed_at >= self.hold_s
        fresh = track.last_ok_mono is not None and now - track.last_ok_mono <= self.grace_s
        if held and fresh and track.good_run >= self.good_to_recover:
            track.state = MeterState.MEASURED
            track.reason = ""
            track.announced = False
            return track.state
        return None

    def measured(self, circuit: str) -> Any:
        """The latest ok reading if the circuit is measured, else ``None``.

        Once the device layer calls the meter stale or implausible, its last good reading is
        not used any more, even within the grace (the grace covers a failed poll, not a meter
        that is known to be wrong or gone).
        """
        track = self.tracks.get(circuit)
        if track is None or track.state is not MeterState.MEASURED:
            return None
        if not track.latest_ok and track.latest_quality in ("stale", "implausible"):
            return None
        return track.last_ok

    def distrust(self, circuit: str, now: float, reason: str) -> MeterState | None:
        """Fail a circuit's meter for a reason found elsewhere (its readings cannot be right).

        It stays failed for the hold and until a new run of good readings, like any failure.
        Returns the new state if it changed.
        """
        track = self.tracks[circuit]
        track.good_run = 0
        track.reason = reason
        track.failed_at = now
        if track.state is MeterState.FAILED:
            return None
        track.state = MeterState.FAILED
        track.announced = True
        return track.state

    def state(self, circuit: str) -> MeterState:
        return self.tracks[circuit].state

    def reason(self, circuit: str) -> str:
        return self.tracks[circuit].reason
