"""Profiles: every shipped profile validates; bad ones are rejected with profile and field."""

from __future__ import annotations

from importlib import resources

import pytest

from devices.api import DeviceSpec, TcpTransport
from devices.profile import (
    GENERIC,
    ProfileError,
    available_profiles,
    load_profile,
    parse_profile,
    resolve_profile,
)
from devices.registers import Quantity

SHIPPED = [p for p in available_profiles() if p != GENERIC]


def test_the_issue_lists_are_all_shipped() -> None:
    assert set(SHIPPED) == {
        "sunspec-meter",
        "eastron-sdm630",
        "carlo-gavazzi-em24",
        "schneider-pm5xxx-iem3xxx",
        "siemens-pac2200-3200",
        "janitza-umg604",
        "janitza-umg96rm",
    }
    assert GENERIC in available_profiles()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_is_valid_and_names_its_source(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert Quantity.POWER_TOTAL in profile.quantities
    assert profile.source
    text = (resources.files("devices") / "profiles" / f"{name}.yaml").read_text("utf-8")
    header = text.split("\nname:")[0]
    assert header.startswith("# ") and "Source:" in header


def _generic(registers: list[dict], **top) -> dict:
    return {"table": "input", "decode": "f32", **top, "registers": registers}


POWER = {"quantity": "power_total", "address": 0, "unit": "W"}


def test_unknown_type_names_profile_and_field() -> None:
    regs = [
        POWER,
        {"quantity": "voltage_l1", "address": 2, "unit": "V"},
        {"quantity": "voltage_l2", "address": 4, "unit": "V"},
        {"quantity": "voltage_l3", "address": 6, "unit": "V", "decode": "u24"},
    ]
    with pytest.raises(ProfileError) as err:
        parse_profile(_generic(regs), "x")
    assert str(err.value) == "profile 'x': registers[3].decode: unknown type 'u24'"


@pytest.mark.parametrize(
    ("registers", "top", "message"),
    [
        (
            [POWER, {"quantity": "frequency", "address": 1, "unit": "Hz"}],
            {},
            "registers[1].address: register 1 overlaps registers[0] (power_total, 0..1)",
        ),
        (
            [{"quantity": "frequency", "address": 0, "unit": "Hz"}],
            {},
            "registers: missing required quantity power_total",
        ),
        ([{"quantity": "power_total", "address": 0}], {}, "registers[0].unit: required"),
        (
            [{"quantity": "power_total", "address": 0, "unit": "V"}],
            {},
            "registers[0].unit: unit 'V' is not a power unit",
        ),
        (
            [{**POWER, "decode": "i16", "scale_factor": "W_SF"}],
            {},
            "registers[0].scale_factor: unknown register id 'W_SF'",
        ),
        ([{**POWER, "adress": 3}], {}, "registers[0].adress: Extra inputs are not permitted"),
        ([{**POWER, "address": 0}], {"base": 1}, "registers[0].address: 0 is outside"),
        ([POWER, {**POWER, "address": 10}], {}, "registers[1].quantity: power_total already"),
        ([{"quantity": "watts", "address": 0, "unit": "W"}], {}, "registers[0].quantity:"),
        ([POWER], {"table": "coils"}, "table:"),
    ],
)
def test_invalid_profiles_are_rejected_with_path(
    registers: list[dict], top: dict, message: str
) -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile(_generic(registers, **top), "bad")
    assert any(p.startswith(f"profile 'bad': {message}") for p in err.value.problems), (
        err.value.problems
    )


def test_sensor_profile_needs_no_power() -> None:
    profile = parse_profile(
        {
            "kind": "sensor",
            "registers": [
                {
                    "quantity": "temperature",
                    "address": 7,
                    "decode": "i16",
                    "scale": 0.1,
                    "unit": "°C",
                    "name": "oil temperature",
                }
            ],
        },
        "trafo",
    )
    assert profile.quantities == {Quantity.TEMPERATURE}


def test_generic_inline_map_as_list_or_mapping() -> None:
    spec = DeviceSpec(
        "sub1",
        GENERIC,
        TcpTransport("127.0.0.1"),
        inline_registers=[{**POWER, "decode": "i32", "table": "input"}],
    )
    assert resolve_profile(spec).name == "generic:sub1"
    spec = DeviceSpec("sub2", GENERIC, TcpTransport("127.0.0.1"), inline_registers=None)
    with pytest.raises(ProfileError, match="registers: required for a generic device"):
        resolve_profile(spec)


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile .*eastron-sdm630"):
        load_profile("eastron-sdm999")


def test_sunspec_profile_needs_exactly_one_map_kind() -> None:
    with pytest.raises(ProfileError, match="exactly one of 'registers' and 'sunspec'"):
        parse_profile({"decode": "f32"}, "empty")


@pytest.mark.parametrize(
    ("name", "reads"),
    [("eastron-sdm630", 3), ("janitza-umg96rm", 3), ("schneider-pm5xxx-iem3xxx", 5)],
)
def test_contiguous_registers_are_read_together(name: str, reads: int) -> None:
    blocks = load_profile(name).fixed.blocks
    assert len(blocks) == reads
    assert all(b.count <= 125 for b in blocks)


def test_sunspec_models_are_read_in_one_request_each() -> None:
    maps = load_profile("sunspec-meter").sunspec.maps
    assert [ids for ids, _ in maps] == [(203, 201, 202, 204), (213, 211, 212, 214)]
    assert [len(m.blocks) for _, m in maps] == [1, 1]
