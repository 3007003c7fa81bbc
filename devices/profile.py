"""Device profiles: one YAML file per device model, validated into a ``Profile``.

A profile is data (STYLE.md §3, after evcc's ``templates/definition/meter``): products, defaults
for the whole map, then ``registers`` with ``address`` as the vendor's manual writes it, ``table``,
``decode`` (type), ``word_order``/``byte_order``, ``scale``, ``unit`` and the manual's field
``name``. SunSpec devices carry ``sunspec:`` instead: the bases to look for the ``SunS`` marker and
one register map per group of model ids, with addresses as offsets from the model's ``ID``
register. ``generic`` is a map written inline in the site YAML, in the same schema.

Every problem is reported with the profile name and the field path, e.g.
``profile 'x': registers[3].decode: unknown type 'u24'``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from devices.api import DeviceSpec, Sign
from devices.registers import (
    MAX_READ_COUNT,
    Block,
    DType,
    Order,
    Quantity,
    Register,
    Table,
    plan_blocks,
    unit_factor,
)

__all__ = [
    "GENERIC",
    "Profile",
    "ProfileError",
    "RegisterMap",
    "SunSpecModels",
    "available_profiles",
    "load_profile",
    "parse_profile",
    "resolve_profile",
]

#: Profile name of a register map written inline in the site YAML.
GENERIC = "generic"

#: Where the SunSpec ``SunS`` marker may start (reference §7 B1, SolarNetwork wiki).
SUNSPEC_BASES = (40000, 50000, 0)

_PHASE_POWERS = (Quantity.POWER_L1, Quantity.POWER_L2, Quantity.POWER_L3)


class ProfileError(ValueError):
    """A profile that cannot be used. ``problems`` lists each one with its field path."""

    def __init__(self, profile: str, problems: Sequence[str]) -> None:
        self.profile = profile
        self.problems = [f"profile {profile!r}: {p}" for p in problems]
        super().__init__("\n".join(self.problems))


# The YAML schema.


def _parse_type(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return DType(value)
        except ValueError:
            raise ValueError(f"unknown type {value!r}") from None
    return value


class _RegisterModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: Quantity | None = None
    id: str | None = None
    name: str | None = None
    address: int = Field(ge=0, le=65536)
    table: Table | None = None
    decode: DType | None = None
    word_order: Order | None = None
    byte_order: Order | None = None
    scale: float = 1.0
    scale_factor: str | None = None
    unit: str | None = None

    _decode = field_validator("decode", mode="before")(_parse_type)


class _SunSpecMapModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[int] = Field(min_length=1)
    registers: list[_RegisterModel] = Field(min_length=1)


class _SunSpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bases: list[int] = Field(default_factory=lambda: list(SUNSPEC_BASES), min_length=1)
    models: list[_SunSpecMapModel] = Field(min_length=1)


class _ProductModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    brand: str
    model: str


class _ProfileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str = ""
    source: str = ""
    products: list[_ProductModel] = Field(default_factory=list)
    kind: Literal["meter", "sensor"] = "meter"
    base: Literal[0, 1] = 0
    table: Table = Table.HOLDING
    decode: DType | None = None
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    sign: Sign = Sign.IMPORT_POSITIVE
    sentinels: Literal["none", "sunspec"] = "none"
    max_gap: int = Field(default=0, ge=0, le=MAX_READ_COUNT)
    registers: list[_RegisterModel] | None = None
    sunspec: _SunSpecModel | None = None

    _decode = field_validator("decode", mode="before")(_parse_type)


# What the engine uses.


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A resolved register map: what to read and how to decode it.

    Args:
        registers: Every entry, quantities and helper registers (scale factors).
        blocks: The reads that cover them, as few as ``max_gap`` allows.
    """

    registers: tuple[Register, ...]
    blocks: tuple[Block, ...]

    @property
    def quantities(self) -> frozenset[Quantity]:
        """Quantities this map provides."""
        return frozenset(r.quantity for r in self.registers if r.quantity is not None)

    def shifted(self, offset: int) -> RegisterMap:
        """The same map ``offset`` registers further (a SunSpec model found at run time)."""
        regs = tuple(
            replace(r, address=r.address + offset, number=r.number + offset) for r in self.registers
        )
        return RegisterMap(
            regs, tuple(Block(b.table, b.address + offset, b.count) for b in self.blocks)
        )


@dataclass(frozen=True, slots=True)
class SunSpecModels:
    """SunSpec discovery data: marker bases and, per group of model ids, a relative map."""

    bases: tuple[int, ...]
    maps: tuple[tuple[tuple[int, ...], RegisterMap], ...]

    @property
    def model_ids(self) -> tuple[int, ...]:
        """Every model id this profile can read, in the profile's order of preference."""
        return tuple(i for ids, _ in self.maps for i in ids)

    def map_for(self, model_id: int) -> RegisterMap | None:
        """The relative map for ``model_id``, or ``None``."""
        for ids, regmap in self.maps:
            if model_id in ids:
                return regmap
        return None


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated device profile.

    Exactly one of ``fixed`` (addresses known in advance) and ``sunspec`` (found at run time) is
    set.
    """

    name: str
    description: str
    source: str
    kind: str
    sign: Sign
    fixed: RegisterMap | None
    sunspec: SunSpecModels | None

    @property
    def quantities(self) -> frozenset[Quantity]:
        """Quantities every variant of this profile provides."""
        if self.fixed is not None:
            return self.fixed.quantities
        assert self.sunspec is not None
        sets = [m.quantities for _, m in self.sunspec.maps]
        return frozenset.intersection(*sets)


# Parsing.


def _path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _build_map(
    regs: Sequence[_RegisterModel],
    top: _ProfileModel,
    prefix: str,
    base: int,
    problems: list[str],
) -> RegisterMap | None:
    """Resolve defaults, check the map, and plan its reads; append problems with paths."""
    resolved: list[Register] = []
    ids: dict[str, int] = {}
    seen_quantities: dict[Quantity, int] = {}
    for i, r in enumerate(regs):
        path = f"{prefix}[{i}]"
        dtype = r.decode or top.decode
        if dtype is None:
            problems.append(f"{path}.decode: no type given and no profile default")
            continue
        if r.quantity is None and r.id is None:
            problems.append(f"{path}: needs a quantity, or an id that others refer to")
        if r.quantity is not None:
            if r.quantity in seen_quantities:
                problems.append(
                    f"{path}.quantity: {r.quantity.value} already mapped by "
                    f"{prefix}[{seen_quantities[r.quantity]}]"
                )
            seen_quantities[r.quantity] = i
            if r.unit is None:
                problems.append(
                    f"{path}.unit: required for {r.quantity.value} (e.g. {r.quantity.unit})"
                )
            else:
                try:
                    unit_factor(r.quantity, r.unit)
                except ValueError as exc:
                    problems.append(f"{path}.unit: {exc}")
        if r.id is not None:
            if r.id in ids:
                problems.append(f"{path}.id: {r.id!r} already used by {prefix}[{ids[r.id]}]")
            ids[r.id] = i
        address = r.address - base
        if address < 0 or address + dtype.width > 65536:
            problems.append(
                f"{path}.address: {r.address} is outside the register space "
                f"(numbering starts at {base})"
            )
            continue
        resolved.append(
            Register(
                index=i,
                quantity=r.quantity,
                id=r.id,
                label=r.name or (r.quantity.value if r.quantity else r.id or f"#{i}"),
                table=r.table or top.table,
                address=address,
                number=r.address,
                dtype=dtype,
                word_order=r.word_order or top.word_order,
                byte_order=r.byte_order or top.byte_order,
                scale=r.scale,
                unit=r.unit,
                scale_factor=r.scale_factor,
                sentinels=top.sentinels == "sunspec",
            )
        )
    by_id = {r.id: r for r in resolved if r.id is not None}
    for reg in resolved:
        if reg.scale_factor is None:
            continue
        path = f"{prefix}[{reg.index}].scale_factor"
        target = by_id.get(reg.scale_factor)
        if target is None:
            problems.append(f"{path}: unknown register id {reg.scale_factor!r}")
        elif target.dtype not in (DType.SUNSSF, DType.I16):
            problems.append(f"{path}: {reg.scale_factor!r} must be of type sunssf or i16")
    # Overlaps: two entries sharing a register of the same table cannot both be right.
    reach: dict[Table, Register] = {}  # per table, the entry reaching furthest so far
    for b in sorted(resolved, key=lambda r: (r.table.value, r.address)):
        a = reach.get(b.table)
        if a is not None and b.address < a.end:
            problems.append(
                f"{prefix}[{b.index}].address: register {b.number} overlaps "
                f"{prefix}[{a.index}] ({a.label}, {a.number}..{a.number + a.width - 1})"
            )
        if a is None or b.end > a.end:
            reach[b.table] = b
    if (
        top.kind == "meter"
        and Quantity.POWER_TOTAL not in seen_quantities
        and not all(q in seen_quantities for q in _PHASE_POWERS)
    ):
        problems.append(
            f"{prefix}: missing required quantity power_total "
            "(or all of power_l1, power_l2, power_l3)"
        )
    if not resolved:
        return None
    return RegisterMap(tuple(resolved), plan_blocks(resolved, top.max_gap))


def parse_profile(data: Mapping[str, Any] | Sequence[Mapping[str, Any]], name: str) -> Profile:
    """Validate a profile given as YAML data.

    Args:
        data: The profile's mapping, or (for ``generic``) just a list of registers.
        name: The profile's name, used in every message.

    Returns:
        The validated profile.

    Raises:
        ProfileError: with every problem found, each with its field path.
    """
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        data = {"registers": list(data)}
    if not isinstance(data, Mapping):
        raise ProfileError(name, [f"(top level): expected a mapping, got {type(data).__name__}"])
    try:
        model = _ProfileModel.model_validate(dict(data))
    except ValidationError as exc:
        raise ProfileError(
            name, [f"{_path(e['loc'])}: {_message(e)}" for e in exc.errors()]
        ) from None
    problems: list[str] = []
    fixed: RegisterMap | None = None
    sunspec: SunSpecModels | None = None
    if (model.registers is None) == (model.sunspec is None):
        problems.append("(top level): give exactly one of 'registers' and 'sunspec'")
    elif model.registers is not None:
        if not model.registers:
            problems.append("registers: empty")
        else:
            fixed = _build_map(model.registers, model, "registers", model.base, problems)
    else:
        assert model.sunspec is not None
        maps = []
        for i, m in enumerate(model.sunspec.models):
            # Offsets from the model's ID register, so numbering is 0-based by definition.
            regmap = _build_map(m.registers, model, f"sunspec.models[{i}].registers", 0, problems)
            if regmap is not None:
                maps.append((tuple(m.ids), regmap))
        sunspec = SunSpecModels(tuple(model.sunspec.bases), tuple(maps))
    if problems:
        raise ProfileError(name, problems)
    return Profile(
        name=model.name or name,
        description=model.description,
        source=model.source,
        kind=model.kind,
        sign=model.sign,
        fixed=fixed,
        sunspec=sunspec,
    )


def available_profiles() -> list[str]:
    """Names of the profiles shipped with sitectl, sorted, plus ``generic``."""
    files = resources.files("devices") / "profiles"
    names = [p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml")]
    return sorted([*names, GENERIC])


@functools.cache
def load_profile(name: str) -> Profile:
    """Load and validate a shipped profile by file stem (``eastron-sdm630``).

    Raises:
        ProfileError: unknown name (the message lists the known ones), bad YAML or bad content.
    """
    if name == GENERIC:
        raise ProfileError(name, ["a generic device needs 'registers' in the site YAML"])
    path = resources.files("devices") / "profiles" / f"{name}.yaml"
    if "/" in name or not path.is_file():
        from devices.digital import available_io_profiles  # builds on this module

        known = ", ".join(available_profiles())
        io = ", ".join(available_io_profiles())
        raise ProfileError(name, [f"unknown profile (known: {known}; digital I/O: {io})"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(name, [f"(file): not valid YAML: {exc}"]) from None
    return parse_profile(data, name)


def resolve_profile(spec: DeviceSpec) -> Profile:
    """The profile a device spec asks for: a shipped one, or its inline ``generic`` map.

    Raises:
        ProfileError: as :func:`load_profile` / :func:`parse_profile`.
    """
    if spec.profile == GENERIC:
        if spec.inline_registers is None:
            raise ProfileError(
                f"{GENERIC}:{spec.name}", ["registers: required for a generic device"]
            )
        return parse_profile(spec.inline_registers, f"{GENERIC}:{spec.name}")
    return load_profile(spec.profile)
