"""Quirk files: each loads, each value has its source on its line, matching picks the right one."""

from __future__ import annotations

import re
from importlib import resources
from types import SimpleNamespace

import pytest

from sitectl.quirks import (
    DEFAULTS,
    QuirkError,
    available_quirks,
    effective_quirks,
    load_quirks,
    parse_quirk_file,
    quirks_for,
    with_capabilities,
)

SEEDED = {
    "abb-terra-ac",
    "alfen",
    "evbox-elvi",
    "go-e",
    "heidelberg-amperfied",
    "huawei-scharger",
    "wallbox-pulsar",
}


def test_every_shipped_file_loads_and_the_documented_cases_are_there() -> None:
    assert set(available_quirks()) >= SEEDED
    for name, quirk_file in load_quirks().items():
        assert quirk_file.sources, name
        assert all(s.startswith("https://") for s in quirk_file.sources), name


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_every_value_and_match_names_its_source_in_a_comment(name: str) -> None:
    text = (resources.files("sitectl.quirks") / f"{name}.yaml").read_text(encoding="utf-8")
    section = None
    for line in text.splitlines():
        if re.match(r"^\w", line):
            section = line.split(":")[0]
            continue
        if section in ("quirks", "match") and line.strip() and not line.lstrip().startswith("#"):
            comment = line.partition("  # ")[2]
            assert re.search(r"[\w.-]+/[\w.-]+#\d+", comment), f"{name}: no source on {line!r}"
    # A value marked [unsure] in its comment is listed as unsure, and the other way round.
    marked = {
        m.group(1)
        for m in re.finditer(r"^  (\w+): .*\[unsure", text, re.MULTILINE)
        if m.group(1) not in ("vendor", "model", "firmware")
    }
    assert marked == set(load_quirks()[name].unsure)


def test_matching_by_vendor_model_firmware_and_defaults_for_an_unknown_charger() -> None:
    abb = quirks_for("ABB", "TAC-W22-T-R-0", "1.8.21")
    assert abb.name == "abb-terra-ac"
    assert abb.max_stack_level == 0
    assert abb.refuses_zero_a is True
    assert "refuses_zero_a" in abb.unsure
    # Case-insensitive, anchored at the start: "abb" matches, "XABB" does not.
    assert quirks_for("abb", "tac-w11", None).name == "abb-terra-ac"
    assert quirks_for("XABB", "TAC-W11", None) == DEFAULTS
    # A field a pattern needs but the charger did not send does not match.
    assert quirks_for("ABB", None, None) == DEFAULTS
    assert quirks_for("Heidelberg", "Energy Control", "1.0").smart_charging is False
    assert quirks_for("go-e", "Gemini", "56.1").ignores_limit_after_zero is True
    assert quirks_for("Alfen BV", "NG910", "6.2").reports_unused_phases is True
    unknown = quirks_for("Acme", "X1", "1.0")
    assert unknown == DEFAULTS
    assert unknown.min_current_a == 6.0 and unknown.number_phases_honoured is False


def test_a_more_specific_entry_overrides_a_vendor_wide_one() -> None:
    files = {
        "vendor": parse_quirk_file(
            "vendor",
            {
                "match": [{"vendor": "Acme"}],
                "quirks": {"min_current_a": 6, "ramp_up_s": 5},
                "sources": ["https://example.org/a"],
            },
        ),
        "old-fw": parse_quirk_file(
            "old-fw",
            {
                "match": [{"vendor": "Acme", "firmware": r"1\."}],
                "quirks": {"min_current_a": 8},
                "sources": ["https://example.org/b"],
            },
        ),
    }
    old = quirks_for("Acme", "X", "1.4", files=files)
    assert (old.min_current_a, old.ramp_up_s, old.name) == (8.0, 5.0, "vendor+old-fw")
    assert quirks_for("Acme", "X", "2.0", files=files).min_current_a == 6.0
    # A pinned file applies whatever the charger said at boot.
    assert quirks_for("Other", None, None, pinned="old-fw", files=files).min_current_a == 8.0


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"match": [{"vendor": "A"}], "quirks": {"min_current": 6}, "sources": ["x"]}, "unknown"),
        ({"match": [{"vendor": "A"}], "quirks": {"max_stack_level": -1}, "sources": ["x"]}, "0"),
        ({"match": [{"vendor": "("}], "sources": ["x"]}, "match"),
        ({"match": [{"vendor": "A"}], "quirks": {"refuses_zero_a": 1}, "sources": ["x"]}, "true"),
        ({"match": [{"vendor": "A"}], "quirks": {"rate_units": ["kW"]}, "sources": ["x"]}, "A, W"),
        ({"match": [{"vendor": "A"}], "quirks": {}}, "no sources"),
        ({"quirks": {}, "sources": ["x"]}, "no match"),
        ({"match": [{"vendor": "A"}], "unsure": ["ramp_up_s"], "sources": ["x"]}, "not set"),
    ],
)
def test_a_bad_file_names_the_file_and_the_field(data: dict, problem: str) -> None:
    with pytest.raises(QuirkError, match=problem) as caught:
        parse_quirk_file("bad", data)
    assert "'bad'" in str(caught.value)


def test_declared_capabilities_only_narrow_the_file() -> None:
    abb = quirks_for("ABB", "TAC-W22", "1.8")
    declared = {"values": {"ChargeProfileMaxStackLevel": "16", "SupportedFeatureProfiles": "Core"}}
    narrowed = with_capabilities(abb, declared)
    assert narrowed.max_stack_level == 0  # the file knows better than the declaration
    assert narrowed.smart_charging is False  # no SmartCharging feature profile
    unknown = with_capabilities(
        DEFAULTS,
        {
            "values": {
                "ChargeProfileMaxStackLevel": "3",
                "ChargingScheduleAllowedChargingRateUnit": "Power",
                "SupportedFeatureProfiles": "Core,SmartCharging",
            }
        },
    )
    # A unit sitectl's default does not include leaves the default: no empty set.
    assert (unknown.max_stack_level, unknown.rate_units, unknown.smart_charging) == (
        3,
        ("A",),
        True,
    )
    v201 = with_capabilities(
        DEFAULTS,
        {
            "values": {
                "SmartChargingCtrlr.ProfileStackLevel": "2",
                "SmartChargingCtrlr.Enabled": "false",
            }
        },
    )
    assert (v201.max_stack_level, v201.smart_charging) == (2, False)
    refused = with_capabilities(
        DEFAULTS, {"not_supported": {"SetChargingProfile": "NotImplemented"}}
    )
    assert refused.smart_charging is False


def test_effective_quirks_of_a_charger_state() -> None:
    charger = SimpleNamespace(
        vendor="EVBox",
        model="Elvi",
        firmware_version="4.1",
        capabilities={"values": {"ChargeProfileMaxStackLevel": "0"}},
    )
    quirks = effective_quirks(charger)
    assert quirks.name == "evbox-elvi"
    assert quirks.max_stack_level == 0
    assert "ChargePointMaxProfile" not in quirks.purposes
    charger.vendor = "Acme"
    assert effective_quirks(charger, pinned="go-e").ignores_limit_after_zero is True
