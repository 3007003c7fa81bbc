"""VDV 463 (1.0.0 FINAL) between sitectl and a depot system: frames in, frames out, no I/O.

Rules of this module (schemas: `sitectl/vdv/schemas/`, see its README for what 1.0.0 leaves
open):

- **A frame** is the schema's 7-slot array ``[messageType, source, presystemId, timestamp,
  messageId, action, payload]``; message type 1 a request, 2 its response, 3 an error. A
  response or error repeats the request's presystemId, messageId and action.
- **Everything received is validated** against `MessageStructure.json` and the action's
  ``<Action>Request.json`` / ``Response.json`` before anything is done with it; everything
  sent is built to them (the tests validate it). A frame that fails, a vehicle sitectl does
  not know, a charging point that does not exist or targets that make no sense get an error
  frame ``{"errorMessage": ...}`` and a log line; nothing a peer sends raises out of
  `VdvProtocol.receive`. A ProvideChargingRequests is all or nothing: one bad request in the
  list refuses the list, so the depot system can correct and resend it.
- **A ChargingRequest** goes to `Fleet.request`, which binds and plans it the way the
  ``session_needs`` command does (priority, departure, SoC targets as energy). Its
  preconditioning becomes power reserved on the vehicle's charger before departure
  (`VdvProtocol._preconditioning`; a load in the plan, so the site limit still holds).
- **ProvideChargingInformation** is built from the state and the last plan
  (``state.control.sessions``): station, point and vehicle status, and per bound session
  ``chargingPredictionData`` — the plan's time to the minimum and to the final target SoC.
- The protocol never reads the clock: ``now`` is passed in.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote

import jsonschema

from sitectl.config import Config
from sitectl.control.fleet import Fleet, VehicleRequest, predicted
from sitectl.state import ConnectorState, SiteState

__all__ = [
    "ACTIONS",
    "SUBPROTOCOL",
    "MessageType",
    "VdvProtocol",
    "charging_point_id",
    "validate_frame",
    "validate_payload",
]

log = logging.getLogger(__name__)

#: The WebSocket subprotocol of VDV 463 version 1.
SUBPROTOCOL = "v1.463.vdv.de"
ACTIONS = ("BootNotification", "ProvideChargingRequests", "ProvideChargingInformation")
#: Larger frames are refused unparsed (a 100-vehicle request list is ~60 KiB).
MAX_FRAME_BYTES = 512 * 1024


class MessageType(enum.IntEnum):
    """Slot 1 of a frame (see the schemas' README for the reading)."""

    REQUEST = 1
    RESPONSE = 2
    ERROR = 3


# ------------------------------------------------------------------------------------------------
# Schemas

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]*$")  # RFC 3986 §3.1: scheme ":" ...
_FORMATS = jsonschema.FormatChecker(())


@_FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    # RFC 3339 §5.6: a full date, "T", a time and an offset (Z or ±hh:mm).
    if not re.fullmatch(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", value):
        return False
    datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    return True


@_FORMATS.checks("uuid", raises=ValueError)
def _uuid(value: object) -> bool:
    return not isinstance(value, str) or (bool(uuid.UUID(value)) and len(value) == 36)


@_FORMATS.checks("uri")
def _uri(value: object) -> bool:
    return not isinstance(value, str) or bool(_URI.match(value))


@functools.cache
def _validator(name: str) -> jsonschema.Draft4Validator:
    text = (resources.files("sitectl.vdv") / "schemas" / f"{name}.json").read_text("utf-8")
    return jsonschema.Draft4Validator(json.loads(text), format_checker=_FORMATS)


def _problem(name: str, instance: Any) -> str | None:
    error = jsonschema.exceptions.best_match(_validator(name).iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{name} {where}: {error.message}"


def validate_frame(frame: Any) -> str | None:
    """Why `frame` is not a VDV 463 message (`MessageStructure.json`), or ``None``."""
    return _problem("MessageStructure", frame)


def validate_payload(action: str, message_type: int, payload: Any) -> str | None:
    """Why `payload` does not fit `action`'s request (1) or response (2) schema, or ``None``."""
    kind = "Request" if message_type == MessageType.REQUEST else "Response"
    return _problem(f"{action}{kind}", payload)


def iso(moment: datetime) -> str:
    """A UTC date-time as VDV 463 frames carry it (RFC 3339, ``Z``, milliseconds)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def charging_station_id(site_id: str, charger_id: str) -> str:
    """The chargingStationId (a URI) sitectl gives a charger."""
    return f"urn:sitectl:{quote(site_id, safe='')}:{quote(charger_id, safe='')}"


def charging_point_id(site_id: str, charger_id: str, connector_id: int) -> str:
    """The chargingPointId (a URI) sitectl gives a connector / EVSE."""
    return f"{charging_station_id(site_id, charger_id)}:{connector_id}"


class _Refused(Exception):
    """A request sitectl answers with an error frame (the peer's fault)."""


# ------------------------------------------------------------------------------------------------
# The protocol


class VdvProtocol:
    """One depot system's VDV 463 connection, without I/O.

    Call `receive` with every text frame and send what it returns; call `information` every
    ``info_period_s`` and send it.

    Args:
        config: the validated configuration (site id, ``fleet.vdv463``).
        state: the site state (read for the information; sessions are changed via `fleet`).
        fleet: where charging requests go.
        new_id: message ids (injectable for tests).
    """

    def __init__(
        self,
        config: Config,
        state: SiteState,
        fleet: Fleet,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.config = config
        self.vdv = config.fleet.vdv463
        self.state = state
        self.fleet = fleet
        self.new_id = new_id
        self.presystem_id: str | None = None  # as the depot system names itself (slot 3)
        self.presystem: str | None = None  # BMS | ITCS (its BootNotification)
        self.pending: dict[str, str] = {}  # message id -> action of our requests
        self.errors = 0  # refused frames, for tests and the log

    # Frames in.

    def receive(self, text: str | bytes, now: datetime) -> list[str]:
        """Take one frame from the depot system; return the frames to send back. Never raises."""
        try:
            return self._receive(text, now)
        except Exception:  # a bug of ours must not take the connection down
            log.exception("VDV 463: frame from the depot system failed")
            return []

    def _receive(self, text: str | bytes, now: datetime) -> list[str]:
        if len(text) > MAX_FRAME_BYTES:
            return [self._error(None, f"frame of {len(text)} bytes is over {MAX_FRAME_BYTES}", now)]
        try:
            frame = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            return [self._error(None, f"not JSON: {exc}", now)]
        problem = validate_frame(frame)
        if problem is not None:
            return [self._error(frame, problem, now)]
        kind, _, presystem_id, _, message_id, action, payload = frame
        if kind == MessageType.REQUEST:
            self.presystem_id = presystem_id
            problem = validate_payload(action, kind, payload)
            if problem is not None:
                return [self._error(frame, problem, now)]
            try:
                reply = self._handle(action, payload, now)
            except _Refused as exc:
                return [self._error(frame, str(exc), now)]
            return [self._frame(MessageType.RESPONSE, presystem_id, message_id, action, reply, now)]
        sent = self.pending.pop(message_id, None)
        if sent is None:
            log.warning("VDV 463: %s %s answers nothing sitectl sent", kind, message_id)
            return []
        if kind == MessageType.ERROR:
            log.warning("VDV 463: the depot system refused %s: %s", sent, payload)
            return []
        problem = validate_payload(sent, MessageType.RESPONSE, payload)
        if problem is not None:
            log.warning("VDV 463: bad response to %s: %s", sent, problem)
        return []

    def _handle(self, action: str, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
        if action == "BootNotification":
            self.presystem = payload["presystem"]
            log.info("VDV 463: %s %s booted", self.presystem, self.presystem_id)
            return {"status": "Accepted"}
        if action == "ProvideChargingRequests":
            requests = [self._request(r, now) for r in payload["chargingRequestList"]]
            for request in requests:  # all checked: now apply them
                self.fleet.request(request)
            log.info(
                "VDV 463: %d charging request(s): %s",
                len(requests),
                ", ".join(f"{r.vehicle_id} {r.instruction}" for r in requests),
            )
            return {}
        raise _Refused(f"{action} is sent by the load management system, not to it")

    def _request(self, item: dict[str, Any], now: datetime) -> VehicleRequest:
        vehicle = self.fleet.vehicle_for_vdv(item["vehicleId"])
        if vehicle is None:
            raise _Refused(f"unknown vehicleId '{item['vehicleId']}'")
        data = item["chargingRequestData"]
        low, high = data["minTargetSoc"], data["maxTargetSoc"]
        arrival = data.get("expectedSocAtArrival")
        for name, value in (("minTargetSoc", low), ("maxTargetSoc", high), ("SoC", arrival)):
            if value is not None and not 0 <= value <= 100:
                raise _Refused(f"{item['vehicleId']}: {name} {value} is not a SoC in %")
        if low > high:
            raise _Refused(f"{item['vehicleId']}: minTargetSoc {low} is above maxTargetSoc {high}")
        if vehicle.battery_kwh is None:
            raise _Refused(
                f"{item['vehicleId']}: sitectl knows no battery capacity for vehicle "
                f"'{vehicle.id}' (fleet.vehicles: battery_kwh), so no SoC target can be planned"
            )
        departure = _time(data.get("requestedTimeForDeparture"))
        if departure is not None and departure <= now:
            raise _Refused(f"{item['vehicleId']}: requestedTimeForDeparture is in the past")
        point = item.get("chargingPointId")
        where = None
        if point is not None:
            where = self._point(point)
            if where is None:
                raise _Refused(f"{item['vehicleId']}: unknown chargingPointId '{point}'")
        return VehicleRequest(
            preconditioning=self._preconditioning(item, vehicle, departure),
            vehicle_id=vehicle.id,
            charging_request_id=item["chargingRequestId"],
            instruction=item.get("chargingInstruction", "Normal"),
            min_target_soc=low,
            max_target_soc=high,
            arrival_soc=arrival,
            departure=departure,
            expected_arrival=_time(data.get("expectedArrivalTimeAtChargingPoint")),
            priority=item.get("priority"),
            charging_point=where,
            charging_process_id=item.get("chargingProcessId"),
            presystem_id=self.presystem_id,
            received_at=now,
            extra={
                k: item[k]
                for k in ("automaticPreconditioning", "manualPreconditioning")
                if k in item
            },
        )

    @staticmethod
    def _preconditioning(
        item: dict[str, Any], vehicle: Any, departure: datetime | None
    ) -> tuple[tuple[datetime, datetime, float], ...]:
        """The (start, end, kW) a request's preconditioning draws, to reserve in the plan.

        Manual: from each start time (HVAC, system) to the departure at its auxiliary
        consumer power — W, as 1.0.0 gives no unit and its integers (e.g. 8000) read as W;
        without a departure, for the vehicle's ``preconditioning_s``. Automatic: no power is
        given, so the vehicle's ``preconditioning_kw`` for ``preconditioning_s`` before the
        requested finish (else the departure); nothing when that is not configured.
        """
        out: list[tuple[datetime, datetime, float]] = []
        span = timedelta(seconds=vehicle.preconditioning_s)
        manual = item.get("manualPreconditioning")
        if manual is not None:
            for kind in ("hvac", "system"):
                start = _time(manual.get(f"{kind}PreconditioningStartTime"))
                watts = manual.get(f"{kind}AuxiliaryConsumerPower")
                if start is None or not watts:
                    continue
                if watts < 0:
                    raise _Refused(
                        f"{item['vehicleId']}: {kind}AuxiliaryConsumerPower {watts} is negative"
                    )
                end = departure if departure is not None and departure > start else start + span
                out.append((start, end, watts / 1000))
        automatic = item.get("automaticPreconditioning")
        if automatic is not None and vehicle.preconditioning_kw:
            end = _time(automatic.get("requestedFinishTime")) or departure
            if end is not None:
                out.append((end - span, end, float(vehicle.preconditioning_kw)))
        return tuple(out)

    def _point(self, point: str) -> str | None:
        prefix = f"urn:sitectl:{quote(self.config.site.id, safe='')}:"
        if not point.startswith(prefix):
            return None
        charger_part, _, connector_part = point[len(prefix) :].rpartition(":")
        charger = self.state.chargers.get(unquote(charger_part))
        if charger is None or not connector_part.isdigit():
            return None
        if int(connector_part) not in charger.connectors:
            return None
        return f"{charger.charger_id}/{int(connector_part)}"

    # Frames out.

    def information(self, now: datetime) -> str:
        """A ProvideChargingInformation request with the depot as it is now."""
        payload = {"depotInfoList": [self._depot(now)]}
        message_id = self.new_id()
        self.pending[message_id] = "ProvideChargingInformation"
        if len(self.pending) > 100:  # a peer that never answers must not grow this forever
            self.pending.pop(next(iter(self.pending)))
        presystem = self.presystem_id or "urn:sitectl:presystem:unknown"
        return self._frame(
            MessageType.REQUEST, presystem, message_id, "ProvideChargingInformation", payload, now
        )

    def _depot(self, now: datetime) -> dict[str, Any]:
        site = self.config.site
        depot: dict[str, Any] = {
            "depotId": self.vdv.depot_id or f"urn:sitectl:depot:{quote(site.id, safe='')}",
            "chargingStationInfoList": [],
        }
        if getattr(site, "name", None):
            depot["name"] = site.name
        for charger in self.config.chargers:
            charger_state = self.state.chargers[charger.id]
            points = [
                self._point_info(charger.id, connector, now)
                for _, connector in sorted(charger_state.connectors.items())
            ]
            if not points:
                continue
            if not charger_state.connected:
                status = "Unavailable"
            elif all(p["chargingPointStatus"] == "Faulted" for p in points):
                status = "Faulted"
            else:
                status = "Available"
            station: dict[str, Any] = {
                "chargingStationId": charging_station_id(site.id, charger.id),
                "chargingStationStatus": status,
                "chargingPointInfoList": points,
            }
            powers = [p["presentPower"] for p in points if "presentPower" in p]
            if powers:
                station["totalPower"] = round(sum(powers), 3)
            depot["chargingStationInfoList"].append(station)
        return depot

    def _point_info(self, charger_id: str, connector: ConnectorState, now: datetime) -> dict:
        info: dict[str, Any] = {
            "chargingPointId": charging_point_id(
                self.config.site.id, charger_id, connector.connector_id
            ),
            "chargingPointStatus": _point_status(connector),
        }
        if connector.power_kw is not None:
            info["presentPower"] = round(connector.power_kw, 3)  # kW (see the README)
        if connector.energy_register_wh is not None:
            info["energyMeterReading"] = round(connector.energy_register_wh, 1)  # Wh
        session = connector.session
        vehicle = self.fleet.index.config_of(session)
        if session is None or vehicle is None:
            return info
        request = self.fleet.requests.get(vehicle.id)
        vdv_id = vehicle.vdv_vehicle_id or vehicle.id
        charging = (connector.power_kw or 0) > 0.1
        vehicle_info: dict[str, Any] = {
            "vehicleId": vdv_id,
            "vehicleStatusInfo": {},
            "vehicleChargingStatus": "Charging" if charging else "ReadyToCharge",
            "preconditioningInfo": {},
        }
        if connector.soc_percent is not None:
            vehicle_info["tractionBatteryInfo"] = {"stateOfCharge": connector.soc_percent}
        info["vehicleInfo"] = vehicle_info
        process = self._process(charger_id, connector, request, now)
        if process is not None:
            info["chargingProcessInfo"] = process
        return info

    def _process(
        self,
        charger_id: str,
        connector: ConnectorState,
        request: VehicleRequest | None,
        now: datetime,
    ) -> dict[str, Any] | None:
        session = connector.session
        assert session is not None
        plan = self.state.control.sessions.get(f"{charger_id}/{connector.connector_id}")
        targets = self.fleet.targets(session, connector.soc_percent)
        delivered = session.energy_wh / 1000
        forecast = plan.forecast if plan is not None else None
        at_min = predicted(forecast, now, delivered, targets.min_kwh)
        at_max = predicted(forecast, now, delivered, targets.max_kwh)
        # The schema needs the minimum's prediction; without a minimum target, the final
        # target is the least it must reach.
        min_soc, min_time = targets.min_soc, at_min
        if min_soc is None or min_time is None:
            min_soc, min_time = targets.max_soc, at_max
        if min_soc is None or min_time is None:
            return None  # nothing to predict (no SoC, no plan yet): no process info
        prediction: dict[str, Any] = {
            "chargingPredictionDataMinSoc": {
                "requestedMinSoc": min_soc,
                "predictedTime": iso(min_time),
            }
        }
        if targets.max_soc is not None and at_max is not None:
            prediction["chargingPredictionDataFinalSoc"] = {
                "predictedFinalSoc": targets.max_soc,
                "predictedTime": iso(at_max),
            }
        process_id = (request.charging_process_id if request else None) or (
            f"urn:sitectl:session:{quote(session.session_id, safe='')}"
        )
        process: dict[str, Any] = {
            "chargingProcessId": process_id,
            "processStatus": _process_status(connector),
            "startTime": iso(session.started_at),
            "chargingPredictionData": prediction,
            "electricData": {"chargingPower": round(connector.power_kw or 0.0, 3)},
            "deliveredEnergy": round(session.energy_wh, 1),  # Wh
        }
        if request is not None:
            process["chargingRequestId"] = request.charging_request_id
            if request.presystem_id is not None:
                process["presystemId"] = request.presystem_id
        return process

    def _frame(
        self,
        kind: MessageType,
        presystem_id: str,
        message_id: str,
        action: str,
        payload: dict[str, Any],
        now: datetime,
    ) -> str:
        frame = [int(kind), self.vdv.source, presystem_id, iso(now), message_id, action, payload]
        return json.dumps(frame, separators=(",", ":"))

    def _error(self, frame: Any, message: str, now: datetime) -> str:
        """An error frame answering `frame` (as much of it as can be told)."""
        self.errors += 1
        log.warning("VDV 463: refused a frame from %s: %s", self.presystem_id or "?", message)
        slots = frame if isinstance(frame, list) else []

        def slot(index: int, ok: Callable[[Any], bool], default: str) -> str:
            value = slots[index] if len(slots) > index else None
            return value if isinstance(value, str) and ok(value) else default

        presystem = slot(2, _URI.match, self.presystem_id or "urn:sitectl:presystem:unknown")
        message_id = slot(4, _is_uuid, str(uuid.UUID(int=0)))
        action = slot(5, ACTIONS.__contains__, "BootNotification")
        return self._frame(
            MessageType.ERROR, presystem, message_id, action, {"errorMessage": message[:500]}, now
        )


def _is_uuid(value: str) -> bool:
    try:
        return _uuid(value)
    except ValueError:
        return False


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))


def _point_status(connector: ConnectorState) -> str:
    status = connector.status
    if status in ("Available", "Reserved", "Unavailable", "Faulted"):
        return status
    if status == "Unknown":
        return "Unavailable"
    return "Occupied"  # Preparing, Charging, Suspended*, Finishing (1.6), Occupied (2.0.1)


def _process_status(connector: ConnectorState) -> str:
    if connector.status in ("Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"):
        return connector.status
    return "Charging" if (connector.power_kw or 0) > 0.1 else "SuspendedEVSE"
