"""ProfileKeeper: sitectl's charging profiles on each charger, kept in place.

sitectl and the CSMS share every charger's profile store (reference D2). All of sitectl's own
SetChargingProfile calls go through the keeper, which remembers what each charger accepted.
When the CSMS clears profiles (a ClearChargingProfile without criteria wipes sitectl's too,
reference S17) the observer announces ``profiles_cleared`` and the keeper sends the remembered
profiles again, lowest stack level first so the fail-safe is back before the dynamic limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sitectl.ocpp.link import CallFailed
from sitectl.state import Change, SiteState

__all__ = ["ProfileKeeper"]

log = logging.getLogger(__name__)

Caller = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


def _permanent(payload: dict[str, Any]) -> bool:
    """The fail-safe alone: no duration and one period (it stays in force until replaced).

    A single-level limit (a dynamic period, then the fail-safe) has no duration either, but
    its first period would be stale when re-applied (issue #17.4): it is not kept.
    """
    profile = payload.get("csChargingProfiles") or payload.get("chargingProfile") or {}
    schedules = profile.get("chargingSchedule")
    if isinstance(schedules, dict):
        schedules = [schedules]
    return all(
        isinstance(s, dict)
        and "duration" not in s
        and len(s.get("chargingSchedulePeriod") or ()) == 1
        for s in schedules or ()
    )


def _profile_key(payload: dict[str, Any]) -> tuple[int, int, int]:
    """(stack level, connector/EVSE, profile id) of a SetChargingProfile payload."""
    profile = payload.get("csChargingProfiles") or payload["chargingProfile"]
    connector = int(payload.get("connectorId", payload.get("evseId", 0)))
    profile_id = int(profile.get("chargingProfileId", profile.get("id")))
    return int(profile["stackLevel"]), connector, profile_id


class ProfileKeeper:
    """Sends sitectl's profiles and re-sends them after the CSMS clears a charger's store.

    Args:
        state: the site state (the keeper subscribes to ``profiles_cleared``).
        call: sends one of sitectl's calls to a charger: ``call(identity, action, payload)``.
    """

    name = "profile-keeper"

    def __init__(self, state: SiteState, call: Caller) -> None:
        self._call = call
        self._accepted: dict[str, dict[tuple[int, int, int], dict[str, Any]]] = {}
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        state.subscribe(self._on_change)

    async def set_profile(self, identity: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a SetChargingProfile; remember it when the charger accepts it.

        Returns:
            The charger's answer payload.

        Raises:
            CallFailed: the call failed (error, timeout, charger offline).
        """
        response = await self._call(identity, "SetChargingProfile", payload)
        if response.get("status") == "Accepted" and _permanent(payload):
            # Only permanent profiles (the fail-safe) are kept for re-applying: a dynamic
            # limit re-sent from memory would be stale (issue #17.4); the control loop sends
            # the current one after a clear.
            key = _profile_key(payload)
            profiles = self._accepted.setdefault(identity, {})
            # A profile id replaces the same id (K01.FR.05); forget older copies.
            for old in [k for k in profiles if k[2] == key[2]]:
                del profiles[old]
            profiles[key] = payload
        return response

    def forget(self, identity: str, profile_id: int | None = None) -> None:
        """Stop keeping a profile (or all of a charger's), e.g. after sitectl cleared it."""
        profiles = self._accepted.get(identity, {})
        for key in [k for k in profiles if profile_id is None or k[2] == profile_id]:
            del profiles[key]

    def kept(self, identity: str) -> list[dict[str, Any]]:
        """The profiles kept for a charger, lowest stack level first."""
        return [p for _, p in sorted(self._accepted.get(identity, {}).items())]

    def _on_change(self, change: Change) -> None:
        if change.kind == "profiles_cleared" and self._accepted.get(change.subject):
            self._pending.put_nowait(change.subject)

    async def run(self) -> None:
        """Re-apply profiles as clears are announced; runs until cancelled."""
        while True:
            identity = await self._pending.get()
            for payload in self.kept(identity):
                try:
                    response = await self.set_profile(identity, payload)
                except CallFailed as exc:
                    log.warning(
                        "%s: re-applying profile %s failed: %s",
                        identity,
                        _profile_key(payload)[2],
                        exc,
                    )
                    continue
                if response.get("status") != "Accepted":
                    log.warning(
                        "%s: charger refused re-applied profile %s: %s",
                        identity,
                        _profile_key(payload)[2],
                        response,
                    )
            log.info(
                "%s: re-applied %d sitectl profile(s) after the CSMS cleared profiles",
                identity,
                len(self.kept(identity)),
            )
