"""The CSMS's charger-wide profiles are moved below sitectl's stack levels; others pass."""

from __future__ import annotations

from sitectl.ocpp.csms_guard import CsmsProfileGuard


def set_16(purpose: str, level: int) -> dict:
    return {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": 3,
            "stackLevel": level,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": []},
        },
    }


def test_station_max_at_or_above_sitectls_levels_goes_below_them() -> None:
    guard = CsmsProfileGuard((7, 8))
    for level in (7, 8, 9, 50):
        out = guard.rewrite(
            "CP", "1.6", "SetChargingProfile", set_16("ChargePointMaxProfile", level)
        )
        assert out["csChargingProfiles"]["stackLevel"] == 6
        assert out["csChargingProfiles"]["chargingProfileId"] == 3  # nothing else changes
    payload = {
        "evseId": 0,
        "chargingProfile": {
            "id": 4,
            "stackLevel": 9,
            "chargingProfilePurpose": "ChargingStationMaxProfile",
        },
    }
    assert (
        guard.rewrite("CP", "2.0.1", "SetChargingProfile", payload)["chargingProfile"]["stackLevel"]
        == 6
    )


def test_everything_else_is_forwarded_unchanged() -> None:
    guard = CsmsProfileGuard((7, 8))
    assert (
        guard.rewrite("CP", "1.6", "SetChargingProfile", set_16("ChargePointMaxProfile", 6)) is None
    )
    assert guard.rewrite("CP", "1.6", "SetChargingProfile", set_16("TxDefaultProfile", 9)) is None
    assert guard.rewrite("CP", "1.6", "SetChargingProfile", set_16("TxProfile", 9)) is None
    assert guard.rewrite("CP", "1.6", "RemoteStartTransaction", {"idTag": "x"}) is None
    assert guard.rewrite("CP", "1.6", "SetChargingProfile", {"connectorId": 0}) is None


def test_levels_from_zero_cannot_be_guarded_and_say_so(caplog) -> None:
    guard = CsmsProfileGuard((0, 1))
    assert "use levels of 1 or more" in caplog.text
    assert (
        guard.rewrite("CP", "1.6", "SetChargingProfile", set_16("ChargePointMaxProfile", 9)) is None
    )
