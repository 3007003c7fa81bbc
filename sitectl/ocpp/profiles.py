"""Build sitectl's SetChargingProfile messages, per OCPP version.

The dead man's switch (reference S20, DESIGN.md safety model): every charger carries

- a **fail-safe** profile: permanent (no duration), at sitectl's lower stack level, holding the
  charger's ``failsafe_current_a``;
- a **dynamic** profile of the same purpose at sitectl's higher stack level, holding the current
  allocation, with a ``duration`` of ``control.profile_validity_s``, refreshed every period.

Within one purpose the highest valid stack level wins (1.6 §3.13.2), so while sitectl is alive the
dynamic limit rules, and when its refreshes stop the charger falls back to the fail-safe by itself.
The purpose is ChargePointMaxProfile (1.6, connector 0) / ChargingStationMaxProfile (2.0.1,
EVSE 0): it caps the whole charger and, unlike TxDefaultProfile, is not overridden by a CSMS
TxProfile (the composite is the minimum over purposes, 1.6 §3.13.3). A charger with several
connectors also gets per-connector TxDefaultProfiles (same pair of stack levels) so that each
connector keeps its own share.

A charger that honours one stack level only (a quirk, or learned by the closed-loop check) gets
the same switch in one profile at that level: the limit for the validity, then the fail-safe as
the schedule's last period, without a duration; every refresh replaces it.

Rules obeyed (reference S1, S2, S6, S10, S12, S14): amps for AC, ``numberPhases`` always set
(1 for single-phase chargers); watts for DC; ``limit`` rounded *down* to 0.1 A (multipleOf 0.1) but
never below the IEC 61851 minimum when non-zero; first ``startPeriod`` 0; Absolute kind with
``startSchedule`` in the past (a future start makes a charger revert to its default until then);
ChargingStationMaxProfile only on EVSE 0 and never Relative; a ``chargingSchedule.id`` in 2.0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "ProfileIds",
    "ProfileSpec",
    "build_set_profile",
    "round_limit",
]

# sitectl's profile ids per charger: a block of this many from ocpp.profile_id_base.
IDS_PER_CHARGER = 32
# A start in the past by this much, so that a charger whose clock is a little ahead applies it.
START_MARGIN = timedelta(minutes=5)
#: The fail-safe (permanent) starts here: in force whatever a charger's clock says (one that is
#: minutes behind would otherwise find no sitectl limit at all and run at its maximum, #17.7).
FAILSAFE_START = "2000-01-01T00:00:00Z"


def round_limit(current_a: float, min_a: float) -> float:
    """Round a current down to the 0.1 A OCPP resolution, keeping 0 or at least `min_a`.

    Rounding down never raises a limit above what was verified; a value that would land in
    (0, min_a) is 0 (never rounded up to a minimum that is not a tenth: that would be more than
    the allocation verified).
    """
    if current_a < min_a - 1e-6 or current_a <= 0:
        # Never send a value in (0, min): no AC current flows there (IEC 61851-1 Annex A).
        return 0.0
    # The epsilon keeps 16.0 as 16.0 when the float is 15.999999999.
    rounded = math.floor(current_a * 10 + 1e-6) / 10
    if rounded < min_a - 1e-6:
        # No tenth of an amp lies in [min_a, current_a] (a minimum such as 6.05 A): rounding
        # up to the minimum would send more than was verified (issue #17.9); pause instead.
        return 0.0
    return rounded


@dataclass(frozen=True, slots=True)
class ProfileIds:
    """sitectl's profile ids for one charger (reserved range, reference D2)."""

    base: int

    @classmethod
    def for_charger(cls, profile_id_base: int, charger_index: int) -> ProfileIds:
        return cls(profile_id_base + charger_index * IDS_PER_CHARGER)

    def station(self, dynamic: bool) -> int:
        """The charger-wide profile: fail-safe or dynamic."""
        return self.base + (1 if dynamic else 0)

    def connector(self, connector_id: int, dynamic: bool) -> int:
        """A connector's TxDefaultProfile: fail-safe or dynamic."""
        return self.base + 2 * connector_id + (1 if dynamic else 0)

    def __contains__(self, profile_id: int) -> bool:
        return self.base <= profile_id < self.base + IDS_PER_CHARGER


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """What one SetChargingProfile should say, independent of the OCPP version."""

    profile_id: int
    stack_level: int
    connector_id: int  # 0: the whole charger
    limit: float  # A (AC) or W (DC)
    unit: str  # "A" or "W"
    number_phases: int
    duration_s: int | None  # None: permanent (the fail-safe)
    #: UTC on the *charger's* clock, when the schedule starts (pushed into the past by
    #: START_MARGIN; a permanent profile starts at FAILSAFE_START instead).
    start: datetime
    #: Single-level mode (a charger that honours one stack level only): the fail-safe limit
    #: that follows `limit` after `duration_s` in the same, permanent profile.
    then_limit: float | None = None

    @property
    def purpose(self) -> str:
        return "ChargePointMaxProfile" if self.connector_id == 0 else "TxDefaultProfile"


def build_set_profile(version: str, spec: ProfileSpec) -> dict[str, Any]:
    """The SetChargingProfile request payload for `spec` in `version`.

    Raises:
        ValueError: a combination the spec forbids (e.g. a negative limit).
    """
    if spec.limit < 0 or (spec.then_limit is not None and spec.then_limit < 0):
        raise ValueError("a limit cannot be negative")
    if spec.then_limit is not None and spec.duration_s is None:
        raise ValueError("a fail-safe tail needs the duration of the limit before it")
    if spec.number_phases not in (1, 2, 3):
        raise ValueError("numberPhases must be 1, 2 or 3")
    if spec.duration_s is None:
        start = FAILSAFE_START
    else:
        start = (spec.start - START_MARGIN).strftime("%Y-%m-%dT%H:%M:%SZ")
    periods: list[dict[str, Any]] = [{"startPeriod": 0, "limit": spec.limit}]
    if spec.then_limit is not None and spec.duration_s is not None:
        # One profile is the whole dead man's switch: the limit for its validity, then the
        # fail-safe for good (the last period of a schedule without a duration lasts).
        tail = spec.duration_s + int(START_MARGIN.total_seconds())
        periods.append({"startPeriod": tail, "limit": spec.then_limit})
    if spec.unit == "A":
        for period in periods:
            period["numberPhases"] = spec.number_phases
    schedule: dict[str, Any] = {
        "chargingRateUnit": spec.unit,
        "startSchedule": start,
        "chargingSchedulePeriod": periods,
    }
    if spec.duration_s is not None and spec.then_limit is None:
        # The schedule starts START_MARGIN in the past: lengthen it so it lasts the full validity.
        schedule["duration"] = spec.duration_s + int(START_MARGIN.total_seconds())
    if version == "1.6":
        return {
            "connectorId": spec.connector_id,
            "csChargingProfiles": {
                "chargingProfileId": spec.profile_id,
                "stackLevel": spec.stack_level,
                "chargingProfilePurpose": spec.purpose,
                "chargingProfileKind": "Absolute",
                "chargingSchedule": schedule,
            },
        }
    purpose = "ChargingStationMaxProfile" if spec.connector_id == 0 else "TxDefaultProfile"
    return {
        "evseId": spec.connector_id,
        "chargingProfile": {
            "id": spec.profile_id,
            "stackLevel": spec.stack_level,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": spec.profile_id, **schedule}],
        },
    }
