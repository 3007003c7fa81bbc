"""Keep SiteState current from the OCPP traffic the routers see (observe, never change).

Each `RequestSeen`/`ResponseSeen` event of an observed action is read here, for both OCPP 1.6
and 2.0.1 payload shapes, into facts about chargers, connectors and sessions. Times are sitectl's
own receipt times (charger clocks drift); the charger's timestamps stay in the journal.

A payload that does not have the expected shape is logged and skipped: it still reached the
other side unchanged, and one charger's odd frame must not disturb anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sitectl.ocpp.link import ChargerLink
from sitectl.ocpp.redact import redact_frame
from sitectl.ocpp.router import Event, Origin, RequestSeen, ResponseSeen
from sitectl.state import (
    ChargerState,
    ConnectorState,
    CsmsProfile,
    SessionState,
    Severity,
    SiteState,
)

__all__ = ["IN_SESSION_STATUSES", "StateObserver", "hash_id_tag", "parse_sampled_values"]

log = logging.getLogger(__name__)

_PHASES = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}


#: How long after an accepted remote start its TxProfile waits for the transaction it begins
#: (about a charger's ConnectionTimeOut; a later session is not the remote start's).
REMOTE_START_BIND_S = 300.0
#: Connector statuses under which a vehicle may be in a transaction (1.6 §4.9; 2.0.1 Occupied).
IN_SESSION_STATUSES = frozenset({"Charging", "SuspendedEV", "SuspendedEVSE", "Occupied"})


def _count_low_phases(connector: ConnectorState) -> None:
    """Count, per phase, samples in a row that reported it low while another phase drew."""
    currents = connector.current_a
    counts = connector.phase_low_samples
    if currents is None:
        return  # a phase-less current says nothing about which phases are used
    reported = [a for a in currents if a is not None]
    peak = max(reported, default=0.0)
    if peak <= 3.0:
        return  # not drawing: no evidence either way
    for k, amps in enumerate(currents):
        if amps is None:
            counts[k] = 0  # not reported is unknown, which counts as in use
        elif amps < max(1.0, 0.2 * peak):
            counts[k] += 1
        else:
            counts[k] = 0


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
    ``multiplier``). Measurand defaults to ``Energy.Active.Import.Register`` (1.6 §7.31). Only
    the EV side counts (``location`` Outlet, the default); a charger's own Inlet sample is skipped.

    Returns:
        Only the keys that were present: ``current_a`` (3-tuple, charger phases, ``None`` for a
        phase not reported), ``current_phaseless_a`` (a Current.Import without a phase),
        ``offered_a`` (Current.Offered), ``power_kw`` (total; per-phase powers summed when only
        they are given), ``voltage_v`` (highest phase voltage), ``energy_wh``, ``soc_percent``.
    """
    out: dict[str, Any] = {}
    currents: list[float | None] = [None, None, None]
    phase_powers: list[float] = []
    for entry in meter_values:
        for sample in entry.get("sampledValue") or ():
            if not isinstance(sample, dict):
                continue
            value = _number(sample.get("value"))
            if value is None:
                continue
            if sample.get("location", "Outlet") not in ("Outlet", "EV"):
                continue
            measurand = sample.get("measurand", "Energy.Active.Import.Register")
            unit_info = sample.get("unitOfMeasure") or {}
            unit = sample.get("unit") or unit_info.get("unit")
            value *= 10 ** int(unit_info.get("multiplier", 0) or 0)
            phase = sample.get("phase")
            if measurand == "Current.Import":
                if phase in _PHASES:
                    currents[_PHASES[phase]] = value
                elif phase is None:
                    out["current_phaseless_a"] = value
            elif measurand == "Current.Offered" and phase in (None, *_PHASES):
                out["offered_a"] = max(value, out.get("offered_a", 0.0))
            elif measurand == "Power.Active.Import":
                kw = value if unit == "kW" else value / 1000
                if phase is None:
                    out["power_kw"] = kw
                elif phase in _PHASES:
                    phase_powers.append(kw)
            elif measurand == "Voltage" and (phase is None or phase in _PHASES):
                # L-N voltages; a line-to-line sample ("L1-L2") is not a phase voltage.
                out["voltage_v"] = max(value, out.get("voltage_v", 0.0))
            elif measurand == "Energy.Active.Import.Register" and phase is None:
                out["energy_wh"] = value * 1000 if unit == "kWh" else value
            elif measurand == "SoC":
                out["soc_percent"] = value
    if any(c is not None for c in currents):
        out["current_a"] = (currents[0], currents[1], currents[2])
    if "power_kw" not in out and phase_powers:
        out["power_kw"] = sum(phase_powers)
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
        #: The same frames as `ChargerState.recent_frames`, unredacted: only for the HTTP
        #: token's holder (``/api/chargers/{id}?raw=true``), never for the open reads.
        self.raw_frames: dict[str, deque[tuple[datetime, str, str, str]]] = {}
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
            ("RemoteStartTransaction", True): self._remote_start,
            ("RequestStartTransaction", True): self._remote_start,
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
        # Redacted where recorded: no reader of the state can come across a password or an
        # RFID, whatever endpoint or format serves it later (sitectl.ocpp.redact).
        at, direction = self.state.clock(), "in" if inbound else "out"
        shown = redact_frame(text[:100_000], self.state.config.site.id)
        charger.recent_frames.append((at, side.value, direction, shown[:2000]))
        raw = self.raw_frames.setdefault(link.identity, deque(maxlen=charger.recent_frames.maxlen))
        raw.append((at, side.value, direction, text[:2000]))

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
                if event.origin is Origin.CHARGER and isinstance(event.payload, dict):
                    self._clock_sample(charger, event.payload)
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

    def _clock_sample(self, charger: ChargerState, payload: dict[str, Any]) -> None:
        """How far the charger's clock is ahead of sitectl's, from a timestamp it sent."""
        stamps = [payload.get("timestamp")]
        stamps += [
            m.get("timestamp") for m in payload.get("meterValue") or () if isinstance(m, dict)
        ]
        latest = None
        for stamp in stamps:
            if not isinstance(stamp, str):
                continue
            try:
                moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is None:
                continue  # a local time without offset says nothing reliable
            latest = moment if latest is None or moment > latest else latest
        if latest is not None:
            charger.clock_offsets.append((latest - self.state.clock()).total_seconds())

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
        if status in IN_SESSION_STATUSES and connector.session is None:
            # After a restart: the session this connector had, if the store kept one.
            self._resume(charger, connector_id, None)
        elif status == "Available":
            # Nothing is plugged in: a session sitectl only inferred cannot be under way.
            restored = self.state.restored_sessions.pop((charger.charger_id, connector_id), None)
            if restored is not None:
                self._ended(restored)
            session = connector.session
            if session is not None and session.origin != "observed":
                self._close_session(charger, session.transaction_id or "", None)

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
        if connector_id is None:
            # Only the first event of a transaction must carry the EVSE (2.0.1 E02): after a
            # restart of sitectl the later ones must be placed another way.
            connector_id = self._connector_of(charger, transaction_id)
            if connector_id is not None:
                self._tx_connector[key] = connector_id
        kind = payload["eventType"]
        readings = parse_sampled_values(payload.get("meterValue") or [])
        if kind == "Started" and connector_id is not None:
            tag = (payload.get("idToken") or {}).get("idToken")
            self._open_session(
                charger, connector_id, transaction_id, tag, readings.get("energy_wh")
            )
        elif kind == "Updated" and connector_id is not None:
            session = charger.connector(connector_id).session
            if session is None or session.transaction_id != transaction_id:
                self._resume(charger, connector_id, transaction_id)
        if connector_id is not None and readings:
            self._apply_readings(charger, connector_id, readings)
        if kind == "Ended":
            self._close_session(charger, transaction_id, readings.get("energy_wh"))
            self._tx_connector.pop(key, None)

    def _connector_of(self, charger: ChargerState, transaction_id: str) -> int | None:
        """The connector of a transaction first seen without its EVSE, if it can be told."""
        for connector in charger.connectors.values():
            if connector.session is not None and connector.session.transaction_id == transaction_id:
                return connector.connector_id
        for (charger_id, connector_id), session in self.state.restored_sessions.items():
            if charger_id == charger.charger_id and session.transaction_id == transaction_id:
                return connector_id
        if len(charger.connectors) == 1:
            return next(iter(charger.connectors))
        waiting = [
            c.connector_id
            for c in charger.connectors.values()
            if c.session is None and c.status in IN_SESSION_STATUSES
        ]
        return waiting[0] if len(waiting) == 1 else None

    def _charging_needs(self, charger: ChargerState, event: RequestSeen) -> None:
        payload = event.payload
        connector = charger.connector(int(payload["evseId"]))
        if connector.session is None:
            return
        needs = payload["chargingNeeds"]
        ac = needs.get("acChargingParameters") or {}
        dc = needs.get("dcChargingParameters") or {}
        session = connector.session
        amount = ac.get("energyAmount", dc.get("energyAmount"))
        if amount is not None and _number(amount) is not None:
            session.energy_wanted_kwh = float(amount) / 1000
            session.need_source = "vehicle"
        departure = needs.get("departureTime")
        if isinstance(departure, str):
            with contextlib.suppress(ValueError):
                session.departure = datetime.fromisoformat(departure.replace("Z", "+00:00"))
                session.departure_source = "vehicle"
        session.ev_min_current_a = _number(ac.get("evMinCurrent"))
        session.ev_max_current_a = _number(ac.get("evMaxCurrent"))
        soc = _number(dc.get("stateOfCharge"))
        if soc is not None and 0 <= soc <= 100:
            # A DC vehicle's SoC (2.0.1 DCChargingParameters): the fleet's SoC targets use it.
            connector.soc_percent = soc
        self.state.notify("session_needs", f"{charger.charger_id}/{connector.connector_id}")

    # Meter values.

    def _meter_values(self, charger: ChargerState, event: RequestSeen) -> None:
        payload = event.payload
        connector_id = int(payload.get("connectorId", payload.get("evseId", 0)))
        if connector_id == 0:
            return
        transaction_id = payload.get("transactionId")
        if transaction_id is not None:
            # 1.6: MeterValues of a transaction carry its id (§6.27); after a restart of
            # sitectl this is how a session under way is found again.
            session = charger.connector(connector_id).session
            if session is None or session.transaction_id != str(transaction_id):
                self._resume(charger, connector_id, str(transaction_id))
        readings = parse_sampled_values(payload.get("meterValue") or [])
        if readings:
            self._apply_readings(charger, connector_id, readings)

    def _apply_readings(
        self, charger: ChargerState, connector_id: int, readings: dict[str, Any]
    ) -> None:
        connector = charger.connector(connector_id)
        now = self.state.monotonic()
        if "current_a" in readings or "current_phaseless_a" in readings:
            connector.current_a = readings.get("current_a")
            connector.current_phaseless_a = readings.get("current_phaseless_a")
            connector.current_mono = now
            _count_low_phases(connector)
        if "power_kw" in readings:
            connector.power_kw = readings["power_kw"]
            connector.power_mono = now
        if "offered_a" in readings:
            connector.offered_a = readings["offered_a"]
            connector.offered_mono = now
        if "voltage_v" in readings:
            connector.voltage_v = readings["voltage_v"]
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
        origin: str = "observed",
    ) -> SessionState:
        connector = charger.connector(connector_id)
        self.state.restored_sessions.pop((charger.charger_id, connector_id), None)
        connector.session = SessionState(
            session_id=f"{charger.charger_id}/{transaction_id}",
            connector_id=connector_id,
            charger_id=charger.charger_id,
            started_at=self.state.clock(),
            transaction_id=transaction_id,
            id_tag_hash=hash_id_tag(self.state.config.site.id, tag) if tag else None,
            meter_start_wh=meter_start_wh,
            origin=origin,
        )
        connector.phase_low_samples = [0, 0, 0]
        if meter_start_wh is not None:
            connector.energy_register_wh = meter_start_wh
        self._bind_remote_start_profile(charger, connector_id, transaction_id)
        self.state.notify("session_started", connector.session.session_id)
        return connector.session

    def _resume(
        self, charger: ChargerState, connector_id: int, transaction_id: str | None
    ) -> SessionState | None:
        """A session under way that sitectl did not see start: restore it, or adopt it.

        With ``transaction_id`` ``None`` (only a status says the connector is in use) only a
        session the store kept for this connector is restored; with an id, an unknown
        transaction is adopted (start and need unknown: it charges until the vehicle stops).
        """
        key = (charger.charger_id, connector_id)
        connector = charger.connector(connector_id)
        restored = self.state.restored_sessions.get(key)
        if restored is not None and transaction_id in (None, restored.transaction_id):
            del self.state.restored_sessions[key]
            if connector.session is not None:
                self._close_session(charger, connector.session.transaction_id or "", None)
            restored.origin = "restored"
            connector.session = restored
            log.info(
                "%s/%d: session %s restored after a restart",
                charger.charger_id,
                connector_id,
                restored.session_id,
            )
            self.state.notify("session_restored", restored.session_id)
            return restored
        if transaction_id is None:
            return None
        if restored is not None:  # the connector has moved on to another transaction
            del self.state.restored_sessions[key]
            self._ended(restored)
        if connector.session is not None:
            self._close_session(charger, connector.session.transaction_id or "", None)
        log.warning(
            "%s/%d: transaction %s was under way when sitectl learnt of it: adopted (its need "
            "is unknown, so it charges until the vehicle stops drawing)",
            charger.charger_id,
            connector_id,
            transaction_id,
        )
        return self._open_session(
            charger, connector_id, transaction_id, None, None, origin="adopted"
        )

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
            connector.current_phaseless_a = None
            # A TxProfile lives as long as its transaction (1.6 §3.13.4, 2.0.1 K01).
            for known in list(charger.csms_profiles.values()):
                if known.purpose == "TxProfile" and str(known.profile.get("transactionId")) == str(
                    transaction_id
                ):
                    del charger.csms_profiles[known.profile_id]
            self._ended(session)
            return
        for key, session in list(self.state.restored_sessions.items()):
            # Ended while sitectl was down: the charger sends the stop when it reconnects.
            if key[0] == charger.charger_id and session.transaction_id == transaction_id:
                del self.state.restored_sessions[key]
                if meter_stop_wh is not None and session.meter_start_wh is not None:
                    session.energy_wh = max(0.0, meter_stop_wh - session.meter_start_wh)
                self._ended(session)
                return

    def end_restored(self, charger_id: str, connector_id: int, why: str) -> bool:
        """End a session restored from the store that its charger does not confirm."""
        session = self.state.restored_sessions.pop((charger_id, connector_id), None)
        if session is None:
            return False
        log.info(
            "%s/%d: restored session %s ended: %s",
            charger_id,
            connector_id,
            session.session_id,
            why,
        )
        self._ended(session)
        return True

    def _ended(self, session: SessionState) -> None:
        session.ended_at = self.state.clock()
        self.state.ended_sessions.append(session)
        self.state.notify("session_ended", session.session_id)

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

    def _remote_start(self, charger: ChargerState, event: ResponseSeen) -> None:
        """A CSMS remote start with a charging profile: that TxProfile bounds the session.

        The profile carries no transaction id (the transaction does not exist yet); the
        charger applies it to the transaction the remote start begins, so it is bound to the
        next session that starts on that connector (any connector when none was named) within
        `REMOTE_START_BIND_S`.
        """
        if event.origin is not Origin.CSMS or (event.response or {}).get("status") != "Accepted":
            return
        profile = event.request.get("chargingProfile")
        if not isinstance(profile, dict):
            return
        connector = event.request.get("connectorId", event.request.get("evseId"))
        connector_id = int(connector) if isinstance(connector, int) and connector > 0 else None
        charger.remote_start_profile = (connector_id, profile, self.state.clock())
        self.state.notify("csms_profiles", charger.charger_id)

    def _bind_remote_start_profile(
        self, charger: ChargerState, connector_id: int, transaction_id: str
    ) -> None:
        pending = charger.remote_start_profile
        if pending is None:
            return
        wanted, profile, received_at = pending
        if (self.state.clock() - received_at).total_seconds() > REMOTE_START_BIND_S:
            charger.remote_start_profile = None
            return
        if wanted is not None and wanted != connector_id:
            return
        charger.remote_start_profile = None
        profile = {**profile, "transactionId": transaction_id}
        profile_id = profile.get("chargingProfileId", profile.get("id"))
        if not isinstance(profile_id, int) or "stackLevel" not in profile:
            return
        charger.csms_profiles[profile_id] = CsmsProfile(
            profile_id,
            connector_id,
            int(profile["stackLevel"]),
            "TxProfile",
            profile,
            received_at,
        )
        log.info(
            "%s/%d: the remote start's TxProfile %s bounds transaction %s",
            charger.charger_id,
            connector_id,
            profile_id,
            transaction_id,
        )

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
