"""``GET /api/sessions/{id}/plan`` and ``/api/plans`` on the real HTTP server, with a plan the
real LP made and `PlanWatch` read out."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from optimizer.lp import solve
from optimizer.problem import Node, Problem, Session
from sitectl.control.plans import PlanWatch
from sitectl.state import SessionPlan
from tests.http.test_api import NOW, client, config, populated  # noqa: F401 (fixture)

STEPS_S = (900.0,) * 8 + (3600.0,) * 4


def planned(state, need_kwh: float, departure_h: float, limit_a: float = 100.0) -> None:
    """One cycle's worth: the LP plans CP1/1 (12.5 kWh delivered) and PlanWatch reads it."""
    seconds = departure_h * 3600
    ends = [sum(STEPS_S[: k + 1]) for k in range(len(STEPS_S))]
    step = next(k for k, end in enumerate(ends) if end >= seconds)
    share = (seconds - (ends[step - 1] if step else 0.0)) / STEPS_S[step]
    session = Session(
        "CP1/1",
        "site",
        "CP1/1",
        (0, 1, 2),
        6.0,
        32.0,
        need_kwh - 12.5,
        step + 1,
        last_step_share=share if step else 1.0,
    )
    problem = Problem((Node("site", None, (limit_a,) * 3),), (session,), len(STEPS_S), STEPS_S)
    departure = NOW + timedelta(hours=departure_h)
    state.control.sessions = {
        "CP1/1": SessionPlan(departure, "command", need_kwh, "command", True, 0.0)
    }
    PlanWatch(state, ZoneInfo("UTC")).update(
        problem, solve(problem, budget_s=10.0), NOW, {"CP1/1": ("CP1", 1)}, {}
    )


async def test_a_session_plan_step_by_step(client) -> None:  # noqa: F811
    cfg = config()
    state = populated(cfg)
    planned(state, need_kwh=40.0, departure_h=5.0)  # 27.5 kWh more: about 1.25 h at 32 A
    c = await client(cfg, state)
    response = await c.get("/api/sessions/CP1/7/plan")
    assert response.status == 200
    plan = await response.json()
    assert (plan["session_id"], plan["charger"], plan["connector"]) == ("CP1/7", "CP1", 1)
    assert plan["plan_status"] == "on_time" and plan["shortfall_kwh"] == 0.0
    assert plan["remaining_kwh"] == 27.5 and plan["delivered_kwh"] == 12.5
    assert plan["planned_kwh"] == 27.5
    assert len(plan["steps"]) == 12 and plan["phases"] == 3
    assert plan["steps"][8]["duration_s"] == 3600.0
    assert plan["steps"][8]["start"].startswith((NOW + timedelta(hours=2)).strftime("%Y-%m-%dT%H"))
    # Every step's power is its current on three phases at 230 V.
    for step in plan["steps"]:
        assert abs(step["power_kw"] - step["current_a"] * 3 * 0.23) < 0.05
    assert plan["ready_at"] is not None and plan["ready_at"] < plan["departure"]
    # The same brief in the charger view.
    charger = await (await c.get("/api/chargers/CP1")).json()
    brief = charger["connectors"][0]["plan"]
    assert brief["ready_at"] == plan["ready_at"] and brief["plan_status"] == "on_time"


async def test_a_short_plan_says_by_how_much_and_how_late(client) -> None:  # noqa: F811
    cfg = config()
    state = populated(cfg)
    planned(state, need_kwh=40.0, departure_h=0.5, limit_a=16.0)  # 16 A for 30 min: 5.5 kWh
    c = await client(cfg, state)
    plan = await (await c.get("/api/sessions/CP1/7/plan")).json()
    assert plan["plan_status"] == "short"
    assert abs(plan["shortfall_kwh"] - (27.5 - 16 * 3 * 0.23 * 0.5)) < 0.05
    assert plan["late_rate"] == "planned" and plan["late_min"] > 60
    everything = await (await c.get("/api/plans")).json()
    assert [p["session_id"] for p in everything] == ["CP1/7"]
    assert everything[0]["shortfall_kwh"] == plan["shortfall_kwh"]


async def test_unknown_sessions_and_sessions_without_a_plan_are_404(client) -> None:  # noqa: F811
    c = await client()
    missing = await c.get("/api/sessions/CP1/99/plan")
    assert missing.status == 404 and (await missing.json())["field"] == "session_id"
    c.sitectl.state.control.sessions.clear()
    assert (await c.get("/api/sessions/CP1/7/plan")).status == 404
    assert await (await c.get("/api/plans")).json() == []


async def test_an_unknown_need_has_no_shortfall(client) -> None:  # noqa: F811
    c = await client()  # the populated plan: default need, not capped
    plan = await (await c.get("/api/sessions/CP1/7/plan")).json()
    assert plan["plan_status"] == "need_unknown"
    assert plan["ready_at"] is None and plan["shortfall_kwh"] is None
    assert plan["planned_kwh"] == 27.6 and "until the vehicle stops" in plan["reason"]
