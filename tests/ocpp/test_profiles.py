"""sitectl's profile messages and the composite schedule they produce on a charger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sitectl.ocpp.composite import InstalledProfile, composite_limit_a
from sitectl.ocpp.profiles import ProfileIds, ProfileSpec, build_set_profile, round_limit
from sitectl.ocpp.schemas import validate_call

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def spec(limit: float, dynamic: bool, connector: int = 0, phases: int = 3, unit: str = "A"):
    ids = ProfileIds.for_charger(900_000, 2)
    return ProfileSpec(
        profile_id=ids.connector(connector, dynamic) if connector else ids.station(dynamic),
        stack_level=8 if dynamic else 7,
        connector_id=connector,
        limit=limit,
        unit=unit,
        number_phases=phases,
        duration_s=30 if dynamic else None,
        start=NOW,
    )


@pytest.mark.parametrize(
    ("current", "minimum", "sent"),
    [
        (16.0, 6, 16.0),
        (15.999999999, 6, 16.0),
        (13.86, 6, 13.8),
        (6.04, 6, 6.0),
        (5.99, 6, 0.0),
        (3.0, 6, 0.0),
        (0.0, 6, 0.0),
        (-1.0, 6, 0.0),
        (31.97, 6, 31.9),
        (6.07, 6.05, 0.0),  # no tenth in [6.05, 6.07]: 6.1 would exceed what was verified
        (6.15, 6.05, 6.1),
    ],
)
def test_limits_round_down_to_a_tenth_and_never_land_between_0_and_min(
    current, minimum, sent
) -> None:
    assert round_limit(current, minimum) == sent
    assert sent == 0 or minimum <= sent <= current + 1e-6


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("connector", [0, 2])
@pytest.mark.parametrize(("unit", "phases"), [("A", 3), ("A", 1), ("W", 3)])
def test_every_profile_validates_against_the_schema(
    version, dynamic, connector, unit, phases
) -> None:
    payload = build_set_profile(
        version, spec(13.8 if unit == "A" else 11000.0, dynamic, connector, phases, unit)
    )
    assert validate_call(version, "SetChargingProfile", payload) is None


def test_k01_rules_in_the_built_profiles() -> None:
    p16 = build_set_profile("1.6", spec(16.0, True))
    profile = p16["csChargingProfiles"]
    # ChargePointMaxProfile only on connector 0 (1.6 §3.13.1); Absolute with a past start.
    assert p16["connectorId"] == 0 and profile["chargingProfilePurpose"] == "ChargePointMaxProfile"
    schedule = profile["chargingSchedule"]
    assert datetime.fromisoformat(schedule["startSchedule"].replace("Z", "+00:00")) < NOW
    assert schedule["chargingSchedulePeriod"][0] == {
        "startPeriod": 0,
        "limit": 16.0,
        "numberPhases": 3,
    }
    # The validity counts from now even though the start lies in the past.
    assert schedule["duration"] == 30 + 300
    p201 = build_set_profile("2.0.1", spec(16.0, False))["chargingProfile"]
    assert p201["chargingProfilePurpose"] == "ChargingStationMaxProfile"
    assert p201["chargingProfileKind"] != "Relative"  # K01.FR.38
    assert p201["chargingSchedule"][0]["id"] == p201["id"]
    assert "duration" not in p201["chargingSchedule"][0]  # the fail-safe is permanent
    tx_default = build_set_profile("1.6", spec(10.0, True, connector=2))
    assert tx_default["csChargingProfiles"]["chargingProfilePurpose"] == "TxDefaultProfile"
    single = build_set_profile("1.6", spec(16.0, True, phases=1))
    assert (
        single["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0][
            "numberPhases"
        ]
        == 1
    )
    with pytest.raises(ValueError):
        build_set_profile("1.6", spec(-1.0, True))


def installed(payload: dict, at: datetime = NOW) -> InstalledProfile:
    return InstalledProfile.from_request(payload, at)


def test_dynamic_limit_rules_then_lapses_to_the_fail_safe() -> None:
    profiles = [
        installed(build_set_profile("1.6", spec(6.0, False))),
        installed(build_set_profile("1.6", spec(24.0, True))),
    ]
    assert composite_limit_a(profiles, 1, NOW) == 24.0
    assert composite_limit_a(profiles, 1, NOW + timedelta(seconds=29)) == 24.0
    assert composite_limit_a(profiles, 1, NOW + timedelta(seconds=31)) == 6.0
    assert composite_limit_a(profiles, 1, NOW + timedelta(days=30)) == 6.0


def test_station_cap_and_connector_default_compose_as_minimum() -> None:
    profiles = [
        installed(build_set_profile("2.0.1", spec(20.0, True))),
        installed(build_set_profile("2.0.1", spec(12.0, True, connector=1))),
        installed(build_set_profile("2.0.1", spec(6.0, False, connector=1))),
    ]
    assert composite_limit_a(profiles, 1, NOW) == 12.0
    assert composite_limit_a(profiles, 2, NOW) == 20.0
    assert composite_limit_a([], 1, NOW) is None


def test_tx_profile_overrules_tx_default_but_not_the_station_cap() -> None:
    cap = installed(build_set_profile("1.6", spec(16.0, False)))
    default = installed(build_set_profile("1.6", spec(10.0, False, connector=1)))
    tx = InstalledProfile(
        1,
        {
            "chargingProfileId": 5,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative",
            "transactionId": 42,
            "chargingSchedule": {
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": 27600, "numberPhases": 3},
                    {"startPeriod": 600, "limit": 6900, "numberPhases": 3},
                ],
            },
        },
        NOW,
    )
    profiles = [cap, default, tx]
    assert composite_limit_a(profiles, 1, NOW, transaction_id=42, transaction_start=NOW) == 16.0
    later = NOW + timedelta(minutes=11)
    assert composite_limit_a(profiles, 1, later, transaction_id=42, transaction_start=NOW) == 10.0
    # Another transaction: the TxProfile does not apply, the default does.
    assert composite_limit_a(profiles, 1, NOW, transaction_id=7) == 10.0


def test_validity_window_and_daily_recurrence() -> None:
    future = installed(
        {
            "connectorId": 0,
            "csChargingProfiles": {
                "chargingProfileId": 1,
                "stackLevel": 9,
                "chargingProfilePurpose": "ChargePointMaxProfile",
                "chargingProfileKind": "Absolute",
                "validFrom": (NOW + timedelta(hours=1)).isoformat(),
                "chargingSchedule": {
                    "chargingRateUnit": "A",
                    "startSchedule": "2026-01-01T00:00:00Z",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8}],
                },
            },
        }
    )
    assert composite_limit_a([future], 1, NOW) is None
    assert composite_limit_a([future], 1, NOW + timedelta(hours=2)) == 8
    night = installed(
        {
            "connectorId": 0,
            "csChargingProfiles": {
                "chargingProfileId": 2,
                "stackLevel": 1,
                "chargingProfilePurpose": "ChargePointMaxProfile",
                "chargingProfileKind": "Recurring",
                "recurrencyKind": "Daily",
                "chargingSchedule": {
                    "chargingRateUnit": "A",
                    "startSchedule": "2026-01-01T00:00:00Z",
                    "duration": 6 * 3600,
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 32}],
                },
            },
        }
    )
    assert composite_limit_a([night], 1, NOW) == 32  # 03:00 is inside 00:00–06:00
    assert composite_limit_a([night], 1, NOW + timedelta(hours=4)) is None
