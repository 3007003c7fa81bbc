"""Simulated Modbus devices: real pymodbus servers whose registers encode given quantities.

For tests, benchmarks and the demo. A ``SimMeter`` holds a profile's registers, encoded exactly as
the vendor encodes them (the inverse of the decoder: type, word and byte order, numbering, scale,
SunSpec scale factors and model chain). A ``SimServer`` serves one or more of them over Modbus TCP
or RTU; values and faults can be changed while it runs::

    grid = SimMeter("eastron-sdm630", unit_id=1, values={"power_total": 42.0})
    async with SimServer([grid]) as server:          # TCP on a free loopback port
        spec = DeviceSpec("grid", "eastron-sdm630", server.transport, unit_id=1)
        grid.update(power_total=55.0)                 # next poll reads 55 kW
        grid.exception = 0x04                         # now every read fails with 0x04
        grid.frozen = True                            # reads return the registers of now

Like a real meter, a ``SimMeter`` advances its energy counters by the power it carries
(``integrate_energy``) and can show noise in the last digits of voltages, currents and powers
(``noise``).

``PtyBridge`` joins two pseudo-terminals back to back, a virtual RS-485 cable for RTU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import tty
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from devices.api import SerialTransport, TcpTransport
from devices.profile import Profile, RegisterMap, load_profile
from devices.registers import Quantity, Register, Table, encode_value, encode_words
from devices.sim_io import SimIo
from devices.sunspec import END_ID, SUNS_MARKER

__all__ = ["DEFAULT_VALUES", "PtyBridge", "SimIo", "SimMeter", "SimServer"]

#: Values a ``SimMeter`` starts with: a plausible, lightly loaded three-phase connection.
DEFAULT_VALUES: dict[Quantity, float] = {
    Quantity.VOLTAGE_L1: 230.0,
    Quantity.VOLTAGE_L2: 231.0,
    Quantity.VOLTAGE_L3: 229.0,
    Quantity.CURRENT_L1: 10.0,
    Quantity.CURRENT_L2: 11.0,
    Quantity.CURRENT_L3: 12.0,
    Quantity.POWER_L1: 2.3,
    Quantity.POWER_L2: 2.5,
    Quantity.POWER_L3: 2.7,
    Quantity.POWER_TOTAL: 7.5,
    Quantity.ENERGY_IMPORT: 12345.6,
    Quantity.ENERGY_EXPORT: 78.9,
    Quantity.FREQUENCY: 50.0,
    Quantity.TEMPERATURE: 45.0,
}

# SunSpec model lengths (L) of the meter models: sunspec/models json/model_20x.json has 105
# registers after ID and L, model_21x.json 124.
_SUNSPEC_LENGTH = {
    **dict.fromkeys((201, 202, 203, 204), 105),
    **dict.fromkeys((211, 212, 213, 214), 124),
}
_COMMON_LENGTH = 66  # model 1, sunspec/models json/model_1.json
_POWERS = (Quantity.POWER_L1, Quantity.POWER_L2, Quantity.POWER_L3, Quantity.POWER_TOTAL)


def _quantity(key: str | Quantity) -> Quantity:
    return key if isinstance(key, Quantity) else Quantity(key)


class SimMeter:
    """A simulated device holding a profile's registers.

    Args:
        profile: The profile (or its name) whose encoding to imitate.
        unit_id: The Modbus unit id it answers to.
        values: Initial quantities in normalised units (kW, kWh, V, A, Hz, °C), import positive;
            keys are ``Quantity`` members or their names. ``None`` means "not implemented".
            Unspecified quantities take ``DEFAULT_VALUES``.
        sunspec_model: For SunSpec profiles, the model to serve (default the first listed).
        sunspec_base: Where the ``SunS`` marker sits (40000, 50000 or 0).
        integrate_energy: Advance the energy counters by ``power_total`` × time, import when
            positive and export when negative, as a real meter does (its counter moves while
            power flows). ``False`` keeps them where they were put: a stuck counter. A value
            given to :meth:`update` sets a counter; it advances from there.
        noise: Relative amplitude of the noise every read adds to voltages, currents and
            powers (e.g. ``1e-3``: ±0.1 %), as a real meter shows in its last digits. A zero
            value stays exactly zero (an idle meter). Default none: reads return exact values.
        clock: The time source for counting energy (tests inject one).

    Attributes:
        exception: A Modbus exception code to answer every read with, or ``None``.
        delay_s: Seconds to wait before answering (a slow or hung device).
        silent: Answer nothing at all (the response is dropped).
        drop_next: Drop only the next this many responses (a transient fault).
        garble: Corrupt every response (CRC on RTU, length on TCP).
        frozen: Serve the registers as they are now, whatever :meth:`update` sets later or the
            counters do (a stuck meter, or a gateway serving its cache); ``False`` serves the
            current values again.
    """

    def __init__(
        self,
        profile: Profile | str,
        unit_id: int = 1,
        values: Mapping[str | Quantity, float | None] | None = None,
        *,
        sunspec_model: int | None = None,
        sunspec_base: int = 40000,
        integrate_energy: bool = True,
        noise: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.unit_id = unit_id
        self.exception: int | None = None
        self.delay_s = 0.0
        self.silent = False
        self.drop_next = 0
        self.garble = False
        self.integrate_energy = integrate_energy
        self.noise = noise
        self._frozen = False
        self._rng = random.Random(unit_id)  # reproducible noise
        self._clock = clock
        self._energy_mono: float | None = None
        #: ``clock()`` (time.monotonic()) of every read served (benchmarks time reactions from it).
        self.read_times: deque[float] = deque(maxlen=100_000)
        self._release = asyncio.Event()
        self._values: dict[Quantity, float | None] = dict(DEFAULT_VALUES)
        self._raw: dict[tuple[Table, int], int] = {}
        self._image: dict[Table, dict[int, int]] = {Table.HOLDING: {}, Table.INPUT: {}}
        self._fixed_words: dict[tuple[Table, int], int] = {}
        self.regmap = self._layout(sunspec_model, sunspec_base)
        self.update(values or {})

    # Public methods.

    @property
    def frozen(self) -> bool:
        """Whether the served registers are held (see the class docstring)."""
        return self._frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._frozen = value
        if not value:
            self._encode()

    def update(
        self, values: Mapping[str | Quantity, float | None] | None = None, **kwargs: float | None
    ) -> None:
        """Set quantities (normalised units, import positive); the next read returns them.

        Raises:
            ValueError: a value that the device's register type cannot hold.
        """
        self._advance(self._clock())  # up to now at the power in force until now
        for key, value in {**(values or {}), **kwargs}.items():
            self._values[_quantity(key)] = value
        self._raw.clear()
        self._encode()

    def set_raw(self, address: int, words: Sequence[int], table: Table | None = None) -> None:
        """Overwrite registers from protocol ``address`` with raw words, e.g. a garbled value.

        The words stay until the next :meth:`update`.
        """
        table = table or self.regmap.registers[0].table
        for i, w in enumerate(words):
            self._raw[(table, address + i)] = w
            self._image[table][address + i] = w

    def value(self, quantity: str | Quantity) -> float | None:
        """The present value of ``quantity`` (normalised, without noise)."""
        return self._values.get(_quantity(quantity))

    def register(self, quantity: str | Quantity) -> Register:
        """The resolved register that holds ``quantity`` (absolute address)."""
        q = _quantity(quantity)
        for reg in self.regmap.registers:
            if reg.quantity is q:
                return reg
        raise KeyError(q.value)

    def words(self, quantity: str | Quantity) -> list[int]:
        """The raw words currently served for ``quantity``."""
        reg = self.register(quantity)
        return [self._image[reg.table].get(a, 0) for a in range(reg.address, reg.end)]

    def clear_faults(self) -> None:
        """Answer normally again."""
        self.exception = None
        self.delay_s = 0.0
        self.silent = False
        self.drop_next = 0
        self.garble = False

    # Internals.

    def _layout(self, sunspec_model: int | None, base: int) -> RegisterMap:
        if self.profile.fixed is not None:
            return self.profile.fixed
        ss = self.profile.sunspec
        assert ss is not None
        model_id = sunspec_model if sunspec_model is not None else ss.model_ids[0]
        relative = ss.map_for(model_id)
        if relative is None:
            raise ValueError(f"profile {self.profile.name} has no map for model {model_id}")
        length = _SUNSPEC_LENGTH.get(model_id, 2 + max(r.end for r in relative.registers))
        words: dict[int, int] = {base: SUNS_MARKER[0], base + 1: SUNS_MARKER[1]}
        common = base + 2
        words[common], words[common + 1] = 1, _COMMON_LENGTH
        for i, w in enumerate(_common_block()):
            words[common + 2 + i] = w
        model_at = common + 2 + _COMMON_LENGTH
        words[model_at], words[model_at + 1] = model_id, length
        for a in range(model_at + 2, model_at + 2 + length):
            words[a] = 0
        end = model_at + 2 + length
        words[end], words[end + 1] = END_ID, 0
        self._fixed_words = {(Table.HOLDING, a): w for a, w in words.items()}
        return relative.shifted(model_at)

    def _advance(self, now: float) -> bool:
        """Integrate the power since the last call into the counters; True if they moved."""
        last, self._energy_mono = self._energy_mono, now
        if not self.integrate_energy or last is None or now <= last:
            return False
        power = self._values.get(Quantity.POWER_TOTAL)
        if power is None:
            phases = [self._values.get(q) for q in _POWERS[:3]]
            power = None if None in phases else sum(phases)  # type: ignore[arg-type]
        if not power:
            return False
        key = Quantity.ENERGY_IMPORT if power > 0 else Quantity.ENERGY_EXPORT
        counter = self._values.get(key)
        if counter is None:
            return False
        self._values[key] = counter + abs(power) * (now - last) / 3600
        return True

    def _served(self) -> dict[Quantity, float | None]:
        """The values a read returns now: the present ones, with noise if asked for."""
        if not self.noise:
            return self._values
        out = dict(self._values)
        for q, v in out.items():
            if v and q.family in ("voltage", "current", "power"):
                out[q] = v * (1 + self._rng.uniform(-self.noise, self.noise))
        return out

    def _encode(self) -> None:
        if self._frozen:
            return  # the served image stays as it was
        values = self._served()
        image: dict[tuple[Table, int], int] = dict(self._fixed_words)
        regs = self.regmap.registers
        exps = self._scale_exponents(regs, values)
        negate = self.profile.sign.value == "export_positive"
        for reg in regs:
            if reg.quantity is None:
                exp = exps.get(reg.id or "")
                words = encode_words(
                    -0x8000 if exp is None else exp, reg.dtype, reg.word_order, reg.byte_order
                )
            else:
                value = values.get(reg.quantity)
                if value is not None and negate and reg.quantity in _POWERS:
                    value = -value
                exp = exps.get(reg.scale_factor, 0) if reg.scale_factor else 0
                words = encode_value(reg, value if exp is not None else None, exp or 0)
            for i, w in enumerate(words):
                image[(reg.table, reg.address + i)] = w
        image.update(self._raw)
        # Fill the holes of each table so reads that bridge unmapped registers succeed.
        for table in Table:
            addrs = [a for (t, a) in image if t is table]
            if addrs:
                for a in range(min(addrs), max(addrs) + 1):
                    image.setdefault((table, a), 0)
        for table in Table:
            self._image[table] = {a: w for (t, a), w in image.items() if t is table}

    def _scale_exponents(
        self, regs: Sequence[Register], values: Mapping[Quantity, float | None]
    ) -> dict[str, int | None]:
        """Pick each SunSpec scale factor as fine as the values sharing it allow."""
        users: dict[str, list[Register]] = {}
        for reg in regs:
            if reg.scale_factor:
                users.setdefault(reg.scale_factor, []).append(reg)
        exps: dict[str, int | None] = {}
        for sf, members in users.items():
            vals = [(r, values.get(r.quantity)) for r in members if r.quantity]
            if all(v is None for _, v in vals) and vals:
                exps[sf] = None  # every user missing: the scale factor is "not implemented"
                continue
            for exp in range(-3, 11):
                try:
                    for r, v in vals:
                        if v is not None:
                            encode_value(r, v, exp)
                except ValueError:
                    continue
                exps[sf] = exp
                break
            else:
                raise ValueError(f"values for {sf} do not fit their registers")
        return exps

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        now = self._clock()
        self.read_times.append(now)
        if (self._advance(now) or self.noise) and not self._frozen:
            # A counter or noisy value the registers cannot hold: serve the last image.
            with contextlib.suppress(ValueError):
                self._encode()
        if self.delay_s:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.delay_s):
                    await self._release.wait()
        if self.exception is not None:
            return ExcCodes(self.exception)
        image = self._image[Table.INPUT if function_code == 4 else Table.HOLDING]
        for a in range(address, address + count):
            registers[a - start_address] = image.get(a, 0)
        return None

    def _sim_device(self) -> SimDevice:
        blocks: dict[Table, list[SimData]] = {}
        for table in Table:
            image = self._image[table]
            if image:
                lo = min(image)
                values = [image.get(a, 0) for a in range(lo, max(image) + 1)]
                blocks[table] = [SimData(lo, values=values, datatype=DataType.REGISTERS)]
            else:
                # pymodbus wants every table non-empty; park one register out of the way.
                blocks[table] = [SimData(65000, values=[0], datatype=DataType.REGISTERS)]
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        return SimDevice(
            self.unit_id,
            simdata=(bits, list(bits), blocks[Table.HOLDING], blocks[Table.INPUT]),
            action=self._action,
        )


def _common_block() -> list[int]:
    """Model 1 (Common) content: manufacturer and model strings, zeros elsewhere."""

    def text(s: str, regs: int) -> list[int]:
        data = s.encode()[: regs * 2].ljust(regs * 2, b"\0")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]

    # Mn (16 regs), Md (16), Opt (8), Vr (8), SN (16), DA, Pad
    return (
        text("sitectl", 16)
        + text("simulated meter", 16)
        + [0] * 8
        + text("1.0", 8)
        + text("SIM0001", 16)
        + [1, 0x8000]
    )


class _Gateway:
    """Answers for unit ids no simulated device has, like a real gateway or bus does."""

    def __init__(self, mode: Literal["gateway", "silent"]) -> None:
        self.mode = mode

    def sim_device(self) -> SimDevice:
        """Unit id 0 in pymodbus means "every unit not listed"; it must accept any address."""
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        every = [SimData(0, count=65535, values=0, datatype=DataType.REGISTERS)]
        return SimDevice(0, simdata=(bits, list(bits), every, list(every)), action=self.action)

    async def action(self, *_: object) -> ExcCodes | None:
        # A TCP gateway reports an absent RTU unit with exception 0x0B (Modbus Application
        # Protocol V1.1b3 §7); on a bus nobody answers, which _trace turns into silence.
        return ExcCodes.GATEWAY_NO_RESPONSE if self.mode == "gateway" else None


class SimServer:
    """A pymodbus server (TCP, or RTU on a serial port) serving ``SimMeter`` devices (and
    ``SimIo`` I/O modules, ``devices.sim_io``).

    Args:
        meters: The devices; unit ids must be distinct.
        host: TCP address to bind.
        port: TCP port; 0 picks a free one (kept across ``stop``/``start``).
        serial: Serve RTU on this serial port instead of TCP.
        unknown_unit: How a request for an unknown unit id is answered: ``"gateway"``
            (exception 0x0B; default on TCP) or ``"silent"`` (no answer; default on serial).
    """

    def __init__(
        self,
        meters: Sequence[SimMeter | SimIo],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial: SerialTransport | None = None,
        unknown_unit: Literal["gateway", "silent"] | None = None,
    ) -> None:
        units = [m.unit_id for m in meters]
        if len(set(units)) != len(units) or not meters:
            raise ValueError(f"need distinct unit ids, got {units}")
        self.meters = list(meters)
        self.host = host
        self.port = port
        self.serial = serial
        mode = unknown_unit or ("silent" if serial else "gateway")
        self._gateway = _Gateway(mode)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    @property
    def transport(self) -> TcpTransport | SerialTransport:
        """Where clients reach this server (the serial spec is the server's own port)."""
        if self.serial is not None:
            return self.serial
        return TcpTransport(self.host, self.port)

    @property
    def connections(self) -> int:
        """Open client connections (TCP only; 0 when stopped)."""
        if self._server is None or self.serial is not None:
            return 0
        return len(self._server.active_connections)

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    async def start(self) -> None:
        """Start serving (again, on the same port after a ``stop``).

        Raises:
            OSError: the port cannot be bound.
        """
        if self._server is not None:
            return
        for m in self.meters:
            m._release = asyncio.Event()
        devices = [m._sim_device() for m in self.meters]
        devices.append(self._gateway.sim_device())
        if self.serial is None:
            server: ModbusTcpServer | ModbusSerialServer = ModbusTcpServer(
                devices, address=(self.host, self.port), trace_packet=self._trace
            )
        else:
            s = self.serial
            server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=s.port,
                baudrate=s.baudrate,
                parity=s.parity,
                stopbits=s.stopbits,
                bytesize=s.bytesize,
                trace_packet=self._trace,
            )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"cannot serve on {self.transport}: {exc}") from None
        if self.serial is None:
            self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._server = server

    async def stop(self) -> None:
        """Stop serving and drop every connection, as a device that loses power."""
        server, self._server = self._server, None
        if server is None:
            return
        for m in self.meters:
            m._release.set()  # let delayed answers finish instead of lingering
        await server.shutdown()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        rtu = self.serial is not None
        unit = data[0] if rtu else (data[6] if len(data) > 6 else -1)
        meter = next((m for m in self.meters if m.unit_id == unit), None)
        if meter is None:
            return b"" if self._gateway.mode == "silent" else data
        if meter.silent:
            return b""
        if meter.drop_next > 0:
            meter.drop_next -= 1
            return b""
        if meter.garble:
            if rtu:
                return data[:-1] + bytes([data[-1] ^ 0xFF])  # break the CRC
            # Claim a longer frame than sent: the client waits for bytes that never come.
            length = int.from_bytes(data[4:6], "big") + 16
            return data[:4] + length.to_bytes(2, "big") + data[6:]
        return data


class PtyBridge:
    """Two pseudo-terminals joined back to back: a virtual serial cable.

    Whatever is written to ``port_a`` is read from ``port_b`` and vice versa. Pure Python:
    ``os.openpty`` and a relay on the event loop, no socat.
    """

    def __init__(self) -> None:
        self._fds: list[int] = []
        ma, sa = os.openpty()
        mb, sb = os.openpty()
        self._fds = [ma, sa, mb, sb]
        for fd in (sa, sb):
            tty.setraw(fd)  # no echo, no line editing before pyserial sets the port up
        for fd in (ma, mb):
            os.set_blocking(fd, False)
        self._masters = (ma, mb)
        self.port_a = os.ttyname(sa)
        self.port_b = os.ttyname(sb)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start relaying (call in the event loop)."""
        self._loop = asyncio.get_running_loop()
        ma, mb = self._masters
        self._loop.add_reader(ma, self._pump, ma, mb)
        self._loop.add_reader(mb, self._pump, mb, ma)

    def close(self) -> None:
        """Stop relaying and close every descriptor."""
        if self._loop is not None:
            for fd in self._masters:
                self._loop.remove_reader(fd)
            self._loop = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    @staticmethod
    def _pump(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
            if data:
                os.write(dst, data)
        except (BlockingIOError, OSError):
            # Nothing to read, or the far side is closed: a cut cable loses bytes, as here.
            pass

    def __enter__(self) -> PtyBridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
