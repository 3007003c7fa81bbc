"""Simulated chargers on the ``ocpp`` library, for OCPP 1.6 and 2.0.1.

A `SimCharger` connects like a real charge point (subprotocol, Basic auth, TLS), sends the
usual traffic on request (boot, status, authorize, transactions, meter values), answers the
CSMS's and sitectl's calls, remembers the charging profiles it was given, and records every frame
it sent and received. Used by the tests, the benchmarks and the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from sitectl.ocpp.composite import InstalledProfile, composite_limit_a
from sitectl.ocpp.upstream import basic_auth
from sitectl.sim.csms import RecordingConnection
from sitectl.sim.quirks import Quirks

__all__ = ["Plug", "Quirks", "SimCharger", "SimEv"]

SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _Handled:
    """What the simulated charger was asked to do, by action."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    profiles: dict[int, InstalledProfile] = field(default_factory=dict)  # by profile id


def _is_call(raw: str) -> bool:
    """An OCPP-J CALL frame ``[2, id, action, payload]`` (not a result or an error)."""
    return raw.lstrip().startswith("[2") or raw.lstrip().startswith("[ 2")


def _min_limit_a(profile: dict[str, Any], voltage_v: float) -> float | None:
    """The lowest limit of a profile (snake_case from the library), in A per phase."""
    schedules = profile.get("charging_schedule")
    if isinstance(schedules, dict):
        schedules = [schedules]
    lowest = None
    for schedule in schedules or ():
        watts = schedule.get("charging_rate_unit") == "W"
        for period in schedule.get("charging_schedule_period") or ():
            limit = float(period["limit"])
            amps = limit / (3 * voltage_v) if watts else limit
            lowest = amps if lowest is None else min(lowest, amps)
    return lowest


def _interval(report_s: float) -> str:
    """Its MeterValues period as OCPP says it: whole seconds (a faster one shows as 1)."""
    return str(max(1, round(report_s)))


def _refuses(sim: SimCharger, profile: dict[str, Any]) -> bool:
    ceiling = sim.quirks.max_stack_level
    if (
        ceiling is not None
        and sim.quirks.above_max_level == "reject"
        and int(profile.get("stack_level", 0)) > ceiling
    ):
        return True
    floor = sim.quirks.refuses_below_a
    if floor is None:
        return False
    lowest = _min_limit_a(profile, sim.voltage_v)
    return lowest is not None and lowest < floor


class _MuteStack:
    """The `Quirks.mute` switch for both versions' charge points: calls go unanswered."""

    sim: SimCharger

    async def route_message(self, raw_msg: str) -> None:
        if self.sim.quirks.mute and _is_call(raw_msg):
            return  # a hung stack: the socket is open, no call is answered
        await super().route_message(raw_msg)  # type: ignore[misc]


class _Point16(_MuteStack, ChargePoint16):
    def __init__(self, identity: str, connection: Any, sim: SimCharger) -> None:
        super().__init__(identity, connection)
        self.sim = sim

    @on("GetConfiguration")
    def get_configuration(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("GetConfiguration", kwargs))
        self.sim.config_keys["MeterValueSampleInterval"] = _interval(self.sim.report_s)
        keys = [
            {"key": k, "readonly": True, "value": v}
            for k, v in self.sim.config_keys.items()
            if not kwargs.get("key") or k in kwargs["key"]
        ]
        return result16.GetConfiguration(configuration_key=keys)

    @on("ChangeConfiguration")
    def change_configuration(self, key: str, value: str, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("ChangeConfiguration", {"key": key, "value": value}))
        if key == "MeterValueSampleInterval":
            if self.sim.quirks.keeps_sampling_interval:
                return result16.ChangeConfiguration(status="Rejected")
            self.sim.report_s = float(value)  # the MeterValues period from now on
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
        if self.sim.reject_profiles or _refuses(self.sim, cs_charging_profiles):
            return result16.SetChargingProfile(status="Rejected")
        self.sim.install(connector_id, cs_charging_profiles)
        return result16.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def clear_profile(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("ClearChargingProfile", kwargs))
        self.sim.clear(
            kwargs.get("id"),
            kwargs.get("connector_id"),
            kwargs.get("charging_profile_purpose"),
            kwargs.get("stack_level"),
        )
        return result16.ClearChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")
    def composite(self, connector_id: int, duration: int, **kwargs: Any) -> Any:
        limit = self.sim.limit_a(connector_id)
        return result16.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=_now(),
            charging_schedule={
                "duration": duration,
                "charging_rate_unit": "A",
                "charging_schedule_period": [{"start_period": 0, "limit": round(limit, 1)}],
            },
        )

    @on("TriggerMessage")
    def trigger(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("TriggerMessage", kwargs))
        return result16.TriggerMessage(status="Accepted")

    @after("TriggerMessage")
    async def triggered(self, requested_message: str, **kwargs: Any) -> None:
        # 1.6 §5.17: the requested message follows the response.
        if self.sim.quirks.answers_triggers:
            await self.sim.send_triggered(requested_message, kwargs.get("connector_id"))

    @on("UpdateFirmware")
    def update_firmware(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("UpdateFirmware", kwargs))
        return result16.UpdateFirmware()

    @on("DataTransfer")
    def data_transfer(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("DataTransfer", kwargs))
        return result16.DataTransfer(status="Accepted")


class _Point201(_MuteStack, ChargePoint201):
    def __init__(self, identity: str, connection: Any, sim: SimCharger) -> None:
        super().__init__(identity, connection)
        self.sim = sim

    @on("TriggerMessage")
    def trigger(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("TriggerMessage", kwargs))
        return result201.TriggerMessage(status="Accepted")

    @after("TriggerMessage")
    async def triggered(self, requested_message: str, **kwargs: Any) -> None:
        if self.sim.quirks.answers_triggers:
            evse = kwargs.get("evse") or {}
            await self.sim.send_triggered(requested_message, evse.get("id"))

    @on("GetTransactionStatus")
    def transaction_status(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("GetTransactionStatus", kwargs))
        wanted = kwargs.get("transaction_id")
        ongoing = any(str(p.transaction_id) == wanted for p in self.sim.plugs.values())
        return result201.GetTransactionStatus(messages_in_queue=False, ongoing_indicator=ongoing)

    @on("GetVariables")
    def get_variables(self, get_variable_data: list, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("GetVariables", {"get_variable_data": get_variable_data}))
        self.sim.config_keys["SampledDataCtrlr.TxUpdatedInterval"] = _interval(self.sim.report_s)
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

    @on("SetVariables")
    def set_variables(self, set_variable_data: list, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("SetVariables", {"set_variable_data": set_variable_data}))
        results = []
        for item in set_variable_data:
            name = f"{item['component']['name']}.{item['variable']['name']}"
            status = "Accepted"
            if name == "SampledDataCtrlr.TxUpdatedInterval":
                if self.sim.quirks.keeps_sampling_interval:
                    status = "Rejected"
                else:
                    self.sim.report_s = float(item["attribute_value"])
            if status == "Accepted":
                self.sim.config_keys[name] = str(item["attribute_value"])
            results.append(
                {
                    "attribute_status": status,
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return result201.SetVariables(set_variable_result=results)

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
        if self.sim.reject_profiles or _refuses(self.sim, charging_profile):
            return result201.SetChargingProfile(status="Rejected")
        self.sim.install(evse_id, charging_profile)
        return result201.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def clear_profile(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("ClearChargingProfile", kwargs))
        criteria = kwargs.get("charging_profile_criteria") or {}
        self.sim.clear(
            kwargs.get("charging_profile_id"),
            criteria.get("evse_id"),
            criteria.get("charging_profile_purpose"),
            criteria.get("stack_level"),
        )
        return result201.ClearChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")
    def composite(self, evse_id: int, duration: int, **kwargs: Any) -> Any:
        limit = self.sim.limit_a(evse_id)
        return result201.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evse_id": evse_id,
                "duration": duration,
                "schedule_start": _now(),
                "charging_rate_unit": "A",
                "charging_schedule_period": [{"start_period": 0, "limit": round(limit, 1)}],
            },
        )

    @on("UpdateFirmware")
    def update_firmware(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("UpdateFirmware", kwargs))
        return result201.UpdateFirmware(status="Accepted")

    @on("DataTransfer")
    def data_transfer(self, **kwargs: Any) -> Any:
        self.sim.handled.calls.append(("DataTransfer", kwargs))
        return result201.DataTransfer(status="Accepted")


@dataclass
class SimEv:
    """A vehicle: what it can draw and what it wants."""

    phases: int = 3  # a single-phase vehicle draws on the charger's L1
    max_a: float = 32.0
    energy_wanted_kwh: float = 60.0
    tag: str = "FLEET"


@dataclass
class Plug:
    """A vehicle on a connector, in a transaction."""

    ev: SimEv
    transaction_id: Any
    started_at: datetime
    draw_a: float = 0.0
    register_wh: float = 0.0
    unlimited: bool = False  # `Quirks.ignores_limit_after_zero`: resumed without a limit


class SimCharger:
    """A simulated charge point.

    Args:
        identity: charge point identity (percent-encoded into the URL).
        version: ``1.6`` or ``2.0.1``.
        url: the base URL of sitectl's OCPP server (identity appended).
        password: Basic-auth password, or ``None`` for none.
        ssl: client TLS context (security profiles 2 and 3).
        subprotocols: what to offer (default: the one for `version`).
        max_current_a: the charger's own maximum per phase.
        lag_s: time constant with which the vehicles follow a new limit.
        voltage_v: its supply's phase voltage.
        quirks: how it departs from the book (`Quirks`; default: it does not).
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
        max_current_a: float = 32.0,
        lag_s: float = 1.0,
        voltage_v: float = 230.0,
        quirks: Quirks | None = None,
    ) -> None:
        self.identity = identity
        self.quirks = quirks or Quirks()
        self.version = version
        self.url = url
        self.password = password
        self.ssl = ssl
        self.subprotocols = subprotocols or [SUBPROTOCOL[version]]
        self.vendor = vendor
        self.model = model
        self.firmware_version = "1.0.0"
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
        self.max_current_a = max_current_a
        self.lag_s = lag_s
        self.voltage_v = voltage_v
        self.plugs: dict[int, Plug] = {}
        self.report_s = 1.0  # MeterValues period while `run` runs
        self.compliant = True  # False: draws what the vehicle wants, whatever the limit
        self.profile_log: list[tuple[float, InstalledProfile]] = []  # (monotonic, profile)

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
        point_class = self.point_class()
        self.point = point_class(self.identity, RecordingConnection(self.ws, self.frames), self)
        self._task = asyncio.create_task(self._serve(), name=f"sim {self.identity}")
        return self

    def point_class(self) -> type[ChargePoint16] | type[ChargePoint201]:
        """The `ocpp` charge point class that answers calls (subclasses add handlers)."""
        return _Point16 if self.version == "1.6" else _Point201

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

    def clock(self) -> datetime:
        """Its own clock (skewed by its quirk): its schedules run on it."""
        return datetime.now(UTC) + timedelta(seconds=self.quirks.clock_skew_s)

    def now_iso(self) -> str:
        """Its own clock as OCPP timestamps give it."""
        return self.clock().isoformat(timespec="seconds").replace("+00:00", "Z")

    async def send_triggered(self, requested: str, connector_id: int | None) -> None:
        """Send what a TriggerMessage asked for (1.6 and 2.0.1 message names)."""
        connectors = [connector_id] if connector_id else sorted(set(self.plugs) | {1})
        for connector in connectors:
            plug = self.plugs.get(connector)
            if requested == "StatusNotification":
                await self.status(connector, "Charging" if plug else "Available")
            elif requested == "MeterValues":
                currents = list(self.currents(connector))
                register = round(plug.register_wh) if plug else 0
                await self.meter_values(
                    connector, currents, register, plug.transaction_id if plug else None
                )
            elif requested == "TransactionEvent" and plug is not None:
                await self.call(
                    call201.TransactionEvent(
                        event_type="Updated",
                        timestamp=self.now_iso(),
                        trigger_reason="Trigger",
                        seq_no=self._next_seq(),
                        transaction_info={
                            "transaction_id": str(plug.transaction_id),
                            "charging_state": "Charging" if plug.draw_a > 0 else "SuspendedEVSE",
                        },
                        evse={"id": connector, "connector_id": 1},
                        meter_value=[
                            {
                                "timestamp": self.now_iso(),
                                "sampled_value": self._sampled(
                                    list(self.currents(connector)), plug.register_wh
                                ),
                            }
                        ],
                    )
                )

    async def call(self, payload: Any) -> Any:
        """Send any ``ocpp`` call dataclass and return the result."""
        return await self.point.call(payload)

    async def boot(self, reason: str = "PowerUp") -> Any:
        """BootNotification with `firmware_version`; `reason` is 2.0.1's BootReasonEnumType."""
        if self.version == "1.6":
            return await self.call(
                call16.BootNotification(
                    charge_point_model=self.model,
                    charge_point_vendor=self.vendor,
                    firmware_version=self.firmware_version,
                )
            )
        return await self.call(
            call201.BootNotification(
                charging_station={
                    "model": self.model,
                    "vendor_name": self.vendor,
                    "firmware_version": self.firmware_version,
                },
                reason=reason,
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
                timestamp=self.now_iso(), connector_status=mapped, evse_id=connector, connector_id=1
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
        reports = self.quirks.reports
        if currents is not None and reports == "power_only":
            # DC chargers report their output: the AC input times the efficiency.
            watts = sum(currents) * self.voltage_v * (self.quirks.dc_efficiency or 1.0)
            values.append(
                {"value": f"{watts:.0f}", "measurand": "Power.Active.Import", "unit": "W"}
            )
        elif currents is not None and reports == "phaseless":
            values.append(
                {"value": f"{max(currents):.1f}", "measurand": "Current.Import", "unit": "A"}
            )
        elif reports in ("per_phase", "l1_only"):
            shown = (currents or [])[:1] if reports == "l1_only" else currents or []
            for phase, amps in zip(("L1", "L2", "L3"), shown, strict=False):
                values.append(
                    {
                        "value": f"{amps:.1f}",
                        "measurand": "Current.Import",
                        "phase": phase,
                        "unit": "A",
                    }
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
                    connector_id=connector,
                    id_tag=tag,
                    meter_start=meter_start_wh,
                    timestamp=self.now_iso(),
                )
            )
        self._seq = 0
        return await self.call(
            call201.TransactionEvent(
                event_type="Started",
                timestamp=self.now_iso(),
                trigger_reason="Authorized",
                seq_no=self._next_seq(),
                transaction_info={"transaction_id": transaction_id or "tx"},
                id_token={"id_token": tag, "type": "ISO14443"},
                evse={"id": connector, "connector_id": 1},
                meter_value=[
                    {
                        "timestamp": self.now_iso(),
                        "sampled_value": self._sampled(None, meter_start_wh),
                    }
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
        sample = {"timestamp": self.now_iso(), "sampled_value": self._sampled(currents, energy_wh)}
        if self.version == "1.6":
            return await self.call(
                call16.MeterValues(
                    connector_id=connector, meter_value=[sample], transaction_id=transaction_id
                )
            )  # type: ignore[arg-type]
        return await self.call(
            call201.TransactionEvent(
                event_type="Updated",
                timestamp=self.now_iso(),
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
                    timestamp=self.now_iso(),
                    transaction_id=int(transaction_id),
                    reason=reason,
                )
            )
        return await self.call(
            call201.TransactionEvent(
                event_type="Ended",
                timestamp=self.now_iso(),
                trigger_reason="StopAuthorized",
                seq_no=self._next_seq(),
                transaction_info={"transaction_id": str(transaction_id), "stopped_reason": reason},
                meter_value=[
                    {
                        "timestamp": self.now_iso(),
                        "sampled_value": self._sampled(None, meter_stop_wh),
                    }
                ],
            )
        )

    # Profiles, as the charger stores them.

    def install(self, connector_id: int, profile: dict[str, Any]) -> None:
        """Store a profile received in SetChargingProfile (snake_case from the library)."""
        ceiling = self.quirks.max_stack_level
        if ceiling is not None and int(profile.get("stack_level", 0)) > ceiling:
            return  # "ignore": Accepted, and nothing happens
        if connector_id > 0 and self.quirks.ignores_connector_profiles:
            return  # Accepted, and only the station-wide profiles count
        before = {c: self.limit_a(c) for c in self.plugs}
        camel = snake_to_camel_case(profile)
        installed = InstalledProfile(connector_id, camel, datetime.now(UTC))
        self.handled.profiles[installed.profile_id] = installed
        self.profile_log.append((time.monotonic(), installed))
        if self.quirks.ignores_limit_after_zero:
            # go-e: the profile that lifts a pause is ignored (it runs without a limit);
            # the next profile is applied again.
            for c, plug in self.plugs.items():
                if plug.unlimited:
                    plug.unlimited = False
                elif before[c] < 6.0 <= self.limit_a(c):
                    plug.unlimited = True

    def clear(
        self,
        profile_id: int | None,
        connector_id: int | None,
        purpose: str | None,
        stack_level: int | None,
    ) -> None:
        """ClearChargingProfile: every profile matching all the criteria given."""
        for installed in list(self.handled.profiles.values()):
            if (
                (profile_id is None or installed.profile_id == profile_id)
                and (connector_id is None or installed.connector_id == connector_id)
                and (purpose is None or installed.purpose == purpose)
                and (stack_level is None or installed.stack_level == stack_level)
            ):
                del self.handled.profiles[installed.profile_id]

    def limit_a(self, connector_id: int, at: datetime | None = None) -> float:
        """The composite limit on a connector now (the charger's maximum when none)."""
        plug = self.plugs.get(connector_id)
        limit = composite_limit_a(
            self.handled.profiles.values(),
            connector_id,
            at or self.clock(),
            transaction_id=plug.transaction_id if plug else None,
            transaction_start=plug.started_at if plug else None,
            voltage_v=self.voltage_v,
        )
        if limit is not None and self.quirks.dc_efficiency:
            # A DC charger's limit (in W) is on its output: its AC input is more by 1/η.
            limit /= self.quirks.dc_efficiency
        return self.max_current_a if limit is None else min(limit, self.max_current_a)

    # Vehicles.

    async def plug_in(self, connector_id: int, ev: SimEv) -> Plug:
        """A vehicle arrives: Preparing, a transaction, Charging."""
        await self.status(connector_id, "Preparing")
        own_id = f"{self.identity}-{connector_id}-{datetime.now(UTC).timestamp():.3f}"[-36:]
        result = await self.start_transaction(connector_id, ev.tag, 0, transaction_id=own_id)
        # 1.6: the CSMS (or sitectl, offline) assigns the id; 2.0.1: the charger's own.
        transaction_id = getattr(result, "transaction_id", None) or own_id
        plug = Plug(ev, transaction_id, datetime.now(UTC))
        self.plugs[connector_id] = plug
        await self.status(connector_id, "Charging")
        return plug

    async def unplug(self, connector_id: int) -> None:
        """The vehicle leaves: the transaction stops."""
        plug = self.plugs.pop(connector_id)
        await self.stop_transaction(plug.transaction_id, round(plug.register_wh))
        await self.status(connector_id, "Available")

    def step(self, dt_s: float, energy_factor: float = 1.0) -> None:
        """Advance the vehicles by `dt_s`: follow the limits with a first-order lag."""
        now = self.clock()
        for connector_id, plug in self.plugs.items():
            ev = plug.ev
            full = plug.register_wh / 1000 >= ev.energy_wanted_kwh
            limit = self.limit_a(connector_id, now)
            if plug.unlimited:
                limit = self.max_current_a
            target = min(ev.max_a, self.max_current_a)
            if self.compliant and not self.quirks.ignores_limits:
                # IEC 61851: below 6 A the vehicle cannot charge: it pauses.
                target = 0.0 if limit < 6.0 else min(target, limit)
            if full:
                target = 0.0
            change = (target - plug.draw_a) * (1 - math.exp(-dt_s / self.lag_s))
            if self.quirks.ramp_a_per_s is not None:
                most = self.quirks.ramp_a_per_s * dt_s
                change = max(-most, min(most, change))
            plug.draw_a += change
            if plug.draw_a < 0.05:
                plug.draw_a = 0.0
            plug.register_wh += (
                plug.draw_a * self.voltage_v * ev.phases * dt_s / 3600 * energy_factor
            )

    def currents(self, connector_id: int) -> tuple[float, float, float]:
        """The current on the charger's L1, L2, L3 for one connector (single-phase: L1)."""
        plug = self.plugs.get(connector_id)
        if plug is None:
            return (0.0, 0.0, 0.0)
        if plug.ev.phases == 1:
            return (plug.draw_a, 0.0, 0.0)
        return (plug.draw_a, plug.draw_a, plug.draw_a)

    def total_currents(self) -> tuple[float, float, float]:
        """The charger's draw on its own L1, L2, L3."""
        totals = [0.0, 0.0, 0.0]
        for connector_id in self.plugs:
            for phase, amps in enumerate(self.currents(connector_id)):
                totals[phase] += amps
        return (totals[0], totals[1], totals[2])

    async def report(self) -> None:
        """Send MeterValues for every plugged-in vehicle (nothing while its stack is mute)."""
        if self.quirks.mute:
            return
        for connector_id, plug in list(self.plugs.items()):
            await self.meter_values(
                connector_id,
                list(self.currents(connector_id)),
                round(plug.register_wh),
                plug.transaction_id,
            )

    async def run(
        self, tick_s: float = 0.2, report_s: float = 2.0, energy_factor: float = 1.0
    ) -> None:
        """Simulate until cancelled: step the vehicles, report meter values.

        ``self.report_s`` holds the report period and may be changed while it runs.
        """
        self.report_s = report_s
        loop = asyncio.get_running_loop()
        last = reported = loop.time()
        while True:
            await asyncio.sleep(tick_s)
            now = loop.time()
            self.step(now - last, energy_factor)
            last = now
            # Against the period now in force: a shorter one (ChangeConfiguration) counts at once.
            if now >= reported + self.report_s and self.plugs:
                reported = now
                with contextlib.suppress(Exception):
                    await self.report()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq
