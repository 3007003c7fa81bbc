"""One display vocabulary for connector states, whatever OCPP version the charger speaks.

OCPP 1.6 reports what a connector does (ChargePointStatus: Preparing, Charging, SuspendedEV,
SuspendedEVSE, Finishing, ...; 1.6 §7.7); OCPP 2.0.1 only whether something is plugged in
(ConnectorStatusEnumType: Available, Occupied, Reserved, Unavailable, Faulted; 2.0.1 part 2,
§3.27). The dashboard and the API say the same words for the same situation: a 2.0.1
"Occupied" becomes "plugged in", "charging" or "paused" from what sitectl knows besides the
status (a session, fresh measurements, the current offered). The raw status stays in the API.
"""

from __future__ import annotations

import enum

from sitectl.state import ConnectorState

__all__ = ["DRAWING_A", "DRAWING_KW", "ConnectorWording", "connector_wording"]

#: A vehicle that draws less than this is not charging: vehicles in standby draw well under
#: 1 A, charging never goes below the 6 A minimum of IEC 61851-1.
DRAWING_A = 1.0
DRAWING_KW = 0.2  # about 1 A on one phase at 230 V, for chargers that report power only


class ConnectorWording(enum.StrEnum):
    """What a connector is doing, in the dashboard's words."""

    AVAILABLE = "available"
    PLUGGED_IN = "plugged in"  # a vehicle is connected, no energy transfer is under way
    CHARGING = "charging"
    PAUSED = "paused"  # in a session, but not drawing
    IN_SESSION = "in session"  # 2.0.1 Occupied with a session, but no fresh measurement
    RESERVED = "reserved"
    UNAVAILABLE = "unavailable"
    FAULTED = "faulted"
    UNKNOWN = "unknown"


BY_VEHICLE = "by the vehicle"
BY_CHARGER = "by the charger"

# Statuses that say the same in both versions, and 1.6's finer ones (1.6 §4.9).
_DIRECT: dict[str, tuple[ConnectorWording, str | None]] = {
    "Available": (ConnectorWording.AVAILABLE, None),
    "Reserved": (ConnectorWording.RESERVED, None),
    "Unavailable": (ConnectorWording.UNAVAILABLE, None),
    "Faulted": (ConnectorWording.FAULTED, None),
    "Preparing": (ConnectorWording.PLUGGED_IN, "waiting to start"),
    "Charging": (ConnectorWording.CHARGING, None),
    # 1.6: "the EVSE offers energy but the EV does not take it" / "the EVSE does not offer".
    "SuspendedEV": (ConnectorWording.PAUSED, BY_VEHICLE),
    "SuspendedEVSE": (ConnectorWording.PAUSED, BY_CHARGER),
    "Finishing": (ConnectorWording.PLUGGED_IN, "session ended"),
}


def _fresh(at_mono: float | None, now_mono: float, max_age_s: float) -> bool:
    return at_mono is not None and now_mono - at_mono <= max_age_s


def _draw(connector: ConnectorState, now_mono: float, max_age_s: float) -> bool | None:
    """Whether the vehicle draws current, by fresh measurements; None: nothing fresh."""
    if _fresh(connector.current_mono, now_mono, max_age_s):
        amps = [a for a in (connector.current_a or ()) if a is not None]
        if connector.current_phaseless_a is not None:
            amps.append(connector.current_phaseless_a)
        if amps:
            return max(amps) >= DRAWING_A
    if _fresh(connector.power_mono, now_mono, max_age_s) and connector.power_kw is not None:
        return connector.power_kw >= DRAWING_KW
    return None


def connector_wording(
    connector: ConnectorState, now_mono: float, max_age_s: float, limit_a: float | None = None
) -> tuple[ConnectorWording, str | None]:
    """The display state of a connector and, where known, a detail (who paused it...).

    Args:
        connector: the connector (1.6) or EVSE (2.0.1) as observed.
        now_mono: the state's monotonic clock now.
        max_age_s: how old a measurement may be and still count (the control loop's
            ``ev_measurement_max_age_s``).
        limit_a: the dynamic limit in force on its charger, if any (0 A: paused by sitectl).
    """
    status = connector.status
    if status in _DIRECT:
        return _DIRECT[status]
    if status != "Occupied":
        return ConnectorWording.UNKNOWN, None if status == "Unknown" else status
    # 2.0.1 Occupied: a vehicle is plugged in; the rest from the session and the measurements.
    if connector.session is None:
        return ConnectorWording.PLUGGED_IN, None
    drawing = _draw(connector, now_mono, max_age_s)
    if drawing is None:
        return ConnectorWording.IN_SESSION, "no recent measurement"
    if drawing:
        return ConnectorWording.CHARGING, None
    offered = connector.offered_a if _fresh(connector.offered_mono, now_mono, max_age_s) else None
    if offered is not None and offered >= DRAWING_A:
        return ConnectorWording.PAUSED, BY_VEHICLE
    if offered is not None or (limit_a is not None and limit_a < DRAWING_A):
        return ConnectorWording.PAUSED, BY_CHARGER
    return ConnectorWording.PAUSED, None
