"""Read what a charger declares about smart charging, once, when it first connects (issue #17).

What sitectl asks:

- 1.6: ``GetConfiguration`` of the keys below (1.6 §9.4, Smart Charging and Core keys);
- 2.0.1: ``GetVariables`` of the SmartChargingCtrlr and SampledDataCtrlr variables below
  (2.0.1 part 2, appendices: Referenced Components and Variables).

The answers are kept per charger in `ChargerState.capabilities` and in the store (meta key
``capabilities:<charger>``), shown by the API, and narrow its quirks
(`sitectl.quirks.effective_quirks`). The record::

    {"ocpp_version": "1.6", "vendor": …, "model": …, "firmware_version": …, "probed_at": ISO,
     "values": {"ChargeProfileMaxStackLevel": "8", "SmartChargingCtrlr.RateUnit": "A,W", …},
     "unknown": ["MaxChargingProfilesInstalled"],            # the charger does not know them
     "not_supported": {"GetConfiguration": "NotImplemented"}, # permanent answers
     "complete": true}

A charger is probed again only when it reports another vendor, model or firmware. A
NotImplemented or NotSupported answer is permanent: recorded and never asked again (issue #17:
a station got the same call 15 times in 23 s). A call that is not answered in time is not
recorded; the next connection asks again (once). Nothing is sent before the charger's boot is
accepted (real stations do not answer before), or before `grace_s` after a connection without
a new boot (a charger that booted with an earlier sitectl process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sitectl.ocpp.link import CallErrorResponse, CallFailed
from sitectl.state import Change, SiteState

__all__ = ["KEYS_16", "PERMANENT_ERRORS", "VARIABLES_201", "CapabilityProbe"]

log = logging.getLogger(__name__)

Caller = Callable[..., Awaitable[dict[str, Any]]]

#: 1.6 configuration keys read at first connection.
KEYS_16 = (
    "ChargeProfileMaxStackLevel",
    "ChargingScheduleAllowedChargingRateUnit",
    "ChargingScheduleMaxPeriods",
    "MaxChargingProfilesInstalled",
    "SupportedFeatureProfiles",
    "MeterValuesSampledData",
)

#: 2.0.1 (component, variable) pairs read at first connection.
VARIABLES_201 = (
    ("SmartChargingCtrlr", "Enabled"),
    ("SmartChargingCtrlr", "Available"),
    ("SmartChargingCtrlr", "RateUnit"),
    ("SmartChargingCtrlr", "ProfileStackLevel"),
    ("SmartChargingCtrlr", "PeriodsPerSchedule"),
    ("SmartChargingCtrlr", "LimitChangeSignificance"),
    ("SmartChargingCtrlr", "Phases3to1"),
    ("SampledDataCtrlr", "Enabled"),
    ("SampledDataCtrlr", "TxUpdatedMeasurands"),
    ("SampledDataCtrlr", "TxUpdatedInterval"),
)

#: CALLERROR codes that say the charger will never do it (1.6 §4.2.3, 2.0.1 part 4 §4.3).
PERMANENT_ERRORS = ("NotImplemented", "NotSupported")

_META_PREFIX = "capabilities:"


class CapabilityProbe:
    """Asks each charger once what it declares about smart charging and metering.

    Args:
        state: the site state (boots, connections; `ChargerState.capabilities` is written).
        call: sends one of sitectl's own calls: ``call(identity, action, payload, timeout)``.
        store: keeps the records across restarts (``get_meta``/``set_meta``); optional.
        call_timeout_s: how long to wait for each answer.
        grace_s: how long after a connection without a boot to wait before asking anyway.
        reconnect_grace_s: the same after a reconnect when this process saw it boot.
        sampling: lowers each charger's MeterValues interval at every connection, behind the
            same gate (`sitectl.ocpp.sampling.SamplingSetup`); optional.
    """

    name = "capability-probe"

    def __init__(
        self,
        state: SiteState,
        call: Caller,
        store: Any = None,
        call_timeout_s: float = 10.0,
        grace_s: float = 30.0,
        reconnect_grace_s: float = 5.0,
        sampling: Any = None,
    ) -> None:
        self.state = state
        self.call = call
        self.store = store
        self.call_timeout_s = call_timeout_s
        self.grace_s = grace_s
        self.reconnect_grace_s = reconnect_grace_s
        self.sampling = sampling
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        self._booted: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        for charger_id, charger in state.chargers.items():
            record = self._load(charger_id)
            if record is not None:
                charger.capabilities = record
        state.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        charger = self.state.chargers.get(change.subject)
        if charger is None:
            return
        if change.kind == "charger_connected":
            self._event(change.subject).clear()
            self._pending.put_nowait(change.subject)
        elif change.kind == "charger_booted" and charger.boot_accepted:
            self._event(change.subject).set()
            self._pending.put_nowait(change.subject)

    def _event(self, identity: str) -> asyncio.Event:
        return self._booted.setdefault(identity, asyncio.Event())

    async def run(self) -> None:
        """Probe chargers as they connect and boot; runs until cancelled."""
        try:
            while True:
                identity = await self._pending.get()
                running = self._tasks.get(identity)
                if running is not None and not running.done():
                    continue  # already waiting for (or asking) this charger
                self._tasks[identity] = asyncio.create_task(
                    self._when_ready(identity), name=f"probe {identity}"
                )
        finally:
            for task in self._tasks.values():
                task.cancel()

    async def _when_ready(self, identity: str) -> None:
        charger = self.state.chargers[identity]
        if not self._event(identity).is_set():
            # Wait for its boot, or ask after a grace: a short one on a reconnect after a boot
            # this process accepted, a longer one if it booted with an earlier sitectl process.
            grace = self.reconnect_grace_s if charger.boot_accepted else self.grace_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event(identity).wait(), grace)
        if not charger.connected:
            return
        try:
            if not self.known(identity):
                await self.probe(identity)
            if self.sampling is not None and charger.connected:
                await self.sampling.ensure(identity)  # at every connection: a CSMS may reset it
        except asyncio.CancelledError:
            raise
        except Exception:  # one charger's odd answer must not stop the others' probes
            log.exception("%s: capability probe failed", identity)

    def known(self, identity: str) -> bool:
        """Whether a complete record exists for what the charger now says it is."""
        charger = self.state.chargers[identity]
        record = charger.capabilities
        return bool(record.get("complete")) and all(
            record.get(key) == getattr(charger, key)
            for key in ("vendor", "model", "firmware_version")
            if getattr(charger, key) is not None
        )

    async def probe(self, identity: str) -> dict[str, Any]:
        """Ask one charger now; stores and returns the record."""
        charger = self.state.chargers[identity]
        record: dict[str, Any] = {
            "ocpp_version": charger.ocpp_version,
            "vendor": charger.vendor,
            "model": charger.model,
            "firmware_version": charger.firmware_version,
            "probed_at": self.state.clock().isoformat(),
            "values": {},
            "unknown": [],
            "not_supported": {},
            "complete": True,
        }
        if charger.ocpp_version == "2.0.1":
            await self._ask_201(identity, record)
        else:
            await self._ask_16(identity, record)
        charger.capabilities = record
        if record["complete"] and self.store is not None:
            self.store.set_meta(_META_PREFIX + identity, json.dumps(record, sort_keys=True))
        log.info(
            "%s: capabilities %s%s",
            identity,
            ", ".join(f"{k}={v}" for k, v in sorted(record["values"].items())) or "none declared",
            "".join(f"; {a} {c}" for a, c in record["not_supported"].items()),
        )
        self.state.notify("capabilities", identity)
        return record

    def record_not_supported(self, identity: str, action: str, code: str) -> None:
        """Note a permanent answer seen elsewhere (e.g. a SetChargingProfile NotImplemented)."""
        charger = self.state.chargers.get(identity)
        if charger is None or code not in PERMANENT_ERRORS:
            return
        record = dict(charger.capabilities) or {"values": {}, "unknown": [], "complete": False}
        record["not_supported"] = {**record.get("not_supported", {}), action: code}
        charger.capabilities = record
        if self.store is not None and record.get("complete"):
            self.store.set_meta(_META_PREFIX + identity, json.dumps(record, sort_keys=True))
        self.state.notify("capabilities", identity)

    # The two versions.

    async def _ask_16(self, identity: str, record: dict[str, Any]) -> None:
        answer = await self._call(identity, "GetConfiguration", {"key": list(KEYS_16)}, record)
        if answer is None:
            return
        for item in answer.get("configurationKey") or ():
            if isinstance(item, dict) and "key" in item and item.get("value") is not None:
                record["values"][str(item["key"])] = str(item["value"])
        # A key neither listed as known nor as unknown (some firmwares drop unknown keys).
        record["unknown"] = [k for k in KEYS_16 if k not in record["values"]]

    async def _ask_201(self, identity: str, record: dict[str, Any]) -> None:
        payload = {
            "getVariableData": [
                {"component": {"name": c}, "variable": {"name": v}} for c, v in VARIABLES_201
            ]
        }
        answer = await self._call(identity, "GetVariables", payload, record)
        if answer is None:
            return
        for item in answer.get("getVariableResult") or ():
            if not isinstance(item, dict):
                continue
            name = f"{item['component']['name']}.{item['variable']['name']}"
            if item.get("attributeStatus") == "Accepted" and "attributeValue" in item:
                record["values"][name] = str(item["attributeValue"])
        record["unknown"] = [
            f"{c}.{v}" for c, v in VARIABLES_201 if f"{c}.{v}" not in record["values"]
        ]

    async def _call(
        self, identity: str, action: str, payload: dict[str, Any], record: dict[str, Any]
    ) -> dict[str, Any] | None:
        try:
            return await self.call(identity, action, payload, self.call_timeout_s)
        except CallErrorResponse as exc:
            if exc.code in PERMANENT_ERRORS:
                record["not_supported"][action] = exc.code
                log.warning(
                    "%s: %s answered %s: recorded, not asked again", identity, action, exc.code
                )
            else:
                log.info("%s: %s failed: %s (recorded as nothing declared)", identity, action, exc)
            return None
        except (CallFailed, TimeoutError) as exc:
            record["complete"] = False  # asked again on the next connection
            log.info("%s: %s not answered: %s", identity, action, exc)
            return None

    def _load(self, identity: str) -> dict[str, Any] | None:
        if self.store is None:
            return None
        text = self.store.get_meta(_META_PREFIX + identity)
        if text is None:
            return None
        try:
            record = json.loads(text)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None
