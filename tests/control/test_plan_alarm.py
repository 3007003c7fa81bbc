"""The ``departure_short`` alarm through the real control loop: a simulated charger on a real
socket, needs set by the same command the cloud sends, the LP's plan read every cycle."""

from __future__ import annotations

import re
from datetime import timedelta

from sitectl.control.plans import ALARM_AFTER_CYCLES, ALARM_CODE
from sitectl.sim.charger import SimEv
from sitectl.uplink.commands import handle_command
from tests.control.conftest import rig_config
from tests.helpers import wait_for

ONE = """\
- {id: A, ocpp_version: "1.6"}
"""
KEY = (ALARM_CODE, "A/1")


def status(rig) -> str | None:
    plan = rig.state.control.sessions.get("A/1")
    return plan.forecast.status if plan is not None and plan.forecast is not None else None


def needs(rig, energy_kwh: float, minutes: float) -> None:
    departure = rig.loop.wall_clock() + timedelta(minutes=minutes)
    reply = handle_command(
        rig.state,
        rig.config,
        "session_needs",
        {
            "charger": "A",
            "connector": 1,
            "energy_kwh": energy_kwh,
            "departure": departure.isoformat(),
        },
    )
    assert reply["ok"], reply


async def test_a_vehicle_that_will_be_short_is_named_ahead_and_cleared(tmp_path, make_rig) -> None:
    rig = await make_rig(rig_config(tmp_path, ONE), {"feeder": lambda t: (10.0,) * 3})
    await rig.depot.plug_in("A", SimEv(max_a=32))
    await wait_for(lambda: status(rig) is not None, timeout=10, message="a plan for A/1")
    assert status(rig) == "need_unknown"  # no need stated yet
    # 60 kWh in 30 minutes at 32 A on three phases (22 kW): about 49 kWh short.
    needs(rig, 60.0, 30)
    await wait_for(
        lambda: status(rig) == "short", timeout=10, message="the plan to show the shortfall"
    )
    assert KEY not in rig.state.alarms  # not at the first short cycle
    await rig.cycles(ALARM_AFTER_CYCLES)
    await wait_for(lambda: KEY in rig.state.alarms, timeout=10, message="departure_short")
    alarm = rig.state.alarms[KEY]
    assert alarm.severity == "warning"
    plan = rig.state.control.sessions["A/1"]
    assert 40 < plan.forecast.shortfall_kwh < 55, plan.forecast
    named = float(re.search(r"leaves it ([0-9.]+) kWh short", alarm.text).group(1))
    assert abs(named - plan.forecast.shortfall_kwh) < 2.0, (alarm.text, plan.forecast)
    assert "ready about" in alarm.text and "min late" in alarm.text
    assert plan.forecast.ready_at > plan.departure
    # A need it can meet: the alarm clears, after as many cycles.
    needs(rig, 5.0, 30)
    await wait_for(lambda: status(rig) == "on_time", timeout=10, message="the plan to recover")
    await wait_for(lambda: KEY not in rig.state.alarms, timeout=10, message="the alarm to clear")
    plan = rig.state.control.sessions["A/1"]
    assert plan.forecast.ready_at <= plan.departure
    # Short again, then the vehicle leaves: cleared at once.
    needs(rig, 60.0, 30)
    await wait_for(lambda: KEY in rig.state.alarms, timeout=10, message="raised again")
    await rig.depot.unplug("A")
    await wait_for(
        lambda: KEY not in rig.state.alarms, timeout=10, message="cleared at the session's end"
    )
