"""Polling a digital I/O module: one ``IoReading`` per poll, every input on, off or unknown.

Same rules as the meters (``devices.meter``): each poll ends in a reading with a ``Quality``
and the exact cause of every failure; a timeout, an exception response, a short or garbled
answer make every input of the device unknown (``None``), a bad value (a register that should
hold 0 or 1) makes that input unknown; a change of the device's state is logged once, a
repeated identical failure at debug level only. The ``MeterPool`` polls I/O devices beside the
meters, sharing their links (an I/O module on the meters' RS-485 bus takes its turn there).

Unknown is never guessed: whoever acts on an input decides what its unknown state means
(for the §14a dimming input, the worst case for the breaker: ``sitectl.grid14a``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from devices.api import DeviceSpec
from devices.digital import IoProfile, decode_inputs
from devices.meter import DEFAULT_STALE_PERIODS, Quality, _cause
from devices.modbus import Link, ModbusError, reraise_lost_cancel
from devices.registers import BitTable, Table

__all__ = ["IoDevice", "IoReading"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IoReading:
    """The outcome of one poll of one I/O device.

    ``inputs`` has every input of the profile: ``True`` (on: contact closed), ``False`` (off)
    or ``None`` (unknown: not read, or a bad value). ``mono`` and ``ts`` are the completion
    time (monotonic and UTC); ``error`` states the cause for every quality but ``ok``;
    ``raw`` maps ``"<table> <address>"`` to the bit or word read, for ``sitectl probe``.
    """

    device: str
    ts: datetime
    mono: float
    quality: Quality
    inputs: dict[str, bool | None] = field(default_factory=dict)
    error: str | None = None
    raw: dict[str, int] | None = None
    poll_s: float | None = None

    @property
    def ok(self) -> bool:
        """True when every input was read."""
        return self.quality is Quality.OK

    def state(self, name: str) -> bool | None:
        """One input's state, ``None`` when unknown (or not an input of this device)."""
        return self.inputs.get(name)


class _IoView:
    """The ``devices.api.DigitalInputs`` capability: the fresh reading's input states."""

    def __init__(self, device: IoDevice) -> None:
        self._device = device

    @property
    def name(self) -> str:
        return self._device.spec.name

    def input_state(self, name: str) -> bool | None:
        reading = self._device.fresh()
        return reading.state(name) if reading is not None else None


@dataclass(eq=False)
class IoDevice:
    """Reads a digital I/O module from its profile over a shared ``Link``.

    Args:
        spec: The device's configuration.
        profile: Its validated I/O profile.
        link: The client of its TCP endpoint or serial bus.
        stale_periods: k in "stale after k × poll period" (as for meters).
    """

    spec: DeviceSpec
    profile: IoProfile
    link: Link
    stale_periods: float = DEFAULT_STALE_PERIODS
    latest: IoReading | None = None
    _bad_polls: int = 0

    @property
    def deadline_s(self) -> float:
        """Longest a poll may take: one period, or one request timeout if that is longer."""
        return max(self.spec.poll_period_s, self.spec.timeout_s)

    def view(self) -> Any:
        """An object with the ``devices.api.DigitalInputs`` capability."""
        return _IoView(self)

    def fresh(self) -> IoReading | None:
        """The latest reading if it carries input states and is not yet stale."""
        r = self.latest
        limit = self.stale_periods * self.spec.poll_period_s
        if r is None or r.quality not in (Quality.OK, Quality.IMPLAUSIBLE):
            return None
        if time.monotonic() - r.mono > limit:
            return None
        return r

    def failed(self, quality: Quality, error: str) -> IoReading:
        """A reading with every input unknown (a failed poll, or the pool's stale notice)."""
        return IoReading(
            device=self.spec.name,
            ts=datetime.now(UTC),
            mono=time.monotonic(),
            quality=quality,
            inputs=dict.fromkeys(self.profile.names),
            error=error,
        )

    async def poll(self, deadline: float | None = None) -> IoReading:
        """Read every input once. Never raises (but can be cancelled).

        Args:
            deadline: ``time.monotonic()`` value by which to give up; default one
                ``deadline_s`` from now.
        """
        start = time.monotonic()
        reading = await self._poll(start + self.deadline_s if deadline is None else deadline)
        return replace(reading, poll_s=reading.mono - start)

    def record(self, reading: IoReading) -> None:
        """Keep ``reading`` as the latest; log a change of the device's state or inputs."""
        prev = self.latest
        self.latest = reading
        name = self.spec.name
        if prev is not None and prev.inputs != reading.inputs:
            changed = {k: v for k, v in reading.inputs.items() if prev.inputs.get(k) != v}
            log.debug("device %s: inputs %s", name, _states(changed))
        if reading.ok:
            if self._bad_polls:
                log.info("device %s: ok again after %d bad polls", name, self._bad_polls)
            self._bad_polls = 0
            return
        self._bad_polls += 1
        if prev is None or prev.quality is not reading.quality or _cause(prev) != _cause(reading):
            log.warning("device %s: %s: %s", name, reading.quality.value, reading.error)
        else:
            log.debug("device %s: still %s: %s", name, reading.quality.value, reading.error)

    async def _poll(self, deadline: float) -> IoReading:
        raw: dict[tuple[Table | BitTable, int], int] = {}
        # As for meters: a device that failed its last poll gets one attempt per request.
        retries = self.spec.retries if self._bad_polls == 0 else 0
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0) + 0.05):
                for block in self.profile.blocks:
                    values = await self.link.read(
                        block.table,
                        block.address,
                        block.count,
                        unit_id=self.spec.unit_id,
                        timeout_s=self.spec.timeout_s,
                        retries=retries,
                        deadline=deadline,
                    )
                    reraise_lost_cancel()
                    raw.update(((block.table, block.address + i), v) for i, v in enumerate(values))
        except TimeoutError:
            return self.failed(Quality.ERROR, f"poll did not finish within {self.deadline_s:.2g} s")
        except ModbusError as exc:
            return self.failed(Quality.ERROR, str(exc))
        states, problems = decode_inputs(self.profile.inputs, raw)
        flat = {f"{t.value} {a}": v for (t, a), v in sorted(raw.items(), key=_order)}
        return IoReading(
            device=self.spec.name,
            ts=datetime.now(UTC),
            mono=time.monotonic(),
            quality=Quality.IMPLAUSIBLE if problems else Quality.OK,
            inputs=states,
            error="; ".join(problems) or None,
            raw=flat,
        )


def _order(item: tuple[tuple[Table | BitTable, int], int]) -> tuple[str, int]:
    (table, address), _ = item
    return table.value, address


def _states(states: dict[str, bool | None]) -> str:
    words = {True: "on", False: "off", None: "unknown"}
    return ", ".join(f"{k} {words[v]}" for k, v in states.items())
