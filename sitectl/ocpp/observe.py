"""Keep SiteState current from the OCPP traffic the routers see (observe, never change).

Each `RequestSeen`/`ResponseSeen` event of an observed action is read here, for both OCPP 1.6
and 2.0.1 payload shapes, into facts about chargers, connectors and sessions. Times are sitectl's
own receipt times (charger clocks drift); the charger's timestamps stay in the journal.

A payload that does not have the expected shape is logged and skipped: it still reached the
other side unchanged, and one charger's odd frame must not disturb anything else.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

from sitectl.ocpp.link import ChargerLink
from sitectl.ocpp.router import Event, Origin, RequestSeen, ResponseSeen
from sitectl.state import ChargerState, CsmsProfile, SessionState, Severity, SiteState

__all__ = ["StateObserver", "hash_id_tag", "parse_sampled_values"]

log = logging.getLogger(__name__)

_PHASES = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}
# Frames that set or carry a charger's password (1.6 AuthorizationKey, 2.0.1 BasicAuthPassword).
_CREDENTIALS = re.compile(r"AuthorizationKey|BasicAuthPassword", re.IGNORECASE)


def hash_id_tag(site_id: str, tag: str) -> str:
    """A stable pseudonym for an id tag: the cloud may correlate sessions, not read RFIDs."""
    return hashlib.sha256(f"{site_id}:{tag}".encode()).hexdigest()[:16]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is not a reading


def parse_sampled_values(meter_values: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce OCPP meterValue entries to the latest current per phase, power, energy and SoC.

    Handles 1.6 (``value`` as a string, ``unit``) and 2.0.1 (number, ``unitOfMeasure`` with a
    ``multiplier``). Measurand defaults to ``Energy.Active.Import.Register`` (1.6 §7.31).

    Returns:
        ``current_a`` (3-tuple, charger phases), ``power_kw``, ``energy_wh``, ``soc_percent``;
        only the keys that were present.
    """
    out: dict[str, Any] = {}
    currents: list[float | None] = [None, None, None]
    for entry in meter_values:
        for sample in entry.get("sampledValue") or ():
            if not isinstance(sample, dict):
                continue
            value = _number(sample.get("value"))
            if value is None:
                continue
            measurand = sample.get("measurand", "Energy.Active.Import.Register")
            unit_info = sample.get("unitOfMeasure") or {}
            unit = sample.get("unit") or unit_info.get("unit")
            value *= 10 ** int(unit_info.get("multiplier", 0) or 0)
            phase = sample.get("phase")
            if measurand == "Current.Import" and phase in _PHASES:
                currents[_PHASES[phase]] = value
            elif measurand == "Power.Active.Import" and phase is None:
                out["power_kw"] = value if unit == "kW" else value / 1000
            elif measurand == "Energy.Active.Import.Register" and phase is None:
                out["energy_wh"] = value * 1000 if unit == "kWh" else value
            elif measurand == "SoC":
                out["soc_percent"] = value
    if any(c is not None for c in currents):
        out["current_a"] = (currents[0], currents[1], currents[2])
    return out


class StateObserver:
    """The OCPP server's listener: writes what chargers report into SiteState.

    Args:
        state: the site state.
        reserved_stack_levels: sitectl's (fail-safe, dynamic) stack levels; a CSMS profile at
            one of them would overwrite sitectl's (1.6 §3.13.2) and raises an alarm.
        profile_id_base: start of sitectl's profile-id range (same check).
    """

    def __init__(
        self,
        state: SiteState,
        reserved_stack_levels: tuple[int, int] = (7, 8),
        profile_id_base: int = 900_000,
    ) -> None:
        self.state = state
        self.reserved_stack_levels = reserved_stack_levels
        self.profile_id_base = profile_id_base
        self._tx_connector: dict[tuple[str, str], int] = {}  # (charger, tx id) -> connector
        self._handlers: dict[tuple[str, bool], Callable[[ChargerState, Any], None]] = {
            ("BootNotification", True): self._boot,
            ("StatusNotification", False): self._status,
            ("StartTransaction", True): self._start_16,
            ("StopTransaction", False): self._stop_16,
            ("MeterValues", False): self._meter_values,
            ("TransactionEvent", False): self._transaction_event,
            ("NotifyEVChargingNeeds", False): self._charging_needs,
            ("SetChargingProfile", True): self._csms_profile,
            ("ClearChargingProfile", True): self._csms_clear,
            ("FirmwareStatusNotification", False): self._firmware_status,
            ("SignedFirmwareStatusNotification", False): self._firmware_status,
            ("SecurityEventNotification", False): self._security_event,
        }

    # LinkListener.

    def link_charger(self, link: ChargerLink, connected: bool) -> None:
        charger = self.state.chargers.get(link.identity)
        if charger is None:
            return
        charger.connected = connected
        charger.ocpp_version = link.version
        charger.last_seen = self.state.clock()
        self.state.notify(
            "charger_connected" if connected else "charger_disconnected", link.identity
        )

    def link_frame(self, link: ChargerLink, side: Any, inbound: bool, text: Any) -> None:
        charger = self.state.chargers.get(link.identity)
        if charger is None:
            return
        if not isinstance(text, str):
            text = repr(text)
        if _CREDENTIALS.search(text):
            text = "[redacted: the frame carries credentials]"
        charger.recent_frames.append(
            (self.state.clock(), side.value, "in" if inbound else "out", text[:2000])
        )

    def link_upstream(self, link: ChargerLink, connected: bool) -> None:
        charger = self.state.chargers.get(link.identity)
        if charger is None:
            return
        charger.upstream_connected = connected
        self.state.notify("upstream", link.identity)

    def link_events(self, link: ChargerLink, events: list[Event]) -> None:
        charger = self.state.chargers.get(link.identity)
        if charger is None:
            return
        charger.last_seen = self.state.clock()
        for event in events:
            if isinstance(event, ResponseSeen):
                if event.response is None:
                    continue
                handler = self._handlers.get((event.action, True))
            elif isinstance(event, RequestSeen):
                handler = self._handlers.get((event.action, False))
            else:
                continue
            if handler is None:
                continue
            try:
                handler(charger, event)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning(
                    "%s: could not read %s payload (%s: %s); forwarded unchanged",
                    charger.charger_id,
                    event.action,
                    type(exc).__name__,
                    exc,
                )

    # Boot and status.

    def _boot(self, charger: ChargerState, event: ResponseSeen) -> None:
        request, response = event.request, event.response or {}
        station = request.get("chargingStation") or {}
        charger.vendor = request.get("chargePointVendor") or station.get("vendorName")
        charger.model = request.get("chargePointModel") or station.get("model")
        charger.firmware_version = request.get("firmwareVersion") or station.get("firmwareVersion")
        charger.boot_accepted = response.get("status") == "Accepted"
        charger.boot_interval_s = response.get("interval")
        self.state.notify("charger_booted", charger.charger_id)

    def _status(self, charger: ChargerState, event: RequestSeen) -> None:
        payload = event.payload
        if "connectorStatus" in payload:  # 2.0.1: sitectl's connectors are the EVSEs
            connector_id, status = int(payload["evseId"]), payload["connectorStatus"]
            error = None
        else:
            connector_id, status = int(payload["connectorId"]), payload["status"]
            error = payload.get("errorCode")
        if connector_id == 0:  # the whole charger (1.6 connector 0)
            return
        connector = charger.connector(connector_id)
        connector.status = status
        connector.error_code = None if error == "NoError" else error
        self.state.notify("connector", f"{charger.charger_id}/{connector_id}")

    # Transactions, 1.6.

    def _start_16(self, charger: ChargerState, event: ResponseSeen) -> None:
        request, response = event.request, event.response or {}
        connector_id = int(request["connectorId"])
        transaction_id = str(response["transactionId"])
        status = (response.get("idTagInfo") or {}).get("status")
        if status != "Accepted":
            return
        self._open_session(
            charger,
            connector_id,
            transaction_id,
            request.get("idTag"),
            _number(request.get("meterStart")),
        )

    def _stop_16(self, charger: ChargerState, event: RequestSeen) -> None:
        transaction_id = str(event.payload["transactionId"])
        self._close_session(charger, transaction_id, _number(event.payload.get("meterStop")))

    # Transactions, 2.0.1.

    def _transaction_event(self, charger: ChargerState, event: RequestSeen) -> None:
        payload = event.payload
        info = payload["transactionInfo"]
        transaction_id = str(info["transactionId"])
        evse = payload.get("evse") or {}
        key = (charger.charger_id, transaction_id)
        if "id" in evse:
            self._tx_connector[key] = int(evse["id"])
        connector_id = self._tx_connector.get(key)
        kind = payload["eventType"]
        readings = parse_sampled_values(payload.get("meterValue") or [])
        if kind == "Started" and connector_id is not None:
            tag = (payload.get("idToken") or {}).get("idToken")
            self._open_session(
                charger, connector_id, transaction_id, tag, readings.get("energy_wh")
            )
        if connector_id is not None and readings:
            self._apply_readings(charger, connector_id, readings)
        if kind == "Ended":
            self._close_session(charger, transaction_id, readings.get("energy_wh"))
            self._tx_connector.pop(key, None)

    def _charging_needs(self, charger: ChargerState, event: RequestSeen) -> None:
        payload = event.payload
        connector = charger.connector(int(payload["evseId"]))
        if connector.session is None:
            return
        needs = payload["chargingNeeds"]
        ac = needs.get("acChargingParameters") or {}
        session = connector.session
        if "energyAmount" in ac:
            session.energy_wanted_kwh = float(ac["energyAmount"]) / 1000
        session.ev_min_current_a = _number(ac.get("evMinCurrent"))
        session.ev_max_current_a = _number(ac.get("evMaxCurrent"))
        self.state.notify("session_needs", f"{charger.charger_id}/{connector.connector_id}")

    # Meter values.

    def _meter_values(self, charger: ChargerState, event: RequestSeen) -> None:
        payload = event.payload
        connector_id = int(payload.get("connectorId", payload.get("evseId", 0)))
        if connector_id == 0:
            return
        readings = parse_sampled_values(payload.get("meterValue") or [])
        if readings:
            self._apply_readings(charger, connector_id, readings)

    def _apply_readings(
        self, charger: ChargerState, connector_id: int, readings: dict[str, Any]
    ) -> None:
        connector = charger.connector(connector_id)
        if "current_a" in readings:
            connector.current_a = readings["current_a"]
        if "power_kw" in readings:
            connector.power_kw = readings["power_kw"]
        if "soc_percent" in readings:
            connector.soc_percent = readings["soc_percent"]
        if "energy_wh" in readings:
            connector.energy_register_wh = readings["energy_wh"]
            session = connector.session
            if session is not None and session.meter_start_wh is not None:
                session.energy_wh = max(0.0, readings["energy_wh"] - session.meter_start_wh)
        connector.measured_at = self.state.clock()
        self.state.notify("measurement", f"{charger.charger_id}/{connector_id}")

    # Sessions.

    def _open_session(
        self,
        charger: ChargerState,
        connector_id: int,
        transaction_id: str,
        tag: str | None,
        meter_start_wh: float | None,
    ) -> None:
        connector = charger.connector(connector_id)
        connector.session = SessionState(
            session_id=f"{charger.charger_id}/{transaction_id}",
            connector_id=connector_id,
            charger_id=charger.charger_id,
            started_at=self.state.clock(),
            transaction_id=transaction_id,
            id_tag_hash=hash_id_tag(self.state.config.site.id, tag) if tag else None,
            meter_start_wh=meter_start_wh,
        )
        if meter_start_wh is not None:
            connector.energy_register_wh = meter_start_wh
        self.state.notify("session_started", connector.session.session_id)

    def _close_session(
        self, charger: ChargerState, transaction_id: str, meter_stop_wh: float | None
    ) -> None:
        for connector in charger.connectors.values():
            session = connector.session
            if session is None or session.transaction_id != transaction_id:
                continue
            if meter_stop_wh is not None and session.meter_start_wh is not None:
                # OCPP 1.6 errata §3.9: the register need not start at 0; use the difference.
                session.energy_wh = max(0.0, meter_stop_wh - session.meter_start_wh)
            connector.session = None
            connector.current_a = None
            session.ended_at = self.state.clock()
            self.state.ended_sessions.append(session)
            self.state.notify("session_ended", session.session_id)
            return

    # Profiles from the CSMS.

    def _csms_profile(self, charger: ChargerState, event: ResponseSeen) -> None:
        if event.origin is not Origin.CSMS or (event.response or {}).get("status") != "Accepted":
            return
        request = event.request
        profile = request.get("csChargingProfiles") or request.get("chargingProfile")
        connector_id = int(request.get("connectorId", request.get("evseId", 0)))
        profile_id = int(profile.get("chargingProfileId", profile.get("id")))
        stack_level = int(profile["stackLevel"])
        purpose = profile["chargingProfilePurpose"]
        charger.csms_profiles[profile_id] = CsmsProfile(
            profile_id, connector_id, stack_level, purpose, profile, self.state.clock()
        )
        if stack_level in self.reserved_stack_levels or profile_id >= self.profile_id_base:
            self.state.raise_alarm(
                "csms_profile_conflict",
                charger.charger_id,
                Severity.WARNING,
                f"the CSMS installed profile {profile_id} at stack level {stack_level}, which "
                "sitectl reserves (ocpp.profile_stack_levels / profile_id_base); it may "
                "overwrite sitectl's limits",
            )
        self.state.notify("csms_profiles", charger.charger_id)

    def _csms_clear(self, charger: ChargerState, event: ResponseSeen) -> None:
        if event.origin is not Origin.CSMS or (event.response or {}).get("status") != "Accepted":
            return
        request = event.request
        criteria = request.get("chargingProfileCriteria") or {}
        profile_id = request.get("id", request.get("chargingProfileId"))
        connector_id = request.get("connectorId", criteria.get("evseId"))
        purpose = request.get("chargingProfilePurpose", criteria.get("chargingProfilePurpose"))
        stack_level = request.get("stackLevel", criteria.get("stackLevel"))
        for known in list(charger.csms_profiles.values()):
            if (
                (profile_id is None or known.profile_id == profile_id)
                and (connector_id is None or known.connector_id == connector_id)
                and (purpose is None or known.purpose == purpose)
                and (stack_level is None or known.stack_level == stack_level)
            ):
                del charger.csms_profiles[known.profile_id]
        # The charger may have dropped sitectl's own profiles too (a clear without criteria
        # wipes everything): the control loop re-applies them (reference S17).
        self.state.notify("profiles_cleared", charger.charger_id)

    # Firmware and security.

    def _firmware_status(self, charger: ChargerState, event: RequestSeen) -> None:
        charger.firmware_status = event.payload.get("status")
        self.state.notify("firmware_status", charger.charger_id)

    def _security_event(self, charger: ChargerState, event: RequestSeen) -> None:
        log.warning(
            "%s: security event %s: %s",
            charger.charger_id,
            event.payload.get("type"),
            event.payload.get("techInfo", ""),
        )
