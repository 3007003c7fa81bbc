"""Digital I/O profiles: named inputs of an I/O module, kept as data like the meter profiles.

An I/O module (a Moxa ioLogik, a WAGO or Phoenix Contact coupler, a relay box) reports contacts
as single bits. A profile names them::

    name: moxa-iologik-e1210
    kind: io
    table: discrete            # default for the inputs below
    inputs:
      - {name: di0, address: 0x0000, label: CH0 DI Value}
      - {name: di0_word, table: input, address: 0x0030, bit: 0}

``table`` is where a bit lives: ``discrete`` (discrete inputs, function code 02), ``coil``
(coils, FC 01), or, for modules that map their inputs into registers, ``holding`` (FC 03) or
``input`` (FC 04) with ``bit`` (0 = least significant) naming the bit of the register; a register
input without ``bit`` must hold 0 or 1 (anything else is a bad value, the input is unknown).
``address`` is written as the manual writes it, with ``base`` (0 or 1) saying how it numbers.

Shipped profiles live in ``devices/profiles/io/``; ``modbus-di`` is the generic one, whose
``inputs`` the installer writes in the site YAML (same schema). A profile says nothing about
what a contact *means* (active high or low): that is the configuration of whoever reads it.
Every problem is reported with the profile name and field path, as ``devices.profile`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devices.api import DeviceSpec
from devices.profile import ProfileError, _message, _path, _ProductModel
from devices.registers import MAX_READ_BITS, MAX_READ_COUNT, BitTable, Table

__all__ = [
    "MODBUS_DI",
    "DigitalInput",
    "IoBlock",
    "IoProfile",
    "available_io_profiles",
    "decode_inputs",
    "is_io_profile",
    "load_io_profile",
    "parse_io_profile",
    "resolve_io_profile",
]

#: Profile name of an I/O device whose inputs are written inline in the site YAML.
MODBUS_DI = "modbus-di"

_TABLES: dict[str, Table | BitTable] = {
    "discrete": BitTable.DISCRETE,
    "coil": BitTable.COIL,
    "holding": Table.HOLDING,
    "input": Table.INPUT,
}


# The YAML schema.


class _InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    address: int = Field(ge=0, le=65536)
    table: Literal["discrete", "coil", "holding", "input"] | None = None
    bit: int | None = Field(None, ge=0, le=15)
    label: str | None = None


class _IoProfileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    kind: Literal["io"] = "io"
    description: str = ""
    source: str = ""
    products: list[_ProductModel] = Field(default_factory=list)
    base: Literal[0, 1] = 0
    table: Literal["discrete", "coil", "holding", "input"] = "discrete"
    max_gap: int = Field(default=0, ge=0, le=MAX_READ_COUNT)
    inputs: list[_InputModel] = Field(min_length=1)


# What the engine uses.


@dataclass(frozen=True, slots=True)
class DigitalInput:
    """One named input: where its bit is read.

    ``address`` is the 0-based protocol address; ``number`` is how the manual writes it.
    ``bit`` is set for an input inside a register (``None``: a coil or discrete input, or a
    register that holds 0 or 1).
    """

    name: str
    label: str
    table: Table | BitTable
    address: int
    number: int
    bit: int | None = None

    def where(self) -> str:
        """Where it is read, for messages: ``discrete input 0``, ``holding 48 bit 3``."""
        if isinstance(self.table, BitTable):
            kind = "coil" if self.table is BitTable.COIL else "discrete input"
            return f"{kind} {self.number}"
        bit = f" bit {self.bit}" if self.bit is not None else ""
        return f"{self.table.value} register {self.number}{bit}"


@dataclass(frozen=True, slots=True)
class IoBlock:
    """One read request: ``count`` registers or bits of ``table`` from ``address``."""

    table: Table | BitTable
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class IoProfile:
    """A validated digital I/O profile: its inputs and the reads that cover them."""

    name: str
    description: str
    source: str
    inputs: tuple[DigitalInput, ...]
    blocks: tuple[IoBlock, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Input names in profile order."""
        return tuple(i.name for i in self.inputs)

    def input(self, name: str) -> DigitalInput | None:
        """The input called ``name``, or ``None``."""
        return next((i for i in self.inputs if i.name == name), None)


def plan_io_blocks(inputs: Iterable[DigitalInput], max_gap: int = 0) -> tuple[IoBlock, ...]:
    """Group inputs into as few reads as the gap rule and the protocol's limits allow.

    Inputs of one table are merged while the hole between them is at most ``max_gap``
    addresses (for bits, ``max(max_gap, 16)``: unmapped discrete inputs inside one read are
    harmless on every module we know, and a 16-input module then costs one request).
    """
    by_table: dict[Table | BitTable, list[int]] = {}
    for item in inputs:
        by_table.setdefault(item.table, []).append(item.address)
    blocks: list[IoBlock] = []
    for table in sorted(by_table, key=lambda t: (isinstance(t, Table), t.value)):
        bits = isinstance(table, BitTable)
        gap = max(max_gap, 16) if bits else max_gap
        most = MAX_READ_BITS if bits else MAX_READ_COUNT
        addresses = sorted(set(by_table[table]))
        start = end = addresses[0]
        for address in addresses[1:]:
            if address - end - 1 <= gap and address - start + 1 <= most:
                end = address
            else:
                blocks.append(IoBlock(table, start, end - start + 1))
                start = end = address
        blocks.append(IoBlock(table, start, end - start + 1))
    return tuple(blocks)


def parse_io_profile(data: Mapping[str, Any] | Sequence[Mapping[str, Any]], name: str) -> IoProfile:
    """Validate an I/O profile given as YAML data (for ``modbus-di``: a list of inputs too).

    Raises:
        ProfileError: with every problem found, each with its field path.
    """
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        data = {"inputs": list(data)}
    if not isinstance(data, Mapping):
        raise ProfileError(name, [f"(top level): expected a mapping, got {type(data).__name__}"])
    try:
        model = _IoProfileModel.model_validate(dict(data))
    except ValidationError as exc:
        raise ProfileError(
            name, [f"{_path(e['loc'])}: {_message(e)}" for e in exc.errors()]
        ) from None
    problems: list[str] = []
    resolved: list[DigitalInput] = []
    names: dict[str, int] = {}
    places: dict[tuple[Table | BitTable, int, int | None], int] = {}
    for i, item in enumerate(model.inputs):
        path = f"inputs[{i}]"
        table = _TABLES[item.table or model.table]
        if item.name in names:
            first = names[item.name]
            problems.append(f"{path}.name: {item.name!r} already used by inputs[{first}]")
        names.setdefault(item.name, i)
        if item.bit is not None and isinstance(table, BitTable):
            problems.append(f"{path}.bit: only for an input in a holding or input register")
        address = item.address - model.base
        if address < 0 or address > 65535:
            problems.append(
                f"{path}.address: {item.address} is outside the address space "
                f"(numbering starts at {model.base})"
            )
            continue
        place = (table, address, item.bit)
        if place in places:
            problems.append(f"{path}.address: same bit as inputs[{places[place]}]")
        places.setdefault(place, i)
        resolved.append(
            DigitalInput(
                name=item.name,
                label=item.label or item.name,
                table=table,
                address=address,
                number=item.address,
                bit=item.bit,
            )
        )
    # A whole register (0/1) and a bit of the same register cannot both be right.
    whole = {(t, a) for (t, a, b) in places if b is None and isinstance(t, Table)}
    for (t, a, b), i in places.items():
        if b is not None and (t, a) in whole:
            problems.append(f"inputs[{i}].bit: register {a} is also read as a whole (0 or 1)")
    if problems:
        raise ProfileError(name, problems)
    return IoProfile(
        name=model.name or name,
        description=model.description,
        source=model.source,
        inputs=tuple(resolved),
        blocks=plan_io_blocks(resolved, model.max_gap),
    )


def available_io_profiles() -> list[str]:
    """Names of the I/O profiles shipped with sitectl, sorted, plus ``modbus-di``."""
    files = resources.files("devices") / "profiles" / "io"
    names = [p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml")]
    return sorted([*names, MODBUS_DI])


@functools.cache
def _io_names() -> frozenset[str]:
    return frozenset(available_io_profiles())


def is_io_profile(name: str) -> bool:
    """Whether ``name`` is a digital I/O profile (not a meter's)."""
    return name in _io_names()


@functools.cache
def load_io_profile(name: str) -> IoProfile:
    """Load and validate a shipped I/O profile by file stem (``moxa-iologik-e1210``).

    Raises:
        ProfileError: unknown name (the message lists the known ones), bad YAML or content.
    """
    if name == MODBUS_DI:
        raise ProfileError(name, ["a modbus-di device needs 'inputs' in the site YAML"])
    path = resources.files("devices") / "profiles" / "io" / f"{name}.yaml"
    if "/" in name or not path.is_file():
        known = ", ".join(available_io_profiles())
        raise ProfileError(name, [f"unknown I/O profile (known: {known})"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(name, [f"(file): not valid YAML: {exc}"]) from None
    return parse_io_profile(data, name)


def resolve_io_profile(spec: DeviceSpec) -> IoProfile:
    """The I/O profile a device spec asks for: a shipped one, or its inline ``modbus-di`` map.

    Raises:
        ProfileError: as :func:`load_io_profile` / :func:`parse_io_profile`.
    """
    if spec.profile == MODBUS_DI:
        if not spec.inline_inputs:
            raise ProfileError(f"{MODBUS_DI}:{spec.name}", ["inputs: required for modbus-di"])
        return parse_io_profile(spec.inline_inputs, f"{MODBUS_DI}:{spec.name}")
    return load_io_profile(spec.profile)


def decode_inputs(
    inputs: Sequence[DigitalInput], raw: Mapping[tuple[Table | BitTable, int], int]
) -> tuple[dict[str, bool | None], list[str]]:
    """Every input's state from the words and bits read; ``None`` where it cannot be told.

    Returns:
        The states by name, and one message per input whose value is bad (a register that
        should hold 0 or 1 and holds something else) or was not read.
    """
    states: dict[str, bool | None] = {}
    problems: list[str] = []
    for item in inputs:
        value = raw.get((item.table, item.address))
        if value is None:
            states[item.name] = None
            problems.append(f"input {item.name} ({item.where()}): not read")
        elif item.bit is not None:
            states[item.name] = bool((value >> item.bit) & 1)
        elif value in (0, 1):
            states[item.name] = bool(value)
        else:
            states[item.name] = None
            problems.append(
                f"input {item.name} ({item.where()}) holds {value}, expected 0 or 1 "
                "(a register of several inputs needs `bit:`)"
            )
    return states, problems
