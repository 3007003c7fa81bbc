"""Register decoding: Modbus words in, quantities in SI-ish units out. No I/O here.

Rules of this module:

- A ``Register`` is resolved: its ``address`` is the 0-based protocol address that goes on the
  wire, whatever numbering the vendor's manual uses (``number`` keeps the manual's, for messages).
- Word order ``big`` means the most significant 16-bit word comes first (Modbus "big-endian"
  registers, as Eastron, Schneider, Siemens, Janitza and SunSpec send them); ``little`` reverses the
  word sequence (Carlo Gavazzi's INT32, "LSW first"). Byte order applies inside each register.
- A value is ``raw × scale × 10^sf × unit factor``; ``sf`` comes from a SunSpec scale-factor
  register (``sunssf``) when the register names one.
- SunSpec "not implemented" values are missing (``None``), never 0 (reference §7 B3).
- ``encode_value`` is the exact inverse of ``decode_value``; the simulator uses it.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_COUNT",
    "BitTable",
    "Block",
    "DType",
    "DecodeError",
    "Decoded",
    "Order",
    "Quantity",
    "Register",
    "Table",
    "decode_map",
    "decode_value",
    "decode_words",
    "encode_value",
    "encode_words",
    "is_sentinel",
    "plan_blocks",
    "sentinel_words",
    "unit_factor",
]

#: Modbus Application Protocol v1.1b3 §6.3/§6.4: a read carries at most 125 registers.
MAX_READ_COUNT = 125
#: Modbus Application Protocol v1.1b3 §6.1/§6.2: a read of coils or discrete inputs carries at
#: most 2000 bits.
MAX_READ_BITS = 2000


class Table(enum.Enum):
    """Which register table a value lives in (and so which function code reads it)."""

    HOLDING = "holding"  # FC 03
    INPUT = "input"  # FC 04


class BitTable(enum.Enum):
    """Which single-bit table a digital value lives in (I/O modules, ``devices.digital``)."""

    COIL = "coil"  # FC 01 (outputs, often readable back; some modules map inputs here)
    DISCRETE = "discrete"  # FC 02 (discrete inputs)


class Order(enum.Enum):
    """Byte order inside a register, or word order across registers."""

    BIG = "big"
    LITTLE = "little"


class DType(enum.Enum):
    """Register data types. ``sunssf``/``acc32``/``acc64`` are SunSpec's own names."""

    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    SUNSSF = "sunssf"  # int16 power-of-ten exponent
    ACC32 = "acc32"  # uint32 accumulator
    ACC64 = "acc64"  # uint64 accumulator

    @property
    def width(self) -> int:
        """Number of 16-bit registers the type occupies."""
        return _LAYOUT[self][1]

    @property
    def is_float(self) -> bool:
        """True for IEEE-754 types."""
        return self in (DType.F32, DType.F64)


# struct format, width in registers
_LAYOUT: dict[DType, tuple[str, int]] = {
    DType.U16: ("H", 1),
    DType.I16: ("h", 1),
    DType.SUNSSF: ("h", 1),
    DType.U32: ("I", 2),
    DType.I32: ("i", 2),
    DType.ACC32: ("I", 2),
    DType.U64: ("Q", 4),
    DType.I64: ("q", 4),
    DType.ACC64: ("Q", 4),
    DType.F32: ("f", 2),
    DType.F64: ("d", 4),
}

# SunSpec "not implemented" values, as decoded numbers (reference §7 B3; SunSpec Information Model
# [verify]). Floats use NaN, tested with math.isnan.
_SENTINELS: dict[DType, int] = {
    DType.I16: -0x8000,
    DType.SUNSSF: -0x8000,
    DType.U16: 0xFFFF,
    DType.I32: -0x80000000,
    DType.U32: 0xFFFFFFFF,
    DType.ACC32: 0,
    DType.I64: -0x8000000000000000,
    DType.U64: 0xFFFFFFFFFFFFFFFF,
    DType.ACC64: 0,
}


class Quantity(enum.Enum):
    """Normalised quantities a profile can map. Units: V, A, kW, kWh, Hz, °C."""

    VOLTAGE_L1 = "voltage_l1"
    VOLTAGE_L2 = "voltage_l2"
    VOLTAGE_L3 = "voltage_l3"
    CURRENT_L1 = "current_l1"
    CURRENT_L2 = "current_l2"
    CURRENT_L3 = "current_l3"
    POWER_L1 = "power_l1"
    POWER_L2 = "power_l2"
    POWER_L3 = "power_l3"
    POWER_TOTAL = "power_total"
    ENERGY_IMPORT = "energy_import"
    ENERGY_EXPORT = "energy_export"
    FREQUENCY = "frequency"
    TEMPERATURE = "temperature"

    @property
    def family(self) -> str:
        """``voltage``, ``current``, ``power``, ``energy``, ``frequency`` or ``temperature``."""
        return self.value.split("_")[0]

    @property
    def unit(self) -> str:
        """The normalised unit."""
        return _NORMAL_UNIT[self.family]


_NORMAL_UNIT = {
    "voltage": "V",
    "current": "A",
    "power": "kW",
    "energy": "kWh",
    "frequency": "Hz",
    "temperature": "°C",
}

# Units a device may report in, per family, with the factor to the normalised unit.
_UNIT_FACTORS: dict[str, dict[str, float]] = {
    "voltage": {"V": 1.0, "kV": 1e3},
    "current": {"A": 1.0, "mA": 1e-3, "kA": 1e3},
    "power": {"W": 1e-3, "kW": 1.0, "MW": 1e3},
    "energy": {"Wh": 1e-3, "kWh": 1.0, "MWh": 1e3},
    "frequency": {"Hz": 1.0},
    "temperature": {"°C": 1.0, "degC": 1.0, "C": 1.0},
}


def unit_factor(quantity: Quantity, unit: str) -> float:
    """Return the factor from ``unit`` to the quantity's normalised unit.

    Raises:
        ValueError: ``unit`` is not a unit of the quantity's family.
    """
    units = _UNIT_FACTORS[quantity.family]
    if unit not in units:
        raise ValueError(
            f"unit {unit!r} is not a {quantity.family} unit (one of {', '.join(units)})"
        )
    return units[unit]


class DecodeError(Exception):
    """Register content that cannot be turned into a value; names the register."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(f"decode error at register {number}: {message}")
        self.number = number


@dataclass(frozen=True, slots=True)
class Register:
    """One resolved register entry of a profile.

    ``address`` is the 0-based protocol address; ``number`` is how the manual writes it.
    ``index`` is the entry's position in the profile's ``registers`` list.
    """

    index: int
    quantity: Quantity | None
    id: str | None
    label: str
    table: Table
    address: int
    number: int
    dtype: DType
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    scale: float = 1.0
    unit: str | None = None
    scale_factor: str | None = None
    sentinels: bool = False

    @property
    def width(self) -> int:
        """Registers occupied."""
        return self.dtype.width

    @property
    def end(self) -> int:
        """First protocol address after this register."""
        return self.address + self.dtype.width

    @property
    def factor(self) -> float:
        """Fixed factor from raw to normalised units (scale × unit factor)."""
        if self.quantity is None or self.unit is None:
            return self.scale
        return self.scale * unit_factor(self.quantity, self.unit)


# Words <-> numbers.


def _swap_bytes(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def decode_words(
    words: Sequence[int], dtype: DType, word_order: Order = Order.BIG, byte_order: Order = Order.BIG
) -> int | float:
    """Decode ``dtype.width`` registers into a number.

    Raises:
        ValueError: wrong number of words, or a word outside 0..0xFFFF.
    """
    fmt, width = _LAYOUT[dtype]
    if len(words) != width:
        raise ValueError(f"{dtype.value} needs {width} registers, got {len(words)}")
    ordered = list(words) if word_order is Order.BIG else list(reversed(words))
    if byte_order is Order.LITTLE:
        ordered = [_swap_bytes(w) for w in ordered]
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    return struct.unpack(">" + fmt, data)[0]


def encode_words(
    value: int | float,
    dtype: DType,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
) -> list[int]:
    """Encode a number as ``dtype`` registers; the inverse of :func:`decode_words`.

    Raises:
        ValueError: ``value`` does not fit ``dtype``.
    """
    fmt = _LAYOUT[dtype][0]
    if not dtype.is_float:
        value = round(value)
    try:
        data = struct.pack(">" + fmt, value)
    except struct.error as exc:
        raise ValueError(f"{value!r} does not fit {dtype.value}") from exc
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if byte_order is Order.LITTLE:
        words = [_swap_bytes(w) for w in words]
    return words if word_order is Order.BIG else list(reversed(words))


def is_sentinel(value: int | float, dtype: DType) -> bool:
    """True if ``value`` is SunSpec's "not implemented" value for ``dtype``."""
    if dtype.is_float:
        return math.isnan(value)
    return value == _SENTINELS[dtype]


def sentinel_words(reg: Register) -> list[int]:
    """The registers that say "not implemented" for ``reg`` (used by the simulator)."""
    value: int | float = math.nan if reg.dtype.is_float else _SENTINELS[reg.dtype]
    return encode_words(value, reg.dtype, reg.word_order, reg.byte_order)


def decode_value(reg: Register, words: Sequence[int], sf_exp: int = 0) -> float | None:
    """Decode one register entry to its normalised value; ``None`` if not implemented."""
    raw = decode_words(words, reg.dtype, reg.word_order, reg.byte_order)
    if reg.sentinels and is_sentinel(raw, reg.dtype):
        return None
    return float(raw) * reg.factor * (10.0**sf_exp)


def encode_value(reg: Register, value: float | None, sf_exp: int = 0) -> list[int]:
    """Encode a normalised value as the device would; ``None`` gives the sentinel or NaN.

    Raises:
        ValueError: the value does not fit the register's type at this scale.
    """
    if value is None:
        if reg.sentinels:
            return sentinel_words(reg)
        if reg.dtype.is_float:
            return encode_words(math.nan, reg.dtype, reg.word_order, reg.byte_order)
        raise ValueError(f"register {reg.number} ({reg.dtype.value}) cannot hold 'missing'")
    raw = value / reg.factor / (10.0**sf_exp)
    return encode_words(raw, reg.dtype, reg.word_order, reg.byte_order)


# Planning reads.


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers of ``table`` from ``address``."""

    table: Table
    address: int
    count: int


def plan_blocks(
    registers: Iterable[Register], max_gap: int = 0, max_count: int = MAX_READ_COUNT
) -> tuple[Block, ...]:
    """Group registers into as few reads as possible.

    Registers of one table are merged while the hole between them is at most ``max_gap``
    registers (a device must tolerate reading unmapped registers for ``max_gap > 0``) and the
    read stays within ``max_count`` registers.
    """
    blocks: list[Block] = []
    by_table: dict[Table, list[Register]] = {}
    for reg in registers:
        by_table.setdefault(reg.table, []).append(reg)
    for table in sorted(by_table, key=lambda t: t.value):
        regs = sorted(by_table[table], key=lambda r: r.address)
        start, end = regs[0].address, regs[0].end
        for reg in regs[1:]:
            if reg.address - end <= max_gap and max(end, reg.end) - start <= max_count:
                end = max(end, reg.end)
            else:
                blocks.append(Block(table, start, end - start))
                start, end = reg.address, reg.end
        blocks.append(Block(table, start, end - start))
    return tuple(blocks)


# Decoding a whole map.


@dataclass(frozen=True, slots=True)
class Decoded:
    """Values of one poll, before plausibility checks.

    ``missing`` explains every quantity the device reported as not implemented.
    """

    values: dict[Quantity, float | None]
    missing: dict[Quantity, str]


def _words(raw: Mapping[tuple[Table, int], int], reg: Register) -> list[int]:
    try:
        return [raw[(reg.table, a)] for a in range(reg.address, reg.end)]
    except KeyError:
        raise DecodeError(reg.number, f"no data read for {reg.label}") from None


def decode_map(registers: Sequence[Register], raw: Mapping[tuple[Table, int], int]) -> Decoded:
    """Decode every quantity register of a map from the words read.

    Raises:
        DecodeError: a word is missing, or a scale factor is out of range.
    """
    by_id = {r.id: r for r in registers if r.id is not None}
    exps: dict[str, int | None] = {}
    values: dict[Quantity, float | None] = {}
    missing: dict[Quantity, str] = {}
    for reg in registers:
        if reg.quantity is None:
            continue
        exp: int | None = 0
        if reg.scale_factor is not None:
            if reg.scale_factor not in exps:
                sf_reg = by_id[reg.scale_factor]
                sf = decode_words(
                    _words(raw, sf_reg), sf_reg.dtype, sf_reg.word_order, sf_reg.byte_order
                )
                if sf_reg.sentinels and is_sentinel(sf, sf_reg.dtype):
                    exps[reg.scale_factor] = None
                elif not -10 <= sf <= 10:
                    # SunSpec sunssf range is -10..10; anything else is garbage, not a scale.
                    raise DecodeError(
                        sf_reg.number, f"scale factor {sf_reg.label} = {sf} is outside -10..10"
                    )
                else:
                    exps[reg.scale_factor] = int(sf)
            exp = exps[reg.scale_factor]
        if exp is None:
            values[reg.quantity] = None
            missing[reg.quantity] = (
                f"scale factor {reg.scale_factor} not implemented (register "
                f"{by_id[reg.scale_factor].number})"
            )
            continue
        value = decode_value(reg, _words(raw, reg), exp)
        values[reg.quantity] = value
        if value is None:
            missing[reg.quantity] = (
                f"register {reg.number} ({reg.label}) holds the 'not implemented' value"
            )
    return Decoded(values, missing)
