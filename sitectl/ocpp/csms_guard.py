"""Keep the CSMS's charger-wide limits from lifting sitectl's (issue #17.1).

Within one purpose the highest stack level wins (1.6 §3.13.2, 2.0.1 K01). sitectl's charger-wide
limit is a ``ChargePointMaxProfile`` (1.6) / ``ChargingStationMaxProfile`` (2.0.1) at its two
stack levels (``ocpp.profile_stack_levels``): a CSMS profile of that purpose at a higher level
would replace it on the charger, and the charger would run at the CSMS's limit while sitectl
budgets its own. So a CSMS station-max profile at or above sitectl's lowest level is forwarded
*below* it (its stack level rewritten to one under sitectl's fail-safe). The charger keeps it
(it still applies whenever sitectl's are absent), the charger answers the CSMS as usual, and
sitectl bounds its own limits by the CSMS's (the observer records the CSMS's profile as the
CSMS sent it, and the allocator never gives more): on the charger min(CSMS, sitectl) holds.

What reaches the charger unchanged: every other CSMS profile. A ``TxDefaultProfile`` or
``TxProfile`` of the CSMS may replace sitectl's per-connector ``TxDefaultProfile``, but the
composite schedule is the minimum with the station-max profile, which stays sitectl's: the
charger's total never exceeds what sitectl budgets. A charger's
``ReportChargingProfiles`` (2.0.1, the answer to the CSMS's ``GetChargingProfiles``) is given
back the CSMS's own stack level for every profile moved (`CsmsProfileGuard.report`).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["STATION_MAX_PURPOSES", "CsmsProfileGuard"]

log = logging.getLogger(__name__)

STATION_MAX_PURPOSES = frozenset({"ChargePointMaxProfile", "ChargingStationMaxProfile"})


class CsmsProfileGuard:
    """A CSMS-call rewriter (`OcppServer.csms_rewriters`) for station-max profiles.

    Args:
        stack_levels: sitectl's (fail-safe, dynamic) stack levels.
    """

    def __init__(self, stack_levels: tuple[int, int]) -> None:
        lowest = min(stack_levels)
        #: (charger, profile id) -> the stack level the CSMS gave a profile moved below.
        self.moved: dict[tuple[str, int], int] = {}
        #: Where a CSMS station-max profile goes; None when sitectl's fail-safe is at level 0.
        self.below: int | None = lowest - 1 if lowest > 0 else None
        if self.below is None:
            log.warning(
                "ocpp.profile_stack_levels starts at 0: a CSMS charger-wide profile cannot be "
                "kept below sitectl's and may override it; use levels of 1 or more"
            )

    def rewrite(
        self, identity: str, version: str, action: str, payload: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The payload to forward instead, or ``None`` to forward it unchanged."""
        if action != "SetChargingProfile" or self.below is None:
            return None
        key = "csChargingProfiles" if version == "1.6" else "chargingProfile"
        profile = payload.get(key)
        if not isinstance(profile, dict):
            return None
        level = profile.get("stackLevel")
        if profile.get("chargingProfilePurpose") not in STATION_MAX_PURPOSES:
            return None
        if not isinstance(level, int) or isinstance(level, bool) or level <= self.below:
            return None
        profile_id = profile.get("chargingProfileId", profile.get("id"))
        if isinstance(profile_id, int):
            self.moved[(identity, profile_id)] = level
        log.info(
            "%s: the CSMS's charger-wide profile %s at stack level %d is installed at level %d, "
            "below sitectl's; sitectl keeps within its limit",
            identity,
            profile.get("chargingProfileId", profile.get("id")),
            level,
            self.below,
        )
        return {**payload, key: {**profile, "stackLevel": self.below}}

    def report(
        self, identity: str, version: str, action: str, payload: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A charger-call rewriter: ReportChargingProfiles (2.0.1) shows the CSMS its own level.

        The CSMS asked what is installed (GetChargingProfiles); its station-max profiles sit
        below sitectl's, and the charger reports them there. The CSMS is told the level it set,
        so its view of its own profiles stays what it sent.
        """
        if action != "ReportChargingProfiles" or not self.moved:
            return None
        profiles = payload.get("chargingProfile")
        if not isinstance(profiles, list):
            return None
        changed = False
        restored = []
        for profile in profiles:
            level = (
                self.moved.get((identity, profile.get("id"))) if isinstance(profile, dict) else None
            )
            if level is not None and profile.get("stackLevel") != level:
                profile = {**profile, "stackLevel": level}
                changed = True
            restored.append(profile)
        return {**payload, "chargingProfile": restored} if changed else None
