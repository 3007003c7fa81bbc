"""The composite schedule: what limit a set of charging profiles imposes on a connector now.

Used twice: by the simulated charger (to follow its limits as a real one would) and by the
control loop (the CSMS's own profiles are upper bounds in the allocation problem).

Rules (OCPP 1.6 §3.13.2–3.13.3; 2.0.1 K08, reference S9–S11):

- A profile applies between ``validFrom`` and ``validTo``. Its schedule starts at
  ``startSchedule`` (Absolute), at the start of the transaction (Relative), or at the latest
  daily/weekly recurrence (Recurring); it ends after ``duration`` if one is given.
- Within one purpose the highest stack level whose schedule is active now wins; when its
  schedule has ended the next lower level applies (that is how a dynamic limit with a duration
  falls back to a permanent fail-safe below it).
- TxProfile overrules TxDefaultProfile for its transaction; a connector-specific TxDefaultProfile
  beats one on connector 0 at the same stack level.
- The composite is the minimum over the charger-wide purposes (ChargePointMaxProfile,
  ChargingStationMaxProfile, ChargingStationExternalConstraints) and the transaction purpose.
- Power limits (W) are turned into current per phase with the nominal voltage (K01.FR.50).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = ["InstalledProfile", "composite_limit_a", "parse_time", "profile_limit_a"]

_STATION_PURPOSES = (
    "ChargePointMaxProfile",
    "ChargingStationMaxProfile",
    "ChargingStationExternalConstraints",
)


@dataclass(frozen=True, slots=True)
class InstalledProfile:
    """A charging profile as installed: its connector/EVSE, the profile (camelCase), when."""

    connector_id: int
    profile: dict[str, Any]
    installed_at: datetime

    @classmethod
    def from_request(cls, payload: dict[str, Any], installed_at: datetime) -> InstalledProfile:
        """From a SetChargingProfile request payload of either version."""
        profile = payload.get("csChargingProfiles") or payload["chargingProfile"]
        connector = int(payload.get("connectorId", payload.get("evseId", 0)))
        return cls(connector, profile, installed_at)

    @property
    def profile_id(self) -> int:
        return int(self.profile.get("chargingProfileId", self.profile.get("id", 0)))

    @property
    def stack_level(self) -> int:
        return int(self.profile.get("stackLevel", 0))

    @property
    def purpose(self) -> str:
        return str(self.profile.get("chargingProfilePurpose", ""))

    @property
    def first_limit(self) -> float:
        """The limit of the first period of the (first) schedule, in its own unit."""
        schedule = self.profile["chargingSchedule"]
        if isinstance(schedule, list):  # 2.0.1: a list of schedules
            schedule = schedule[0]
        return float(schedule["chargingSchedulePeriod"][0]["limit"])


def parse_time(value: Any) -> datetime | None:
    """An OCPP date-time (``Z`` or an offset) as a datetime; ``None`` when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def profile_limit_a(
    installed: InstalledProfile,
    at: datetime,
    transaction_start: datetime | None = None,
    voltage_v: float = 230.0,
    phases: int = 3,
) -> float | None:
    """The limit (A per phase) one profile imposes at `at`, or ``None`` if it is not active."""
    profile = installed.profile
    valid_from, valid_to = parse_time(profile.get("validFrom")), parse_time(profile.get("validTo"))
    if (valid_from and at < valid_from) or (valid_to and at >= valid_to):
        return None
    schedule = profile.get("chargingSchedule")
    if isinstance(schedule, list):  # 2.0.1: up to three schedules; the first is the common case
        schedule = schedule[0] if schedule else None
    if not isinstance(schedule, dict):
        return None
    kind = profile.get("chargingProfileKind", "Absolute")
    start = parse_time(schedule.get("startSchedule"))
    if kind == "Relative":
        start = transaction_start or installed.installed_at
    elif kind == "Recurring" and start is not None:
        step = timedelta(days=7 if profile.get("recurrencyKind") == "Weekly" else 1)
        if at >= start:
            start += step * ((at - start) // step)
    if start is None or at < start:
        return None
    elapsed = (at - start).total_seconds()
    duration = schedule.get("duration")
    if duration is not None and elapsed >= float(duration):
        return None
    periods = sorted(
        schedule.get("chargingSchedulePeriod") or [], key=lambda p: p.get("startPeriod", 0)
    )
    current = None
    for period in periods:
        if float(period.get("startPeriod", 0)) <= elapsed:
            current = period
    if current is None:
        return None
    limit = float(current["limit"])
    if schedule.get("chargingRateUnit") == "W":
        limit = limit / (voltage_v * float(current.get("numberPhases") or phases))
    return limit


def _purpose_limit(
    candidates: list[InstalledProfile],
    at: datetime,
    transaction_start: datetime | None,
    voltage_v: float,
    phases: int,
    connector_id: int,
) -> float | None:
    # Highest stack level first; at equal levels a connector-specific profile first.
    ordered = sorted(
        candidates, key=lambda p: (p.stack_level, p.connector_id == connector_id), reverse=True
    )
    for installed in ordered:
        limit = profile_limit_a(installed, at, transaction_start, voltage_v, phases)
        if limit is not None:
            return limit
    return None


def composite_limit_a(
    profiles: Iterable[InstalledProfile],
    connector_id: int,
    at: datetime,
    transaction_id: Any = None,
    transaction_start: datetime | None = None,
    voltage_v: float = 230.0,
    phases: int = 3,
) -> float | None:
    """The limit (A per phase) on `connector_id` at `at`, or ``None`` when nothing limits it."""
    installed = list(profiles)
    limits: list[float] = []
    for purpose in _STATION_PURPOSES:
        candidates = [p for p in installed if p.purpose == purpose and p.connector_id == 0]
        limit = _purpose_limit(candidates, at, transaction_start, voltage_v, phases, connector_id)
        if limit is not None:
            limits.append(limit)
    tx_profiles = [
        p
        for p in installed
        if p.purpose == "TxProfile"
        and p.connector_id == connector_id
        and (
            transaction_id is not None
            and str(p.profile.get("transactionId")) == str(transaction_id)
        )
    ]
    limit = _purpose_limit(tx_profiles, at, transaction_start, voltage_v, phases, connector_id)
    if limit is None:
        defaults = [
            p
            for p in installed
            if p.purpose == "TxDefaultProfile" and p.connector_id in (0, connector_id)
        ]
        limit = _purpose_limit(defaults, at, transaction_start, voltage_v, phases, connector_id)
    if limit is not None:
        limits.append(limit)
    return min(limits) if limits else None
