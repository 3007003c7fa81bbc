"""Make every charger report what it draws often enough to be believed (issue #16).

A draw older than ``control.ev_measurement_max_age_s`` is not trusted, and an untrusted draw
cannot be taken off a circuit meter's reading: the vehicle then counts as building load, and
the vehicles under that meter are held back (after a sitectl restart every charger's draw is
old, and many chargers report once a minute or less). So at every connection, once the charger
may be called (the capability probe's gate), sitectl reads the charger's transaction sampling
interval and lowers it to ``ocpp.meter_values_interval_s`` when it is longer or unset:

- 1.6: ``GetConfiguration`` / ``ChangeConfiguration`` of ``MeterValueSampleInterval``
  (1.6 §9.1.18, seconds, 0 = no sampling);
- 2.0.1: ``GetVariables`` / ``SetVariables`` of ``SampledDataCtrlr.TxUpdatedInterval``
  (2.0.1 part 2, appendices).

Only ever lowered, never raised (a CSMS that wants more gets it). A charger that refuses keeps
its interval; when that is longer than the draws are trusted for, the info alarm
``meter_values_slow`` says so. What was found and done is kept in the charger's capabilities
record under ``sampling`` (API).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sitectl.config import Config
from sitectl.state import Severity, SiteState

__all__ = ["SamplingSetup"]

log = logging.getLogger(__name__)

Caller = Callable[..., Awaitable[dict[str, Any]]]

_COMPONENT, _VARIABLE = "SampledDataCtrlr", "TxUpdatedInterval"
_KEY_16 = "MeterValueSampleInterval"


class SamplingSetup:
    """Lowers each charger's MeterValues interval to what the control loop needs.

    Args:
        config: the validated configuration (``ocpp.meter_values_interval_s``).
        state: the site state (versions; capabilities and alarms are written).
        call: sends one of sitectl's calls: ``call(identity, action, payload, timeout)``.
        call_timeout_s: how long to wait for each answer.
    """

    def __init__(
        self, config: Config, state: SiteState, call: Caller, call_timeout_s: float = 10.0
    ) -> None:
        self.wanted = config.ocpp.meter_values_interval_s
        self.trusted_s = config.control.ev_measurement_max_age_s
        self.state = state
        self.call = call
        self.call_timeout_s = call_timeout_s

    async def ensure(self, identity: str) -> dict[str, Any] | None:
        """Read and, if needed, lower one charger's interval; returns what was found and done."""
        if not self.wanted:
            return None
        charger = self.state.chargers[identity]
        try:
            if charger.ocpp_version == "2.0.1":
                found = await self._ensure_201(identity)
            else:
                found = await self._ensure_16(identity)
        except Exception as exc:  # not answered, an error answer: this charger only
            log.info("%s: MeterValues interval not set: %s", identity, exc)
            found = {"was": None, "status": f"not answered: {type(exc).__name__}"}
        found["wanted_s"] = self.wanted
        charger.capabilities = {**charger.capabilities, "sampling": found}
        interval = found.get("now")
        if isinstance(interval, int) and 0 < interval <= self.trusted_s / 2:
            self.state.clear_alarm("meter_values_slow", identity)
        else:
            shown = "unknown" if interval is None else f"{interval} s"
            self.state.raise_alarm(
                "meter_values_slow",
                identity,
                Severity.INFO,
                f"it reports its draw every {shown} (asked for {self.wanted} s: "
                f"{found['status']}); a draw is trusted for {self.trusted_s:g} s, so between "
                "reports its vehicle counts as building load",
            )
        return found

    async def _ensure_16(self, identity: str) -> dict[str, Any]:
        answer = await self.call(
            identity, "GetConfiguration", {"key": [_KEY_16]}, self.call_timeout_s
        )
        was = None
        for item in answer.get("configurationKey") or ():
            if isinstance(item, dict) and item.get("key") == _KEY_16:
                was = _seconds(item.get("value"))
        if was is not None and 0 < was <= self.wanted:
            return {"was": was, "now": was, "status": "kept"}
        answer = await self.call(
            identity,
            "ChangeConfiguration",
            {"key": _KEY_16, "value": str(self.wanted)},
            self.call_timeout_s,
        )
        status = str(answer.get("status"))
        return self._result(identity, was, status, status in ("Accepted", "RebootRequired"))

    async def _ensure_201(self, identity: str) -> dict[str, Any]:
        variable = {"component": {"name": _COMPONENT}, "variable": {"name": _VARIABLE}}
        answer = await self.call(
            identity, "GetVariables", {"getVariableData": [variable]}, self.call_timeout_s
        )
        was = None
        for item in answer.get("getVariableResult") or ():
            if isinstance(item, dict) and item.get("attributeStatus") == "Accepted":
                was = _seconds(item.get("attributeValue"))
        if was is not None and 0 < was <= self.wanted:
            return {"was": was, "now": was, "status": "kept"}
        answer = await self.call(
            identity,
            "SetVariables",
            {"setVariableData": [{**variable, "attributeValue": str(self.wanted)}]},
            self.call_timeout_s,
        )
        results = answer.get("setVariableResult") or [{}]
        status = str(results[0].get("attributeStatus")) if isinstance(results[0], dict) else "?"
        return self._result(identity, was, status, status in ("Accepted", "RebootRequired"))

    def _result(self, identity: str, was: int | None, status: str, taken: bool) -> dict[str, Any]:
        if taken:
            log.info(
                "%s: MeterValues interval %s -> %d s (%s)",
                identity,
                "unset" if was is None else f"{was} s",
                self.wanted,
                status,
            )
        else:
            log.warning("%s: MeterValues interval %s kept: %s", identity, was, status)
        return {"was": was, "now": self.wanted if taken else was, "status": status}


def _seconds(value: Any) -> int | None:
    try:
        return int(float(str(value)))
    except ValueError:
        return None
