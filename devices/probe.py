"""``sitectl probe``: read each device once and say exactly what came back, or why nothing did.

The CLI (``sitectl/cli.py``) builds the ``DeviceSpec`` list from the site file, keeps the one
``--device`` asks for, and calls :func:`main_probe`. Everything here is also usable on its own:
``results = await probe(specs, raw=True)`` then ``print(render(results))``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from devices.api import DeviceSpec, TcpTransport
from devices.digital import DigitalInput, IoProfile, is_io_profile, resolve_io_profile
from devices.inputs import IoDevice, IoReading
from devices.meter import ProfileMeter, Quality, Reading, make_links
from devices.profile import Profile, ProfileError, resolve_profile
from devices.registers import Quantity, Register

__all__ = ["ProbeResult", "main_probe", "probe", "render"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of probing one device.

    Args:
        spec: The device probed.
        reading: Its reading, or ``None`` if its profile could not be used.
        error: The exact cause of failure (profile problem or the reading's error), else ``None``.
        registers: The register map read (for SunSpec: the model found), for ``--raw``.
        inputs: For a digital I/O module, its inputs (the reading has their states).
    """

    spec: DeviceSpec
    reading: Reading | IoReading | None
    error: str | None
    registers: tuple[Register, ...] = ()
    inputs: tuple[DigitalInput, ...] = ()  # an I/O module's inputs

    @property
    def ok(self) -> bool:
        """True when the device answered with plausible values."""
        return self.reading is not None and self.reading.quality is Quality.OK


async def probe(specs: Sequence[DeviceSpec], raw: bool = False) -> list[ProbeResult]:
    """Read every device once, concurrently (devices sharing a link take turns on it).

    Args:
        specs: The devices to read.
        raw: Keep the raw register words in the results.

    Returns:
        One result per spec, in the order given.
    """
    profiles: dict[str, Profile | IoProfile] = {}
    results: dict[str, ProbeResult] = {}
    for spec in specs:
        try:
            if is_io_profile(spec.profile):
                profiles[spec.name] = resolve_io_profile(spec)
            else:
                profiles[spec.name] = resolve_profile(spec)
        except ProfileError as exc:
            results[spec.name] = ProbeResult(spec, None, str(exc))
    usable = [s for s in specs if s.name in profiles]
    links = make_links(usable)
    devices: list[Any] = []
    for s in usable:
        profile = profiles[s.name]
        if isinstance(profile, IoProfile):
            devices.append(IoDevice(s, profile, links[s.name]))
        else:
            devices.append(ProfileMeter(s, profile, links[s.name]))
    try:
        readings = await asyncio.gather(*(d.poll() for d in devices))
    finally:
        for link in {id(x): x for x in links.values()}.values():
            await link.close()
    for device, reading in zip(devices, readings, strict=True):
        if not raw:
            reading = replace(reading, raw=None)
        if isinstance(device, IoDevice):
            results[device.spec.name] = ProbeResult(
                device.spec, reading, reading.error, inputs=device.profile.inputs
            )
            continue
        regmap = device.register_map
        results[device.spec.name] = ProbeResult(
            device.spec, reading, reading.error, regmap.registers if regmap else ()
        )
    return [results[s.name] for s in specs]


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1e9 else f"{value:.6g}"
    return f"{text} {unit}".rstrip()


def _where(spec: DeviceSpec) -> str:
    t = spec.transport
    if isinstance(t, TcpTransport):
        return f"tcp {t.host}:{t.port} unit {spec.unit_id}"
    return f"rtu {t.port} {t.baudrate} {t.bytesize}{t.parity}{t.stopbits} unit {spec.unit_id}"


def render(results: Sequence[ProbeResult]) -> str:
    """Format probe results for a terminal: every quantity with its unit, then raw words."""
    lines: list[str] = []
    for res in results:
        spec, r = res.spec, res.reading
        status = r.quality.value if r else "error"
        lines.append(f"{spec.name} ({spec.profile}, {_where(spec)}): {status}")
        if res.error:
            lines.append(f"  cause: {res.error}")
        if isinstance(r, IoReading):
            lines.extend(_io_lines(res, r))
            continue
        if r is not None and r.quality is not Quality.ERROR:
            rows: list[tuple[str, str]] = []
            for label, triple, unit in (
                ("voltage L1 L2 L3", r.voltage_v, "V"),
                ("current L1 L2 L3", r.current_a, "A"),
                ("power L1 L2 L3", r.power_kw, "kW"),
            ):
                if triple is not None:
                    rows.append((label, "  ".join(_fmt(v) for v in triple) + f" {unit}"))
            mapped = {reg.quantity for reg in res.registers}
            for label, value, unit, q in (
                ("power total", r.power_total_kw, "kW", Quantity.POWER_TOTAL),
                ("energy import", r.energy_import_kwh, "kWh", Quantity.ENERGY_IMPORT),
                ("energy export", r.energy_export_kwh, "kWh", Quantity.ENERGY_EXPORT),
                ("frequency", r.frequency_hz, "Hz", Quantity.FREQUENCY),
                ("temperature", r.temperature_c, "°C", Quantity.TEMPERATURE),
            ):
                if value is not None or q in mapped:
                    rows.append((label, _fmt(value, unit)))
            lines.extend(f"  {label:<17} {text}" for label, text in rows)
        if r is not None and r.raw is not None and res.registers:
            lines.append("  raw registers:")
            for reg in sorted(res.registers, key=lambda x: (x.table.value, x.address)):
                words = [r.raw.get(a) for a in range(reg.address, reg.end)]
                text = " ".join("----" if w is None else f"{w:04X}" for w in words)
                lines.append(
                    f"    {reg.table.value:<7} {reg.number:>5} (addr 0x{reg.address:04X}) "
                    f"{reg.dtype.value:<6} {text:<19} {reg.label}"
                )
    return "\n".join(lines)


def _io_lines(res: ProbeResult, r: IoReading) -> list[str]:
    """An I/O module's inputs: each with its state and where it was read (raw: the bit/word)."""
    words = {True: "on", False: "off", None: "unknown"}
    lines = []
    for item in res.inputs:
        text = f"  {item.name:<17} {words[r.state(item.name)]:<8} ({item.where()})"
        if r.raw is not None:
            value = r.raw.get(f"{item.table.value} {item.address}")
            text += f" raw {'----' if value is None else f'{value:04X}'}"
        lines.append(text)
    return lines


def main_probe(specs: Sequence[DeviceSpec], raw: bool = False) -> int:
    """Probe, print the report to stdout, and return the exit code (0 = every device ok).

    Call from synchronous code (it runs its own event loop).
    """
    # pymodbus warns "Failed to connect ..." on its own; the report states the cause exactly.
    pymodbus_log = logging.getLogger("pymodbus")
    level = pymodbus_log.level
    pymodbus_log.setLevel(logging.ERROR)
    try:
        results = asyncio.run(probe(specs, raw))
    finally:
        pymodbus_log.setLevel(level)
    print(render(results))
    return 0 if all(r.ok for r in results) else 1
