"""Simulated chargers on the ``ocpp`` library, for OCPP 1.6 and 2.0.1.

A `SimCharger` connects like a real charge point (subprotocol, Basic auth, TLS), sends the
usual traffic on request (boot, status, authorize, transactions, meter values), answers the
CSMS's and sitectl's calls, remembers the charging profiles it was given, and records every frame
it sent and received. Used by the tests, the benchmarks and the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from sitectl.ocpp.upstream import basic_auth
from sitectl.sim.csms import RecordingConnection

__all__ = ["SimCharger"]

SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _Handled:
    """What the simulated charger was asked to do, by action."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    profiles: dict[int, dict[str, Any]] = field(default_factory=dict)  # by profile id


class _Point16(ChargePoint16):
    def __init__(self, identity: str, connection: Any, sim: SimCharger) -> None:
        super().__init__(identity, connection)
        self.sim = sim

    @on("GetConfiguration")
    def get_configuration(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("GetConfiguration", kwargs))
        keys = [
            {"key": k, "readonly": True, "value": v}
            for k, v in self.sim.config_keys.items()
            if not kwargs.get("key") or k in kwargs["key"]
        ]
        return result16.GetConfiguration(configuration_key=keys)

    @on("ChangeConfiguration")
    def change_configuration(self, key: str, value: str, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("ChangeConfiguration", {"key": key, "value": value}))
        self.sim.config_keys[key] = value
        return result16.ChangeConfiguration(status="Accepted")

    @on("RemoteStartTransaction")
    def remote_start(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("RemoteStartTransaction", kwargs))
        return result16.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def remote_stop(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("RemoteStopTransaction", kwargs))
        return result16.RemoteStopTransaction(status="Accepted")

    @on("Reset")
    def reset(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("Reset", kwargs))
        return result16.Reset(status="Accepted")

    @on("SetChargingProfile")
    async def set_profile(
        self, connector_id: int, cs_charging_profiles: dict, **kwargs: Any
    ) -> Any:
        self.sim.handled.calls.append(
            (
                "SetChargingProfile",
                {"connector_id": connector_id, "cs_charging_profiles": cs_charging_profiles},
            )
        )
        if self.sim.answer_delay_s:
            await asyncio.sleep(self.sim.answer_delay_s)
        if self.sim.reject_profiles:
            return result16.SetChargingProfile(status="Rejected")
        profile = dict(cs_charging_profiles, connector_id=connector_id)
        self.sim.handled.profiles[cs_charging_profiles["charging_profile_id"]] = profile
        return result16.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def clear_profile(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("ClearChargingProfile", kwargs))
        if kwargs.get("id") is not None:
            self.sim.handled.profiles.pop(kwargs["id"], None)
        else:
            self.sim.handled.profiles.clear()
        return result16.ClearChargingProfile(status="Accepted")

    @on("TriggerMessage")
    def trigger(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("TriggerMessage", kwargs))
        return result16.TriggerMessage(status="Accepted")

    @on("UpdateFirmware")
    def update_firmware(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("UpdateFirmware", kwargs))
        return result16.UpdateFirmware()

    @on("DataTransfer")
    def data_transfer(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("DataTransfer", kwargs))
        return result16.DataTransfer(status="Accepted")


class _Point201(ChargePoint201):
    def __init__(self, identity: str, connection: Any, sim: SimCharger) -> None:
        super().__init__(identity, connection)
        self.sim = sim

    @on("GetVariables")
    def get_variables(self, get_variable_data: list, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("GetVariables", {"get_variable_data": get_variable_data}))
        results = []
        for item in get_variable_data:
            name = f"{item['component']['name']}.{item['variable']['name']}"
            value = self.sim.config_keys.get(name)
            results.append(
                {
                    "attribute_status": "Accepted" if value is not None else "UnknownVariable",
                    "component": item["component"],
                    "variable": item["variable"],
                    **({"attribute_value": value} if value is not None else {}),
                }
            )
        return result201.GetVariables(get_variable_result=results)

    @on("RequestStartTransaction")
    def request_start(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("RequestStartTransaction", kwargs))
        return result201.RequestStartTransaction(status="Accepted")

    @on("Reset")
    def reset(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("Reset", kwargs))
        return result201.Reset(status="Accepted")

    @on("SetChargingProfile")
    async def set_profile(self, evse_id: int, charging_profile: dict, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(
            ("SetChargingProfile", {"evse_id": evse_id, "charging_profile": charging_profile})
        )
        if self.sim.answer_delay_s:
            await asyncio.sleep(self.sim.answer_delay_s)
        if self.sim.reject_profiles:
            return result201.SetChargingProfile(status="Rejected")
        self.sim.handled.profiles[charging_profile["id"]] = dict(charging_profile, evse_id=evse_id)
        return result201.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def clear_profile(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("ClearChargingProfile", kwargs))
        if kwargs.get("charging_profile_id") is not None:
            self.sim.handled.profiles.pop(kwargs["charging_profile_id"], None)
        else:
            self.sim.handled.profiles.clear()
        return result201.ClearChargingProfile(status="Accepted")

    @on("UpdateFirmware")
    def update_firmware(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("UpdateFirmware", kwargs))
        return result201.UpdateFirmware(status="Accepted")

    @on("DataTransfer")
    def data_transfer(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("DataTransfer", kwargs))
        return result201.DataTransfer(status="Accepted")


class SimCharger:
    """A simulated charge point.

    Args:
        identity: charge point identity (percent-encoded into the URL).
        version: ``1.6`` or ``2.0.1``.
        url: the base URL of sitectl's OCPP server (identity appended).
        password: Basic-auth password, or ``None`` for none.
        ssl: client TLS context (security profiles 2 and 3).
        subprotocols: what to offer (default: the one for `version`).
    """

    def __init__(
        self,
        identity: str,
        version: str,
        url: str,
        password: str | None = None,
        ssl: ssl.SSLContext | None = None,
        subprotocols: list[str] | None = None,
        vendor: str = "sitectl-sim",
        model: str = "SimCharger",
    ) -> None:
        self.identity = identity
        self.version = version
        self.url = url
        self.password = password
        self.ssl = ssl
        self.subprotocols = subprotocols or [SUBPROTOCOL[version]]
        self.vendor = vendor
        self.model = model
        self.frames: list[tuple[str, str]] = []
        self.handled = _Handled()
        self.config_keys: dict[str, str] = {
            "ChargeProfileMaxStackLevel": "10",
            "ChargingScheduleAllowedChargingRateUnit": "Current",
            "SmartChargingCtrlr.RateUnit": "A",
        }
        self.reject_profiles = False
        self.answer_delay_s = 0.0
        self.ws: ClientConnection | None = None
        self.point: Any = None
        self._task: asyncio.Task | None = None
        self._seq = 0

    async def connect(self, **kwargs: Any) -> SimCharger:
        """Open the WebSocket and start answering calls; raises the handshake error if any."""
        headers = (
            {"Authorization": basic_auth(self.identity, self.password)}
            if self.password is not None
            else {}
        )
        self.ws = await connect(
            f"{self.url}/{quote(self.identity, safe='')}",
            subprotocols=[Subprotocol(p) for p in self.subprotocols],
            additional_headers=headers,
            ssl=self.ssl,
            open_timeout=10,
            proxy=None,
            **kwargs,
        )
        point_class = _Point16 if self.version == "1.6" else _Point201
        self.point = point_class(self.identity, RecordingConnection(self.ws, self.frames), self)
        self._task = asyncio.create_task(self._serve(), name=f"sim {self.identity}")
        return self

    async def _serve(self) -> None:
        with contextlib.suppress(Exception):
            await self.point.start()

    async def close(self) -> None:
        """Close the connection."""
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> SimCharger:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def sent(self) -> list[str]:
        """Frames this charger sent, in order."""
        return [text for direction, text in self.frames if direction == "out"]

    def received(self) -> list[str]:
        """Frames this charger received, in order."""
        return [text for direction, text in self.frames if direction == "in"]

    # The charger's own messages.

    async def call(self, payload: Any) -> Any:
        """Send any ``ocpp`` call dataclass and return the result."""
        return await self.point.call(payload)

    async def boot(self) -> Any:
        if self.version == "1.6":
            return await self.call(
                call16.BootNotification(
                    charge_point_model=self.model,
                    charge_point_vendor=self.vendor,
                    firmware_version="1.0.0",
                )
            )
        return await self.call(
            call201.BootNotification(
                charging_station={
                    "model": self.model,
                    "vendor_name": self.vendor,
                    "firmware_version": "1.0.0",
                },
                reason="PowerUp",
            )
        )

    async def heartbeat(self) -> Any:
        return await self.call(call16.Heartbeat() if self.version == "1.6" else call201.Heartbeat())

    async def status(self, connector: int, status: str) -> Any:
        """Report a connector status (1.6 names; mapped for 2.0.1)."""
        if self.version == "1.6":
            return await self.call(
                call16.StatusNotification(
                    connector_id=connector, error_code="NoError", status=status
                )
            )
        mapped = {
            "Preparing": "Occupied",
            "Charging": "Occupied",
            "SuspendedEV": "Occupied",
            "SuspendedEVSE": "Occupied",
            "Finishing": "Occupied",
        }.get(status, status)
        return await self.call(
            call201.StatusNotification(
                timestamp=_now(), connector_status=mapped, evse_id=connector, connector_id=1
            )
        )

    async def authorize(self, tag: str) -> Any:
        if self.version == "1.6":
            return await self.call(call16.Authorize(id_tag=tag))
        return await self.call(call201.Authorize(id_token={"id_token": tag, "type": "ISO14443"}))

    def _sampled(self, currents: list[float] | None, energy_wh: float) -> list[dict[str, Any]]:
        values: list[dict[str, Any]] = [
            {
                "value": f"{energy_wh:.0f}",
                "measurand": "Energy.Active.Import.Register",
                "unit": "Wh",
            }
        ]
        for phase, amps in zip(("L1", "L2", "L3"), currents or [], strict=False):
            values.append(
                {"value": f"{amps:.1f}", "measurand": "Current.Import", "phase": phase, "unit": "A"}
            )
        if self.version != "1.6":
            for value in values:
                value["value"] = float(value["value"])
                value["unit_of_measure"] = {"unit": value.pop("unit")}
        return values

    async def start_transaction(
        self, connector: int, tag: str, meter_start_wh: int = 0, transaction_id: str | None = None
    ) -> Any:
        """1.6: StartTransaction (returns the result). 2.0.1: TransactionEvent Started."""
        if self.version == "1.6":
            return await self.call(
                call16.StartTransaction(
                    connector_id=connector, id_tag=tag, meter_start=meter_start_wh, timestamp=_now()
                )
            )
        self._seq = 0
        return await self.call(
            call201.TransactionEvent(
                event_type="Started",
                timestamp=_now(),
                trigger_reason="Authorized",
                seq_no=self._next_seq(),
                transaction_info={"transaction_id": transaction_id or "tx"},
                id_token={"id_token": tag, "type": "ISO14443"},
                evse={"id": connector, "connector_id": 1},
                meter_value=[
                    {"timestamp": _now(), "sampled_value": self._sampled(None, meter_start_wh)}
                ],
            )
        )

    async def meter_values(
        self,
        connector: int,
        currents: list[float],
        energy_wh: float,
        transaction_id: int | str | None = None,
    ) -> Any:
        """Per-phase currents (A) and the energy register (Wh)."""
        sample = {"timestamp": _now(), "sampled_value": self._sampled(currents, energy_wh)}
        if self.version == "1.6":
            return await self.call(
                call16.MeterValues(
                    connector_id=connector, meter_value=[sample], transaction_id=transaction_id
                )
            )  # type: ignore[arg-type]
        return await self.call(
            call201.TransactionEvent(
                event_type="Updated",
                timestamp=_now(),
                trigger_reason="MeterValuePeriodic",
                seq_no=self._next_seq(),
                transaction_info={"transaction_id": str(transaction_id)},
                meter_value=[sample],
            )
        )

    async def stop_transaction(
        self, transaction_id: int | str, meter_stop_wh: int, reason: str = "Local"
    ) -> Any:
        if self.version == "1.6":
            return await self.call(
                call16.StopTransaction(
                    meter_stop=meter_stop_wh,
                    timestamp=_now(),
                    transaction_id=int(transaction_id),
                    reason=reason,
                )
            )
        return await self.call(
            call201.TransactionEvent(
                event_type="Ended",
                timestamp=_now(),
                trigger_reason="StopAuthorized",
                seq_no=self._next_seq(),
                transaction_info={"transaction_id": str(transaction_id), "stopped_reason": reason},
                meter_value=[
                    {"timestamp": _now(), "sampled_value": self._sampled(None, meter_stop_wh)}
                ],
            )
        )

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq
