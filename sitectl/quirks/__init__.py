"""Charger quirks as data: what a charger model really does with a charging profile.

One YAML file per model family in this package (like ``devices/profiles/``, STYLE.md §3), each
value with its public source in a comment on its line. A file says which chargers it is for
(``match``: regular expressions on the BootNotification's vendor, model and firmware version,
anchored at the start, case-insensitive) and what they do (``quirks``). Issue #17.

How a charger's quirks are found (`quirks_for`):

1. `DEFAULTS`: the OCPP book where it is explicit (0 A pauses, 1.6 §3.13.4; every purpose is
   honoured), conservative where it is silent (6 A minimum, IEC 61851-1; ``numberPhases`` not
   trusted; 10 s ramps; one profile write a minute at most when nothing changes).
2. Every file entry that matches the charger, less specific first (an entry naming vendor, model
   and firmware overrides one naming the vendor only), or the one file the charger's config pins
   (``quirks: NAME``), which then applies whatever the BootNotification said.
3. What the capability probe read from the charger (`sitectl.ocpp.probe`): a declared stack
   level, rate unit or missing SmartCharging feature profile only ever narrows what the file
   allows (`effective_quirks`).

Values marked ``unsure`` in a file are the best public evidence, not a vendor's statement.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import yaml

__all__ = [
    "DEFAULTS",
    "PURPOSES",
    "ChargerQuirks",
    "QuirkError",
    "QuirkFile",
    "available_quirks",
    "effective_quirks",
    "load_quirks",
    "quirks_for",
]

#: The profile purposes sitectl may use (1.6 names; 2.0.1 ChargingStationMaxProfile is the
#: same role as ChargePointMaxProfile and is written under that name here).
PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")


class QuirkError(ValueError):
    """A quirk file that cannot be used; says which file and which field."""


@dataclass(frozen=True, slots=True)
class ChargerQuirks:
    """What sitectl assumes about one charger's handling of profiles (A per phase, seconds).

    Attributes:
        name: the files applied, most specific last ("default" for none).
        max_stack_level: the highest stack level it honours; ``None``: as it declares.
        purposes: the profile purposes it honours.
        rate_units: the schedule units it accepts ("A", "W").
        number_phases_honoured: it switches phases on ``numberPhases`` (else budget every phase).
        min_current_a: the lowest non-zero limit it applies.
        refuses_zero_a: it rejects (or misapplies) a 0 A limit: pause at the minimum or stop.
        ignores_limit_after_zero: after a 0 A pause the next limit is ignored (re-send it).
        ramp_up_s, ramp_down_s: how long a new limit takes to show in the current drawn.
        min_write_interval_s: the least time between two profile writes with an unchanged
            limit (rate limits, flash wear); a lower limit is never held back by it.
        reports_unused_phases: its MeterValues carry currents on phases the vehicle does not
            use (judge the phases in use by the measured currents, not by what is reported).
        needs_tx_profile_to_switch_phases: a phase switch needs a TxProfile.
        smart_charging: it implements SetChargingProfile at all.
        unsure: field names whose value is the best public evidence, not confirmed.
        sources: where the values come from (URLs).
    """

    name: str = "default"
    max_stack_level: int | None = None
    purposes: tuple[str, ...] = PURPOSES
    rate_units: tuple[str, ...] = ("A",)
    number_phases_honoured: bool = False
    min_current_a: float = 6.0
    refuses_zero_a: bool = False
    ignores_limit_after_zero: bool = False
    ramp_up_s: float = 10.0
    ramp_down_s: float = 10.0
    min_write_interval_s: float = 0.0  # none known: a file sets it for a charger that rate-limits
    reports_unused_phases: bool = False
    needs_tx_profile_to_switch_phases: bool = False
    smart_charging: bool = True
    unsure: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain data (API, CLI)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


#: A charger no file knows (issue #17: "a charger without an entry gets the conservative
#: defaults plus what the probe found").
DEFAULTS = ChargerQuirks()

_VALUE_FIELDS = {
    f.name: f.type for f in dataclasses.fields(ChargerQuirks) if f.name not in ("name", "sources")
}
_MATCH_KEYS = ("vendor", "model", "firmware")


@dataclass(frozen=True, slots=True)
class _Entry:
    """One ``match`` entry of a file: the patterns, compiled."""

    patterns: Mapping[str, re.Pattern[str]]

    def matches(self, vendor: str | None, model: str | None, firmware: str | None) -> bool:
        values = {"vendor": vendor, "model": model, "firmware": firmware}
        return all(
            values[key] is not None and pattern.match(values[key] or "") is not None
            for key, pattern in self.patterns.items()
        )


@dataclass(frozen=True, slots=True)
class QuirkFile:
    """One quirk file: its matches and the values it sets (only those it sets)."""

    name: str
    description: str
    entries: tuple[_Entry, ...]
    values: Mapping[str, Any]
    unsure: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    products: tuple[str, ...] = field(default=())

    def specificity(self, vendor: str | None, model: str | None, firmware: str | None) -> int:
        """How many fields its best matching entry names; -1 if none matches."""
        found = [len(e.patterns) for e in self.entries if e.matches(vendor, model, firmware)]
        return max(found, default=-1)

    def apply(self, quirks: ChargerQuirks) -> ChargerQuirks:
        """`quirks` with this file's values laid over it."""
        name = self.name if quirks.name == DEFAULTS.name else f"{quirks.name}+{self.name}"
        return replace(
            quirks,
            name=name,
            unsure=tuple(dict.fromkeys((*quirks.unsure, *self.unsure))),
            sources=tuple(dict.fromkeys((*quirks.sources, *self.sources))),
            **self.values,
        )


def parse_quirk_file(name: str, data: Any) -> QuirkFile:
    """Validate one file's data; raises `QuirkError` naming the file and field."""
    if not isinstance(data, dict):
        raise QuirkError(f"quirks {name!r}: not a mapping")
    unknown = set(data) - {
        "name",
        "description",
        "products",
        "match",
        "quirks",
        "unsure",
        "sources",
    }
    if unknown:
        raise QuirkError(f"quirks {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    if data.get("name", name) != name:
        raise QuirkError(f"quirks {name!r}: name {data['name']!r} differs from the file name")
    entries = []
    for index, entry in enumerate(data.get("match") or ()):
        if not isinstance(entry, dict) or not entry or set(entry) - set(_MATCH_KEYS):
            raise QuirkError(
                f"quirks {name!r}: match[{index}]: give vendor, model and/or firmware patterns"
            )
        try:
            patterns = {k: re.compile(str(v), re.IGNORECASE) for k, v in entry.items()}
        except re.error as exc:
            raise QuirkError(f"quirks {name!r}: match[{index}]: {exc}") from None
        entries.append(_Entry(patterns))
    if not entries:
        raise QuirkError(f"quirks {name!r}: no match entries")
    values = {}
    for key, value in (data.get("quirks") or {}).items():
        if key not in _VALUE_FIELDS or key == "unsure":
            raise QuirkError(f"quirks {name!r}: quirks.{key}: unknown quirk")
        values[key] = _check_value(name, key, value)
    unsure = tuple(data.get("unsure") or ())
    for key in unsure:
        if key not in values:
            raise QuirkError(f"quirks {name!r}: unsure: {key!r} is not set in quirks")
    sources = tuple(str(s) for s in data.get("sources") or ())
    if not sources:
        raise QuirkError(f"quirks {name!r}: no sources")
    products = tuple(str(p) for p in data.get("products") or ())
    return QuirkFile(
        name, str(data.get("description", "")), tuple(entries), values, unsure, sources, products
    )


def _check_value(name: str, key: str, value: Any) -> Any:
    where = f"quirks {name!r}: quirks.{key}"
    default = getattr(DEFAULTS, key)
    if key in ("purposes", "rate_units"):
        allowed = PURPOSES if key == "purposes" else ("A", "W")
        if not isinstance(value, list) or any(v not in allowed for v in value):
            raise QuirkError(f"{where}: a list of {', '.join(allowed)}")
        return tuple(value)
    if key == "max_stack_level":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise QuirkError(f"{where}: a stack level (0 or more)")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise QuirkError(f"{where}: true or false")
        return value
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise QuirkError(f"{where}: a number, 0 or more")
    return float(value)


@functools.cache
def load_quirks() -> dict[str, QuirkFile]:
    """Every quirk file shipped with sitectl, by name (cached: they do not change at run time)."""
    found = {}
    for item in sorted(resources.files(__name__).iterdir(), key=lambda i: i.name):
        if not item.name.endswith(".yaml"):
            continue
        name = item.name.removesuffix(".yaml")
        try:
            data = yaml.safe_load(item.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise QuirkError(f"quirks {name!r}: not valid YAML: {exc}") from None
        found[name] = parse_quirk_file(name, data)
    return found


def available_quirks() -> list[str]:
    """The names a charger's ``quirks:`` may pin."""
    return sorted(load_quirks())


def quirks_for(
    vendor: str | None,
    model: str | None,
    firmware: str | None,
    pinned: str | None = None,
    files: Mapping[str, QuirkFile] | None = None,
) -> ChargerQuirks:
    """The quirks of a charger from what it said at boot (or the file its config pins)."""
    files = load_quirks() if files is None else files
    if pinned is not None:
        return files[pinned].apply(DEFAULTS)
    ranked = sorted(
        (spec, name)
        for name, f in files.items()
        if (spec := f.specificity(vendor, model, firmware)) >= 0
    )
    quirks = DEFAULTS
    for _, name in ranked:
        quirks = files[name].apply(quirks)
    return quirks


def _words(value: Any) -> list[str]:
    return [w.strip() for w in str(value).replace(";", ",").split(",") if w.strip()]


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def with_capabilities(quirks: ChargerQuirks, capabilities: Mapping[str, Any]) -> ChargerQuirks:
    """Narrow `quirks` by what the charger declared (the probe's record, see `sitectl.ocpp.probe`).

    A declaration only narrows: a charger that declares stack level 10 but is known to honour
    only 0 keeps 0; one whose file says nothing is taken at its word.
    """
    values = capabilities.get("values") or {}
    changes: dict[str, Any] = {}
    level = _int(
        values.get("ChargeProfileMaxStackLevel", values.get("SmartChargingCtrlr.ProfileStackLevel"))
    )
    if level is not None:
        current = quirks.max_stack_level
        changes["max_stack_level"] = level if current is None else min(current, level)
    units_text = values.get(
        "ChargingScheduleAllowedChargingRateUnit", values.get("SmartChargingCtrlr.RateUnit")
    )
    if units_text is not None:
        declared = {
            {"current": "A", "a": "A", "power": "W", "w": "W"}.get(w.lower(), w)
            for w in _words(units_text)
        }
        narrowed = tuple(u for u in quirks.rate_units if u in declared)
        if narrowed:  # a declaration naming nothing sitectl knows says nothing
            changes["rate_units"] = narrowed
    features = values.get("SupportedFeatureProfiles")
    if features is not None and "smartcharging" not in {w.lower() for w in _words(features)}:
        changes["smart_charging"] = False
    for key in ("SmartChargingCtrlr.Enabled", "SmartChargingCtrlr.Available"):
        if str(values.get(key, "true")).strip().lower() == "false":
            changes["smart_charging"] = False
    if "SetChargingProfile" in (capabilities.get("not_supported") or {}):
        changes["smart_charging"] = False
    return replace(quirks, **changes) if changes else quirks


def effective_quirks(charger_state: Any, pinned: str | None = None) -> ChargerQuirks:
    """The quirks sitectl works with for a charger: its file(s) narrowed by the probe.

    Args:
        charger_state: a `sitectl.state.ChargerState` (vendor, model, firmware_version,
            capabilities).
        pinned: the quirk file its configuration pins (``quirks:``), if any.
    """
    quirks = quirks_for(
        charger_state.vendor, charger_state.model, charger_state.firmware_version, pinned
    )
    capabilities = getattr(charger_state, "capabilities", None) or {}
    return with_capabilities(quirks, capabilities)


def describe(files: Iterable[QuirkFile]) -> str:
    """A table of quirk files for ``sitectl quirks``: name, products, what each sets."""
    lines = []
    for f in files:
        lines.append(f"{f.name}: {f.description}")
        if f.products:
            lines.append(f"  products: {', '.join(f.products)}")
        for key, value in f.values.items():
            mark = " (unsure)" if key in f.unsure else ""
            lines.append(f"  {key}: {_plain(value)}{mark}")
        lines.append(f"  sources: {', '.join(f.sources)}")
    return "\n".join(lines)
