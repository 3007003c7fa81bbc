"""Modbus field devices (meters, digital I/O modules), as the ``devices`` package's `DeviceSpec`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from devices.api import DeviceSpec, SerialTransport, Sign, TcpTransport
from devices.digital import MODBUS_DI, is_io_profile
from sitectl.config.base import _Model, parse_phase_rotation


class DeviceConfig(_Model):
    """A Modbus device: a grid meter, a transformer monitor, a sub-meter, or a digital I/O
    module (an I/O profile from devices/profiles/io, or 'modbus-di' with inline `inputs`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    profile: str = Field(
        description="Device profile (file stem in devices/profiles or devices/profiles/io), "
        "'generic' (a meter with inline `registers`) or 'modbus-di' (digital inputs with "
        "inline `inputs`)."
    )
    host: str | None = Field(None, description="Modbus TCP host (or gateway).")
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = Field(
        None, description="Modbus RTU serial device, e.g. /dev/ttyUSB0."
    )
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(1, ge=0, le=255)
    poll_period_s: float = Field(1.0, gt=0, le=3600)
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(2, ge=0, le=10)
    rated_current_a: float | None = Field(None, gt=0, description="For plausibility checks.")
    sign: Literal["import_positive", "export_positive"] | None = Field(
        None, description="Override the profile's power sign (a meter wired the other way)."
    )
    registers: list[dict[str, Any]] | dict[str, Any] | None = Field(
        None, description="Inline register map for the 'generic' profile."
    )
    inputs: list[dict[str, Any]] | dict[str, Any] | None = Field(
        None,
        description="Inline digital inputs for the 'modbus-di' profile: each with name, "
        "address, table (discrete, coil, holding, input) and, in a register, bit.",
    )
    frozen_after_s: float | None = Field(
        30.0,
        gt=0,
        description="Frozen-meter check: no register change while current flows, or no energy "
        "counted while power flows, for this long makes the reading stale; null turns it off.",
    )
    phase_map: str = Field(
        "L1-L2-L3",
        description="Site phase of each meter phase, for CTs labelled differently from the "
        "site's L1/L2/L3: 'L2-L3-L1' means the meter's L1 measures the site's L2.",
    )

    @field_validator("phase_map")
    @classmethod
    def _phase_map(cls, value: str) -> str:
        parse_phase_rotation(value, 3)
        return value

    @property
    def site_phases(self) -> tuple[int, ...]:
        """Site phase index of the meter's L1, L2, L3."""
        return parse_phase_rotation(self.phase_map, 3)

    @model_validator(mode="after")
    def _one_transport(self) -> DeviceConfig:
        if (self.host is None) == (self.serial_port is None):
            raise ValueError("give exactly one of host (Modbus TCP) or serial_port (Modbus RTU)")
        if self.profile == "generic" and not self.registers:
            raise ValueError("profile 'generic' needs an inline `registers` map")
        if self.profile != "generic" and self.registers is not None:
            raise ValueError("`registers` is only for profile 'generic'")
        if self.profile == MODBUS_DI and not self.inputs:
            raise ValueError(f"profile '{MODBUS_DI}' needs an inline `inputs` list")
        if self.profile != MODBUS_DI and self.inputs is not None:
            raise ValueError(f"`inputs` is only for profile '{MODBUS_DI}'")
        return self

    @property
    def is_io(self) -> bool:
        """Whether this is a digital I/O module (an I/O profile), not a meter."""
        return is_io_profile(self.profile)

    def to_spec(self) -> DeviceSpec:
        """The ``devices`` package's view of this device."""
        transport: TcpTransport | SerialTransport
        if self.host is not None:
            transport = TcpTransport(self.host, self.port)
        else:
            assert self.serial_port is not None
            transport = SerialTransport(
                self.serial_port, self.baudrate, self.parity, self.stopbits, self.bytesize
            )
        return DeviceSpec(
            name=self.name,
            profile=self.profile,
            transport=transport,
            unit_id=self.unit_id,
            poll_period_s=self.poll_period_s,
            timeout_s=self.timeout_s,
            retries=self.retries,
            rated_current_a=self.rated_current_a,
            inline_registers=self.registers,
            sign=Sign(self.sign) if self.sign else None,
            frozen_after_s=self.frozen_after_s,
            inline_inputs=self.inputs,
        )
