"""What the rest of sitectl sees of a field device: small capabilities and plain specs.

Capabilities are one-method ``typing.Protocol`` classes, after evcc's ``api/api.go`` (``Meter``,
``MeterEnergy``, ``PhaseCurrents`` are separate and optional). A meter object has only the
capabilities its profile defines, so ``isinstance(m, PhaseCurrents)`` tells whether a device
measures phase currents at all. Every method returns ``None`` when the device has no fresh ``ok``
value: stale or bad data is never passed on as a number (DESIGN.md, safety model).

The specs are frozen dataclasses that ``sitectl/config/`` builds from the site YAML; this package
never imports ``sitectl``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from devices.frozen import DEFAULT_FROZEN_AFTER_S

__all__ = [
    "DeviceSpec",
    "DigitalInputs",
    "Frequency",
    "Meter",
    "MeterEnergy",
    "PhaseCurrents",
    "PhasePowers",
    "PhaseVoltages",
    "SerialTransport",
    "Sign",
    "TcpTransport",
    "Temperature",
    "Transport",
]

PhaseTuple = tuple[float | None, float | None, float | None]


# Capabilities.


@runtime_checkable
class Meter(Protocol):
    """Total active power."""

    def power_kw(self) -> float | None:
        """Return total active power in kW, import (site draws from the grid) positive."""


@runtime_checkable
class MeterEnergy(Protocol):
    """Energy registers."""

    def energy_kwh(self) -> tuple[float | None, float | None]:
        """Return ``(import_kwh, export_kwh)``; either is ``None`` if the device lacks it."""


@runtime_checkable
class PhaseCurrents(Protocol):
    """Current per phase."""

    def currents_a(self) -> PhaseTuple | None:
        """Return the current of L1, L2, L3 in A."""


@runtime_checkable
class PhaseVoltages(Protocol):
    """Line-to-neutral voltage per phase."""

    def voltages_v(self) -> PhaseTuple | None:
        """Return the voltage L1-N, L2-N, L3-N in V."""


@runtime_checkable
class PhasePowers(Protocol):
    """Active power per phase."""

    def powers_kw(self) -> PhaseTuple | None:
        """Return the active power of L1, L2, L3 in kW, import positive."""


@runtime_checkable
class DigitalInputs(Protocol):
    """Named digital inputs (contacts) of an I/O module."""

    def input_state(self, name: str) -> bool | None:
        """Return whether the input is on (contact closed), or ``None`` if it is unknown."""


@runtime_checkable
class Frequency(Protocol):
    """Grid frequency."""

    def frequency_hz(self) -> float | None:
        """Return the frequency in Hz."""


@runtime_checkable
class Temperature(Protocol):
    """A temperature, e.g. of a transformer winding or oil."""

    def temperature_c(self) -> float | None:
        """Return the temperature in °C."""


# Specs.


class Sign(enum.Enum):
    """Which direction of active power a device reports as positive."""

    IMPORT_POSITIVE = "import_positive"
    EXPORT_POSITIVE = "export_positive"


@dataclass(frozen=True, slots=True)
class TcpTransport:
    """Modbus TCP endpoint: a device or a gateway in front of several units.

    Devices with equal ``(host, port)`` share one connection.
    """

    host: str
    port: int = 502


@dataclass(frozen=True, slots=True)
class SerialTransport:
    """Modbus RTU over a serial line (RS-485). Devices with equal ``port`` share one bus.

    ``parity`` is ``"N"``, ``"E"`` or ``"O"``, as pyserial spells it.
    """

    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    bytesize: int = 8


Transport = TcpTransport | SerialTransport


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One configured field device.

    Args:
        name: Unique device name, used in logs and readings.
        profile: Profile file stem (``eastron-sdm630``) or ``generic``.
        transport: Where the device is reached.
        unit_id: Modbus unit (slave) id, 0–247.
        poll_period_s: Time between polls. A poll that cannot finish in this time (or in
            ``timeout_s`` if that is longer) ends as an ``error`` reading.
        timeout_s: Time to wait for one response.
        retries: Further attempts per request after the first, within the poll's deadline.
        rated_current_a: Rated current per phase; a current above 10 × this value, or a power
            beyond what 10 × this current can carry, is ``implausible``. ``None`` keeps only the
            generic sanity bounds.
        inline_registers: The register map of a ``generic`` device, written in the site YAML:
            either a list of registers or a mapping with the same keys as a profile file.
        sign: Overrides the sign convention the profile declares (a meter parametrised or wired
            the other way round). ``None`` keeps the profile's.
        frozen_after_s: A meter whose every value register stays unchanged this long while
            current flows, or whose energy counters stand still this long while power flows,
            is frozen (``stale``, see ``devices.frozen``). ``None`` turns the check off (a
            device whose registers are too coarse to show noise).
        inline_inputs: The inputs of a ``modbus-di`` I/O device, written in the site YAML
            (``devices.digital``): a list of inputs or a mapping with a profile's keys.
    """

    name: str
    profile: str
    transport: Transport
    unit_id: int = 1
    poll_period_s: float = 1.0
    timeout_s: float = 0.5
    retries: int = 1
    rated_current_a: float | None = None
    inline_registers: dict[str, Any] | list[dict[str, Any]] | None = None
    sign: Sign | None = None
    frozen_after_s: float | None = DEFAULT_FROZEN_AFTER_S
    inline_inputs: dict[str, Any] | list[dict[str, Any]] | None = None
