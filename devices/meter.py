"""Readings and their quality; the pool that polls every device on its own schedule.

Rules of this module:

- Every poll yields one ``Reading`` with a UTC timestamp, a monotonic time and a ``Quality``:
  ``ok``; ``error`` (the device did not deliver: timeout, exception code, CRC, decode error, a
  required value not implemented); ``implausible`` (NaN, negative where impossible, current above
  10 × rated, a value no real meter reports, an energy counter that jumps or runs backwards,
  more active power than the phases' V·I can carry); ``stale`` (no poll completed for
  k × poll period, emitted by a watchdog even when a device's poll hangs; or values frozen
  while current flows, see ``devices.frozen``: the poll is new, its data is not). Only ``ok``
  values feed control; what to do otherwise is the control loop's call.
- Each device has its own task, schedule and deadline (one poll period, or the request timeout
  if longer): a device that stops answering slows nobody on other links.
- A log line marks every change of a device's state (ok → bad, cause changed, bad → ok); a
  repeated identical failure is logged at debug level only, so a dead meter cannot flood the log.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from devices.api import DeviceSpec, SerialTransport, Sign, TcpTransport
from devices.frozen import FreezeDetector, FreezeRules, Sample
from devices.modbus import (
    ConnectFailed,
    ConnectionLost,
    Link,
    ModbusError,
    ServerException,
    reraise_lost_cancel,
)
from devices.profile import Profile, RegisterMap, resolve_profile
from devices.registers import (
    DecodeError,
    DType,
    Quantity,
    Register,
    Table,
    decode_map,
    decode_words,
)
from devices.sunspec import discover

__all__ = [
    "DEFAULT_STALE_PERIODS",
    "MeterPool",
    "ProfileMeter",
    "Quality",
    "Reading",
    "check_plausible",
    "counter_step_kwh",
    "make_links",
]

log = logging.getLogger(__name__)

#: A device is stale after this many poll periods without a completed poll (reference §7 B9).
DEFAULT_STALE_PERIODS = 3.0

PhaseTuple = tuple[float | None, float | None, float | None]

# Generic sanity bounds, used when no rated current is configured. Generous on purpose: they are
# meant to catch decoding garbage (swapped words give 1e9-ish or denormal values), not to judge
# load. 1 GW and 100 kA exceed any depot connection; 1 MV exceeds any meter's input.
_MAX_VOLTAGE_V = 1e6
_MAX_CURRENT_A = 1e5
_MAX_POWER_KW = 1e6
_MAX_ENERGY_KWH = 1e12
# Highest phase voltage assumed when turning a current bound into a power bound (LV, +30 %).
_MAX_PHASE_VOLTAGE_V = 300.0
# A real meter reports 0.0, never 1e-35: non-zero magnitudes below this are decoding artefacts
# (e.g. a float32 read with swapped words: 230.0 V becomes 2.4e-41).
_TINY = 1e-30
_FREQ_RANGE_HZ = (40.0, 70.0)
_NUMBERS = re.compile(r"\d+(\.\d+)?")
_TEMP_RANGE_C = (-60.0, 300.0)
# Active power cannot exceed apparent power: |P| <= Σ V·I. The factor and the margin leave room
# for registers sampled a moment apart during a ramp and for a meter's low-current cut-off.
_VA_FACTOR = 1.1
_VA_MARGIN_KW = 0.5


class Quality(enum.Enum):
    """How far a reading can be trusted."""

    OK = "ok"
    STALE = "stale"
    ERROR = "error"
    IMPLAUSIBLE = "implausible"


@dataclass(frozen=True, slots=True)
class Reading:
    """The outcome of one poll of one device, in normalised units.

    ``mono`` is ``time.monotonic()`` at completion, for staleness; ``ts`` is the same moment in
    UTC. ``error`` states the exact cause for every quality but ``ok``. Per-phase tuples are
    ``None`` when the device has no such quantity; an element is ``None`` when the device
    reported it as not implemented. ``raw`` maps protocol addresses to the words read;
    ``poll_s`` is how long the poll took (``None`` for a stale notice).
    """

    device: str
    ts: datetime
    mono: float
    quality: Quality
    voltage_v: PhaseTuple | None = None
    current_a: PhaseTuple | None = None
    power_kw: PhaseTuple | None = None
    power_total_kw: float | None = None
    energy_import_kwh: float | None = None
    energy_export_kwh: float | None = None
    frequency_hz: float | None = None
    temperature_c: float | None = None
    error: str | None = None
    raw: dict[int, int] | None = None
    poll_s: float | None = None

    @property
    def ok(self) -> bool:
        """True when the values may feed control."""
        return self.quality is Quality.OK


def _now() -> tuple[datetime, float]:
    return datetime.now(UTC), time.monotonic()


def _failed(
    device: str, quality: Quality, error: str, raw: dict[int, int] | None = None
) -> Reading:
    ts, mono = _now()
    return Reading(device=device, ts=ts, mono=mono, quality=quality, error=error, raw=raw)


# Plausibility: pure functions of a reading (and the previous ok one).


def check_plausible(
    reading: Reading, previous: Reading | None, rated_current_a: float | None
) -> list[str]:
    """List every reason why ``reading``'s values cannot be real; empty if plausible.

    Args:
        reading: The new reading (its quality is not looked at).
        previous: The device's previous reading that carried values (``ok`` or
            ``implausible``), for jump checks. Comparing with the previous reading rather than
            the last ``ok`` one flags the jump itself and then accepts the new level, so a
            replaced meter whose counter restarts costs one flagged poll, not all later ones.
        rated_current_a: Rated current per phase, or ``None`` for generic bounds only.
    """
    problems: list[str] = []
    max_a = _MAX_CURRENT_A if rated_current_a is None else 10 * rated_current_a
    max_kw_phase = _MAX_POWER_KW if rated_current_a is None else max_a * _MAX_PHASE_VOLTAGE_V / 1000

    def check(name: str, value: float | None, low: float, high: float, unit: str) -> None:
        if value is None:
            return
        if math.isnan(value) or math.isinf(value):
            problems.append(f"{name} is {value}")
        elif value != 0 and abs(value) < _TINY:
            problems.append(f"{name} = {value:.3g} {unit} (decoding artefact: word order?)")
        elif not low <= value <= high:
            problems.append(f"{name} = {value:.6g} {unit} outside {low:g}..{high:g}")

    for i, v in enumerate(reading.voltage_v or ()):
        check(f"voltage_l{i + 1}", v, 0.0, _MAX_VOLTAGE_V, "V")
    for i, v in enumerate(reading.current_a or ()):
        check(f"current_l{i + 1}", v, 0.0, max_a, "A")
    for i, v in enumerate(reading.power_kw or ()):
        check(f"power_l{i + 1}", v, -max_kw_phase, max_kw_phase, "kW")
    check("power_total", reading.power_total_kw, -3 * max_kw_phase, 3 * max_kw_phase, "kW")
    check("energy_import", reading.energy_import_kwh, 0.0, _MAX_ENERGY_KWH, "kWh")
    check("energy_export", reading.energy_export_kwh, 0.0, _MAX_ENERGY_KWH, "kWh")
    check("temperature", reading.temperature_c, *_TEMP_RANGE_C, "°C")
    f = reading.frequency_hz
    if f is not None and f != 0:  # 0 Hz: meter on auxiliary supply with the grid side dead
        check("frequency", f, *_FREQ_RANGE_HZ, "Hz")
    if not problems and previous is not None and _power_exceeds_va(previous):
        # Two polls in a row: one alone may be a torn read (power and currents sit in
        # different register blocks, read in separate requests while the load ramps).
        problems.extend(_power_exceeds_va(reading))
    if previous is not None and not problems:
        hours = (reading.mono - previous.mono) / 3600
        for name in ("energy_import_kwh", "energy_export_kwh"):
            new, old = getattr(reading, name), getattr(previous, name)
            if new is None or old is None:
                continue
            label = name.removesuffix("_kwh")
            if new < old:
                problems.append(f"{label} went backwards from {old:.6g} to {new:.6g} kWh")
            elif hours > 0 and (new - old) / hours > 3 * max_kw_phase * 1.5:
                # No load can draw this much: the counter jumped (bit error, bad decode).
                problems.append(f"{label} jumped by {new - old:.6g} kWh in {hours * 3600:.3g} s")
    return problems


def _power_exceeds_va(reading: Reading) -> list[str]:
    """|P_total| beyond 1.1 × Σ V_k·I_k (+ margin): power and currents cannot both be right."""
    volts, amps, total = reading.voltage_v, reading.current_a, reading.power_total_kw
    if volts is None or amps is None or total is None:
        return []
    if None in volts or None in amps or not any(volts):
        # Judged only with every phase measured; all L-N voltages 0 is a meter in 3-wire
        # (delta) mode, which has no L-N voltage to multiply.
        return []
    va_kw = sum(v * i for v, i in zip(volts, amps, strict=True)) / 1000  # type: ignore[operator]
    bound = _VA_FACTOR * va_kw + _VA_MARGIN_KW
    if abs(total) <= bound:
        return []
    return [
        f"power_total = {total:.4g} kW exceeds the apparent power Σ V·I = {va_kw:.4g} kVA "
        f"(bound {bound:.4g} kW): power and currents cannot both be right"
    ]


# One device.


@functools.cache
def _capability_class(quantities: frozenset[Quantity]) -> type:
    """A view class with exactly the capabilities these quantities support (evcc-style)."""
    q = quantities
    bases: list[type] = []
    if Quantity.POWER_TOTAL in q or {Quantity.POWER_L1, Quantity.POWER_L2, Quantity.POWER_L3} <= q:
        bases.append(_PowerCap)
    if {Quantity.ENERGY_IMPORT, Quantity.ENERGY_EXPORT} & q:
        bases.append(_EnergyCap)
    if {Quantity.CURRENT_L1, Quantity.CURRENT_L2, Quantity.CURRENT_L3} & q:
        bases.append(_CurrentsCap)
    if {Quantity.VOLTAGE_L1, Quantity.VOLTAGE_L2, Quantity.VOLTAGE_L3} & q:
        bases.append(_VoltagesCap)
    if {Quantity.POWER_L1, Quantity.POWER_L2, Quantity.POWER_L3} & q:
        bases.append(_PowersCap)
    if Quantity.FREQUENCY in q:
        bases.append(_FrequencyCap)
    if Quantity.TEMPERATURE in q:
        bases.append(_TemperatureCap)
    return type("MeterView", (*bases, _View), {})


class _View:
    """Capabilities read the latest ``ok`` reading, or nothing once it is stale."""

    def __init__(self, meter: ProfileMeter) -> None:
        self._meter = meter

    @property
    def name(self) -> str:
        return self._meter.spec.name

    def _fresh(self) -> Reading | None:
        return self._meter.fresh_ok()


class _PowerCap:
    def power_kw(self: Any) -> float | None:
        r = self._fresh()
        return r.power_total_kw if r else None


class _EnergyCap:
    def energy_kwh(self: Any) -> tuple[float | None, float | None]:
        r = self._fresh()
        return (r.energy_import_kwh, r.energy_export_kwh) if r else (None, None)


class _CurrentsCap:
    def currents_a(self: Any) -> PhaseTuple | None:
        r = self._fresh()
        return r.current_a if r else None


class _VoltagesCap:
    def voltages_v(self: Any) -> PhaseTuple | None:
        r = self._fresh()
        return r.voltage_v if r else None


class _PowersCap:
    def powers_kw(self: Any) -> PhaseTuple | None:
        r = self._fresh()
        return r.power_kw if r else None


class _FrequencyCap:
    def frequency_hz(self: Any) -> float | None:
        r = self._fresh()
        return r.frequency_hz if r else None


class _TemperatureCap:
    def temperature_c(self: Any) -> float | None:
        r = self._fresh()
        return r.temperature_c if r else None


_TRIPLES = {
    "voltage_v": (Quantity.VOLTAGE_L1, Quantity.VOLTAGE_L2, Quantity.VOLTAGE_L3),
    "current_a": (Quantity.CURRENT_L1, Quantity.CURRENT_L2, Quantity.CURRENT_L3),
    "power_kw": (Quantity.POWER_L1, Quantity.POWER_L2, Quantity.POWER_L3),
}
_SCALARS = {
    "energy_import_kwh": Quantity.ENERGY_IMPORT,
    "energy_export_kwh": Quantity.ENERGY_EXPORT,
    "frequency_hz": Quantity.FREQUENCY,
    "temperature_c": Quantity.TEMPERATURE,
}


@dataclass(eq=False)
class ProfileMeter:
    """Reads any device from its profile over a shared ``Link``: one generic implementation.

    Args:
        spec: The device's configuration.
        profile: Its validated profile.
        link: The client of its TCP endpoint or serial bus.
        stale_periods: k in "stale after k × poll period".
        freeze_rules: Thresholds of the frozen-meter rules (``devices.frozen``); default
            ``FreezeRules`` with the spec's ``frozen_after_s``, and no check at all when that is
            ``None``. Given explicitly, these rules apply whatever the spec says.
    """

    spec: DeviceSpec
    profile: Profile
    link: Link
    stale_periods: float = DEFAULT_STALE_PERIODS
    freeze_rules: FreezeRules | None = None
    latest: Reading | None = None
    last_ok: Reading | None = None
    last_values: Reading | None = None
    _sunspec_map: RegisterMap | None = field(default=None, repr=False)
    _bad_polls: int = 0
    #: The frozen-meter detector in force, ``None`` when the check is off.
    freeze: FreezeDetector | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        rules = self.freeze_rules
        if rules is None and self.spec.frozen_after_s is not None:
            rules = FreezeRules(frozen_after_s=self.spec.frozen_after_s)
        if rules is not None:
            # Past the stale limit the pool has already said "stale"; what the counter did in
            # such a gap cannot be told from its two ends.
            gap = self.stale_periods * max(self.spec.poll_period_s, self.deadline_s)
            self.freeze = FreezeDetector(rules, max_gap_s=gap)

    @property
    def sign(self) -> Sign:
        """The sign convention in force: the spec's override, else the profile's."""
        return self.spec.sign or self.profile.sign

    @property
    def deadline_s(self) -> float:
        """Longest a poll may take: one period, or one request timeout if that is longer."""
        return max(self.spec.poll_period_s, self.spec.timeout_s)

    @property
    def register_map(self) -> RegisterMap | None:
        """The map in use: the profile's, or the SunSpec model found (``None`` before)."""
        return self.profile.fixed or self._sunspec_map

    def view(self) -> Any:
        """An object with the ``devices.api`` capabilities this device's profile supports."""
        return _capability_class(self.profile.quantities)(self)

    def failed(self, quality: Quality, error: str) -> Reading:
        """A reading without values (the pool's stale notice)."""
        return _failed(self.spec.name, quality, error)

    def fresh_ok(self) -> Reading | None:
        """The latest ``ok`` reading if it is not yet stale, else ``None``."""
        r = self.last_ok
        limit = self.stale_periods * self.spec.poll_period_s
        if r is None or time.monotonic() - r.mono > limit:
            return None
        return r

    async def poll(self, deadline: float | None = None) -> Reading:
        """Read the device once and judge the values. Never raises (but can be cancelled).

        Args:
            deadline: ``time.monotonic()`` value by which to give up; default one
                ``deadline_s`` from now.
        """
        start = time.monotonic()
        reading = await self._poll(start + self.deadline_s if deadline is None else deadline)
        return replace(reading, poll_s=reading.mono - start)

    async def _poll(self, deadline: float) -> Reading:
        raw: dict[tuple[Table, int], int] = {}
        name = self.spec.name
        # Retries are for transient faults. A device that failed its last poll gets one attempt
        # per request, so a dead meter costs a shared bus one timeout per poll, not (1+retries).
        retries = self.spec.retries if self._bad_polls == 0 else 0
        try:
            # The inner waits all respect the deadline and so give the exact cause; this outer
            # bound only stops a poll that is stuck somewhere else.
            async with asyncio.timeout(max(deadline - time.monotonic(), 0) + 0.05):
                regmap = await self._register_map(deadline, retries)
                for block in regmap.blocks:
                    words = await self.link.read(
                        block.table,
                        block.address,
                        block.count,
                        unit_id=self.spec.unit_id,
                        timeout_s=self.spec.timeout_s,
                        retries=retries,
                        deadline=deadline,
                    )
                    raw.update(((block.table, block.address + i), w) for i, w in enumerate(words))
                decoded = decode_map(regmap.registers, raw)
        except TimeoutError:
            return _failed(
                name,
                Quality.ERROR,
                f"poll did not finish within {self.deadline_s:.2g} s",
                _flat(raw),
            )
        except ModbusError as exc:
            if isinstance(exc, ConnectFailed | ConnectionLost) or (
                isinstance(exc, ServerException) and exc.code == 0x02
            ):
                # The device may have been replaced or reconfigured: find the model again.
                self._sunspec_map = None
            return _failed(name, Quality.ERROR, str(exc), _flat(raw))
        except DecodeError as exc:
            return _failed(name, Quality.ERROR, str(exc), _flat(raw))
        return self._judge(decoded.values, decoded.missing, regmap, raw)

    def record(self, reading: Reading) -> None:
        """Keep ``reading`` as the latest and log a change of state."""
        prev = self.latest
        self.latest = reading
        if reading.quality in (Quality.OK, Quality.IMPLAUSIBLE):
            self.last_values = reading
        name = self.spec.name
        if reading.ok:
            if self._bad_polls:
                log.info("device %s: ok again after %d bad polls", name, self._bad_polls)
            self._bad_polls = 0
            self.last_ok = reading
            return
        self._bad_polls += 1
        if prev is None or prev.quality is not reading.quality or _cause(prev) != _cause(reading):
            log.warning("device %s: %s: %s", name, reading.quality.value, reading.error)
        else:
            log.debug("device %s: still %s: %s", name, reading.quality.value, reading.error)

    # Internals.

    async def _register_map(self, deadline: float, retries: int) -> RegisterMap:
        if self.profile.fixed is not None:
            return self.profile.fixed
        if self._sunspec_map is None:
            assert self.profile.sunspec is not None
            model = await discover(
                self.link,
                self.spec.unit_id,
                self.profile.sunspec,
                timeout_s=self.spec.timeout_s,
                retries=retries,
                deadline=deadline,
            )
            relative = self.profile.sunspec.map_for(model.model_id)
            assert relative is not None
            self._sunspec_map = relative.shifted(model.address)
            log.info(
                "device %s: SunSpec model %d at %d", self.spec.name, model.model_id, model.address
            )
        return self._sunspec_map

    def _judge(
        self,
        values: Mapping[Quantity, float | None],
        missing: Mapping[Quantity, str],
        regmap: RegisterMap,
        raw: Mapping[tuple[Table, int], int],
    ) -> Reading:
        sign = -1.0 if self.sign is Sign.EXPORT_POSITIVE else 1.0
        mapped = regmap.quantities
        fields: dict[str, Any] = {}
        for attr, triple in _TRIPLES.items():
            if any(q in mapped for q in triple):
                vals = tuple(values.get(q) for q in triple)
                if attr == "power_kw":
                    vals = tuple(None if v is None else sign * v for v in vals)
                fields[attr] = vals
        for attr, q in _SCALARS.items():
            fields[attr] = values.get(q)
        total = values.get(Quantity.POWER_TOTAL)
        if total is not None:
            total *= sign
        elif (
            Quantity.POWER_TOTAL not in mapped
            and fields.get("power_kw")
            and None not in (fields["power_kw"])
        ):
            total = sum(fields["power_kw"])
        fields["power_total_kw"] = total
        ts, mono = _now()
        reading = Reading(
            device=self.spec.name, ts=ts, mono=mono, quality=Quality.OK, raw=_flat(raw), **fields
        )
        if self.profile.kind == "meter" and total is None:
            why = missing.get(Quantity.POWER_TOTAL) or "; ".join(
                missing[q] for q in _TRIPLES["power_kw"] if q in missing
            )
            return _replace(reading, Quality.ERROR, f"power_total missing: {why}")
        problems = check_plausible(reading, self.last_values, self.spec.rated_current_a)
        # Every reading with values feeds the detector, an implausible one too: a run of
        # identical registers is no less frozen for a bad value in it.
        frozen = None
        if self.freeze is not None:
            reversed_sign = self.spec.sign is not None and self.spec.sign is not self.profile.sign
            frozen = self.freeze.observe(_sample(reading, regmap, raw, reversed_sign))
        if problems:
            return _replace(reading, Quality.IMPLAUSIBLE, "; ".join(problems))
        if frozen:
            return _replace(reading, Quality.STALE, frozen)
        return reading


_COUNTERS = {
    Quantity.ENERGY_IMPORT: "energy_import_kwh",
    Quantity.ENERGY_EXPORT: "energy_export_kwh",
}


def _sample(
    reading: Reading,
    regmap: RegisterMap,
    raw: Mapping[tuple[Table, int], int],
    reversed_sign: bool = False,
) -> Sample:
    """What the frozen-meter rules look at: value registers' words, currents, power, counters.

    ``reversed_sign``: the spec overrides the profile's sign. Power is then turned round but
    the counters are not (or are, if the meter was parametrised rather than wired that way):
    with a single counter its direction is unknown, so the counter rule is left out.
    """
    words: list[int] = []
    steps: list[float] = []
    for reg in regmap.registers:
        if reg.quantity is None:
            continue  # helper registers (scale factors) do not show noise
        reg_words = [raw[(reg.table, a)] for a in range(reg.address, reg.end)]
        words.extend(reg_words)
        if reg.quantity in _COUNTERS:
            step = counter_step_kwh(reg, reg_words, getattr(reading, _COUNTERS[reg.quantity]))
            if step is not None:
                steps.append(step)
    energy = (reading.energy_import_kwh, reading.energy_export_kwh)
    if reversed_sign and None in energy:
        energy = (None, None)
    return Sample(
        mono=reading.mono,
        words=tuple(words),
        current_a=reading.current_a,
        power_total_kw=reading.power_total_kw,
        energy_kwh=energy,
        resolution_kwh=max(steps) if steps else None,
    )


def counter_step_kwh(reg: Register, words: Sequence[int], value: float | None) -> float | None:
    """One step of an energy counter at its present value, in kWh; ``None`` if unknown.

    An integer register steps by its scale (``value / raw``); a float one by its last bit,
    which grows with the count (float32 at 10^7 kWh steps by 1 kWh).
    """
    if value is None:
        return None
    raw = decode_words(words, reg.dtype, reg.word_order, reg.byte_order)
    if raw == 0 or not math.isfinite(raw):
        return None
    unit = abs(value / raw)
    if reg.dtype is DType.F32:
        return unit * 2.0 ** (math.frexp(abs(raw))[1] - 24)
    if reg.dtype is DType.F64:
        return unit * math.ulp(abs(raw))
    return unit


def _cause(reading: Reading) -> str:
    """The error without its numbers: "timeout within 0.13 s" and "... 0.15 s" are one cause."""
    return _NUMBERS.sub("#", reading.error or "")


def _replace(reading: Reading, quality: Quality, error: str) -> Reading:
    return replace(reading, quality=quality, error=error)


def _flat(raw: Mapping[tuple[Table, int], int]) -> dict[int, int]:
    return {address: word for (_, address), word in sorted(raw.items(), key=lambda kv: kv[0][1])}


# Links and the pool.


def make_links(specs: Iterable[DeviceSpec], **options: Any) -> dict[str, Link]:
    """One ``Link`` per TCP endpoint and per serial port, keyed by device name.

    Raises:
        ValueError: two devices on one serial port with different line settings.
    """
    by_key: dict[object, Link] = {}
    out: dict[str, Link] = {}
    for spec in specs:
        t = spec.transport
        key: object = t if isinstance(t, TcpTransport) else ("serial", t.port)
        link = by_key.get(key)
        if link is None:
            link = by_key[key] = Link(t, **options)
        elif isinstance(t, SerialTransport) and link.transport != t:
            raise ValueError(
                f"device {spec.name}: serial port {t.port} is shared with different settings "
                f"({link.transport} vs {t})"
            )
        out[spec.name] = link
    return out


def _device(spec: DeviceSpec, link: Link, stale_periods: float) -> Any:
    """A meter, or a digital I/O module (``devices.inputs``) when its profile is one."""
    # Imported here: devices.inputs builds on this module (Quality, the log rules).
    from devices.digital import is_io_profile, resolve_io_profile
    from devices.inputs import IoDevice

    if is_io_profile(spec.profile):
        return IoDevice(spec, resolve_io_profile(spec), link, stale_periods)
    return ProfileMeter(spec, resolve_profile(spec), link, stale_periods)


class MeterPool:
    """Polls every configured device on its own schedule and publishes each ``Reading``.

    Digital I/O modules (an I/O profile, ``devices.digital``) are polled here too, on the same
    links and schedules, and publish ``devices.inputs.IoReading`` instead.

    Args:
        specs: The devices. Names must be unique.
        on_reading: Called with every reading (poll results and stale notices), in the event
            loop; an exception in it is logged and does not stop polling.
        stale_periods: k in "stale after k × poll period"; default 3 (reference §7 B9).
        link_options: Passed to every ``Link`` (e.g. reconnect backoff).

    Raises:
        ProfileError: a device's profile is unknown or invalid.
        ValueError: duplicate names, or one serial port with two settings.
    """

    def __init__(
        self,
        specs: Sequence[DeviceSpec],
        on_reading: Callable[[Any], None] | None = None,
        *,
        stale_periods: float = DEFAULT_STALE_PERIODS,
        link_options: Mapping[str, Any] | None = None,
    ) -> None:
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate device names: {', '.join(dupes)}")
        links = make_links(specs, **dict(link_options or {}))
        self._meters = {s.name: _device(s, links[s.name], stale_periods) for s in specs}
        self._links = list({id(link): link for link in links.values()}.values())
        self._on_reading = on_reading
        self._stale_periods = stale_periods
        self._last_done: dict[str, float] = {}
        self._stale_sent: set[str] = set()

    # Public methods.

    @property
    def names(self) -> list[str]:
        """Device names in configuration order."""
        return list(self._meters)

    @property
    def links(self) -> list[Link]:
        """The distinct links (one per TCP endpoint / serial port)."""
        return list(self._links)

    def latest(self, name: str) -> Any:
        """The latest reading of ``name`` (any quality), or ``None`` before the first."""
        return self._meters[name].latest

    def meter(self, name: str) -> Any:
        """``name`` as an object with exactly its profile's ``devices.api`` capabilities
        (``DigitalInputs`` for an I/O module)."""
        return self._meters[name].view()

    async def poll_once(self, name: str) -> Any:
        """Poll one device now, outside the schedule (used by ``sitectl probe``)."""
        reading = await self._meters[name].poll()
        self._publish(self._meters[name], reading)
        return reading

    async def run(self) -> None:
        """Poll until cancelled; on cancellation close every client and re-raise."""
        start = time.monotonic()
        self._last_done = dict.fromkeys(self._meters, start)
        try:
            async with asyncio.TaskGroup() as tg:
                n = len(self._meters)
                for i, m in enumerate(self._meters.values()):
                    # Spread the devices over the period so their requests do not bunch up.
                    offset = m.spec.poll_period_s * i / n
                    tg.create_task(self._device_loop(m, start + offset), name=f"poll {m.spec.name}")
                tg.create_task(self._stale_watchdog(), name="stale watchdog")
        finally:
            await self.close()

    async def close(self) -> None:
        """Close every client."""
        for link in self._links:
            await link.close()

    # Internals.

    def _publish(self, meter: Any, reading: Any) -> None:
        meter.record(reading)
        if self._on_reading is not None:
            try:
                self._on_reading(reading)
            except Exception:
                log.exception("on_reading callback failed for %s", reading.device)

    async def _device_loop(self, meter: Any, first: float) -> None:
        period = meter.spec.poll_period_s
        due = first
        while True:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            reading = await meter.poll(time.monotonic() + meter.deadline_s)
            reraise_lost_cancel()  # belt and braces: see devices.modbus
            self._last_done[meter.spec.name] = reading.mono
            self._stale_sent.discard(meter.spec.name)
            self._publish(meter, reading)
            due += period
            now = time.monotonic()
            if now > due:
                # Overran: skip the slots we missed rather than polling back to back.
                due += math.ceil((now - due) / period) * period

    async def _stale_watchdog(self) -> None:
        interval = min(m.spec.poll_period_s for m in self._meters.values()) / 2
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for name, m in self._meters.items():
                limit = self._stale_periods * m.spec.poll_period_s
                age = now - self._last_done[name]
                if age > limit and name not in self._stale_sent:
                    self._stale_sent.add(name)
                    self._publish(
                        m,
                        m.failed(
                            Quality.STALE,
                            f"no poll completed for {age:.2f} s ({self._stale_periods:g} × "
                            f"{m.spec.poll_period_s:g} s poll period)",
                        ),
                    )
