"""The local JSON API, metrics and dashboard page, with aiohttp's test client."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sitectl.config import Config
from sitectl.http.server import HttpServer
from sitectl.sessions import SESSIONS_MIGRATION, SessionLog
from sitectl.state import (
    CircuitStatus,
    PlanForecast,
    PlanStep,
    SessionPlan,
    SessionState,
    Severity,
    SiteState,
)
from sitectl.store import MIGRATIONS, Store

TOKEN = "http-token-0123456789"


def config(open_reads: bool = True, token: str | None = TOKEN) -> Config:
    return Config.model_validate(
        {
            "site": {
                "id": "api",
                "name": "API depot",
                "limit_kw": 200,
                "phase_limit_a": 300,
                "meter": "grid-meter",
                "non_ev_max_a": 40,
            },
            "circuits": [{"id": "feeder", "limit_a": 200}],
            "chargers": [
                {"id": "CP1", "circuit": "feeder", "max_current_a": 32, "password": "x" * 16}
            ],
            "devices": [{"name": "grid-meter", "profile": "eastron-sdm630", "host": "h"}],
            "http": {"open_reads": open_reads, "token": token},
            "mqtt": {"enabled": False},
        }
    )


#: The injected clock of the state (never compared with the real one).
NOW = datetime(2026, 11, 27, 3, tzinfo=UTC)


def populated(cfg: Config) -> SiteState:
    state = SiteState(cfg, clock=lambda: NOW)
    state.control.cycles = 3
    state.control.last_solve_s = 0.012
    state.control.method = "lp"
    state.control.circuits["grid"] = CircuitStatus(
        (300.0,) * 3, (120.0, 110.0, 100.0), (40.0,) * 3, (150.0,) * 3, "measured"
    )
    state.control.circuits["feeder"] = CircuitStatus(
        (200.0,) * 3, None, (0.0,) * 3, (110.0,) * 3, "none"
    )
    state.readings["grid-meter"] = SimpleNamespace(ok=True, power_total_kw=75.5)
    charger = state.chargers["CP1"]
    charger.connected = True
    charger.limit_a = 16.0
    connector = charger.connectors[1]
    connector.status = "Charging"
    connector.current_a = (15.9, 16.0, 15.8)
    connector.session = SessionState(
        "CP1/7", 1, datetime(2026, 11, 27, 2, tzinfo=UTC), transaction_id="7", energy_wh=12_500
    )
    charger.recent_frames.append(
        (datetime(2026, 11, 27, 3, tzinfo=UTC), "charger", "in", '[2,"1","Heartbeat",{}]')
    )
    # No stated need: planned with the default need, not capped by it.
    steps = tuple(PlanStep(NOW + timedelta(minutes=15 * k), 900.0, 16.04, 11.07) for k in range(10))
    forecast = PlanForecast(
        "need_unknown", "no stated need: it charges until the vehicle stops", 3, steps, 27.6, None
    )
    state.control.sessions["CP1/1"] = SessionPlan(
        NOW + timedelta(hours=2, minutes=30),
        "fleet",
        40.0,
        "default",
        False,
        16.04,
        forecast=forecast,
        delivered_kwh=12.5,
        planned_at=NOW,
    )
    state.raise_alarm("meter_failed", "feeder-meter", Severity.WARNING, "no good reading")
    return state


@pytest.fixture
async def client(tmp_path):
    made = []

    async def make(
        cfg: Config | None = None, state: SiteState | None = None, **kwargs
    ) -> TestClient:
        cfg = cfg or config()
        state = state or populated(cfg)
        store = Store(
            tmp_path / f"s{len(made)}.sqlite", migrations=(*MIGRATIONS, SESSIONS_MIGRATION)
        )
        server = HttpServer(cfg, state, sessions=SessionLog(store, state), **kwargs)
        test_client = TestClient(TestServer(server.app))
        await test_client.start_server()
        made.append((test_client, store))
        test_client.sitectl = server  # type: ignore[attr-defined]
        return test_client

    yield make
    for test_client, store in made:
        await test_client.close()
        store.close()


async def test_site_reports_circuits_power_and_control(client) -> None:
    c = await client()
    response = await c.get("/api/site")
    assert response.status == 200
    site = await response.json()
    assert site["name"] == "API depot" and site["power_kw"] == 75.5
    grid = next(x for x in site["circuits"] if x["id"] == "grid")
    assert grid["measured_a"] == [120.0, 110.0, 100.0]
    assert grid["headroom_a"] == [150.0, 150.0, 150.0]
    assert next(x for x in site["circuits"] if x["id"] == "feeder")["parent"] == "grid"
    assert site["control"]["last_solve_ms"] == pytest.approx(12.0)
    assert site["alarms"] == 1


async def test_chargers_list_and_detail_with_frames(client) -> None:
    c = await client()
    chargers = await (await c.get("/api/chargers")).json()
    assert [x["id"] for x in chargers] == ["CP1"]
    session = chargers[0]["connectors"][0]["session"]
    assert session["session_id"] == "CP1/7" and session["energy_kwh"] == 12.5
    assert "recent_frames" not in chargers[0]
    detail = await (await c.get("/api/chargers/CP1")).json()
    assert detail["recent_frames"][0]["text"] == '[2,"1","Heartbeat",{}]'
    missing = await c.get("/api/chargers/NOPE")
    assert missing.status == 404
    assert await missing.json() == {"error": "no charger 'NOPE'", "field": "charger_id"}


async def test_sessions_come_from_the_store(client) -> None:
    c = await client()
    state = c.sitectl.state
    session = state.chargers["CP1"].connectors[1].session
    session.charger_id, session.ended_at = "CP1", datetime.now(UTC)
    state.ended_sessions.append(session)
    state.notify("session_ended", "CP1/7")
    rows = await (await c.get("/api/sessions", params={"since": "2026-01-01T00:00:00Z"})).json()
    assert [(r["session_id"], r["energy_wh"]) for r in rows] == [("CP1/7", 12500.0)]
    bad = await c.get("/api/sessions", params={"since": "yesterday"})
    assert bad.status == 400 and (await bad.json())["field"] == "since"


async def test_alarms_history_and_openapi(client) -> None:
    c = await client()
    alarms = await (await c.get("/api/alarms")).json()
    assert [(a["code"], a["severity"]) for a in alarms] == [("meter_failed", "warning")]
    c.sitectl.history.sample()
    history = await (await c.get("/api/history")).json()
    assert history["power_kw"] == [75.5] and history["limit_kw"] == [200.0]
    spec = await (await c.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.1") and "/api/site" in spec["paths"]


async def test_metrics_in_prometheus_text(client) -> None:
    c = await client(extra_metrics={"sitectl_journal_messages": ("Journal length", lambda: 7)})
    c.sitectl.state.control.solve_buckets[2] = 3
    c.sitectl.state.control.solve_s_total = 0.036
    text = await (await c.get("/metrics")).text()
    assert 'sitectl_circuit_current_amperes{circuit="grid",phase="L1"} 120.0' in text
    assert 'sitectl_circuit_limit_amperes{circuit="feeder",phase="L3"} 200.0' in text
    assert 'sitectl_charger_limit_amperes{charger="CP1"} 16.0' in text
    assert 'sitectl_solve_seconds_bucket{le="0.025"} 3.0' in text
    assert 'sitectl_meter_ok{device="grid-meter"} 1.0' in text
    assert "sitectl_journal_messages 7.0" in text


async def test_dashboard_page_and_static_files(client) -> None:
    c = await client()
    page = await (await c.get("/")).text()
    assert "dashboard.js" in page and "uPlot" in page
    assert (await c.get("/static/dashboard.js")).status == 200
    assert (await c.get("/static/vendor/uPlot.LICENSE")).status == 200
    assert (await c.get("/static/../config.py")).status == 404


async def test_reads_can_be_closed_and_writes_need_the_token(client) -> None:
    closed = await client(config(open_reads=False))
    assert (await closed.get("/api/site")).status == 401
    ok = await closed.get("/api/site", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200
    assert (await closed.get("/")).status == 200  # the page itself; its data needs the token
    wrong = await closed.post(
        "/api/overrides",
        json={"node": "grid", "limit_a": 100},
        headers={"Authorization": "Bearer nope"},
    )
    assert wrong.status == 401 and (await wrong.json())["error"].startswith("a valid bearer")
    untokened = await client(config(token=None))
    refused = await untokened.post("/api/overrides", json={"node": "grid"})
    assert refused.status == 403
    assert "no http.token is configured" in (await refused.json())["error"]


async def test_writes_refuse_bad_bodies(client) -> None:
    c = await client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for body in ("not json", "[1, 2]", ""):
        response = await c.post("/api/overrides", data=body, headers=headers)
        assert response.status == 400
        assert (await response.json())["error"] == "the body must be a JSON object"
    missing = await c.post("/api/sessions/CP9/1/needs", json={"energy_kwh": 5}, headers=headers)
    assert missing.status == 404 and (await missing.json())["field"] == "session_id"


def commands_for(state: SiteState, cfg: Config):
    from sitectl.uplink.commands import handle_command

    return lambda name, payload: handle_command(state, cfg, name, payload)


async def test_override_write_uses_the_shared_command_validation(client) -> None:
    cfg = config()
    state = populated(cfg)
    c = await client(cfg, state, commands=commands_for(state, cfg))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ok = await c.post(
        "/api/overrides",
        headers=headers,
        json={"node": "feeder", "limit_a": [150, 150, 120], "expires_in_s": 600},
    )
    assert ok.status == 200 and (await ok.json())["ok"] is True
    assert state.overrides["feeder"].limit_a == (150.0, 150.0, 120.0)
    above = await c.post(
        "/api/overrides",
        headers=headers,
        json={"node": "feeder", "limit_a": 250, "expires_in_s": 600},
    )
    assert above.status == 422
    body = await above.json()
    assert body["field"] == "limit_a" and "rating" in body["error"]
    unknown = await c.post(
        "/api/overrides",
        headers=headers,
        json={"node": "feeder-9", "limit_a": 10, "expires_in_s": 60},
    )
    assert unknown.status == 422 and (await unknown.json())["field"] == "node"
    cleared = await c.post(
        "/api/overrides", headers=headers, json={"node": "feeder", "clear": True}
    )
    assert cleared.status == 200 and "feeder" not in state.overrides


async def test_session_needs_write(client) -> None:
    cfg = config()
    state = populated(cfg)
    c = await client(cfg, state, commands=commands_for(state, cfg))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await c.post(
        "/api/sessions/CP1/7/needs",
        headers=headers,
        # 05:30 in UTC+1 on the day after the state's clock, whatever the real date is.
        json={"energy_kwh": 55, "departure": "2026-11-28T05:30:00+01:00"},
    )
    assert response.status == 200, await response.text()
    session = state.chargers["CP1"].connectors[1].session
    assert session.energy_wanted_kwh == 55
    assert session.departure == datetime(2026, 11, 28, 4, 30, tzinfo=UTC)
    past = await c.post(
        "/api/sessions/CP1/7/needs",
        headers=headers,
        json={"departure": (NOW - timedelta(minutes=1)).isoformat()},
    )
    assert past.status == 422 and (await past.json())["field"] == "departure"
    bad = await c.post("/api/sessions/CP1/7/needs", headers=headers, json={"energy_kwh": -1})
    assert bad.status == 422 and (await bad.json())["field"] == "energy_kwh"


def test_committed_openapi_document_is_current() -> None:
    import json
    from pathlib import Path

    from sitectl.http.openapi import openapi_document

    committed = Path(__file__).resolve().parents[2] / "configs" / "openapi.json"
    assert json.loads(committed.read_text()) == openapi_document(), (
        "configs/openapi.json is stale: run `sitectl openapi > configs/openapi.json`"
    )


def _numbers(value: object, path: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON document, with its path (``circuits.0.limit_a.1``)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [(path, value)]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _numbers(v, f"{path}.{k}".lstrip("."))]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _numbers(v, f"{path}.{i}".lstrip("."))]
    return []


async def test_numbers_are_rounded_to_a_sensible_precision(client) -> None:
    cfg = config()
    state = populated(cfg)
    state.control.last_solve_s = 0.0123456
    state.control.circuits["grid"] = CircuitStatus(
        (300.0,) * 3, (120.04999, 110.123, -0.0004), (40.0,) * 3, (150.06, 1 / 3, 2 / 3), "measured"
    )
    state.readings["grid-meter"] = SimpleNamespace(ok=True, power_total_kw=75.123456)
    charger = state.chargers["CP1"]
    charger.limit_a = 16.04321
    connector = charger.connectors[1]
    connector.current_a = (15.94321, None, 15.75)
    connector.power_kw = 11.006789
    connector.soc_percent = 42.4242
    connector.session.energy_wh = 12_345.678
    connector.session.energy_wanted_kwh = 55.556
    c = await client(cfg, state)
    c.sitectl.history.sample()
    text = await (await c.get("/api/site")).text()
    assert "-0.0" not in text
    site = json.loads(text)
    grid = next(x for x in site["circuits"] if x["id"] == "grid")
    assert grid["measured_a"] == [120.0, 110.1, 0.0]
    assert grid["planned_a"] == [150.1, 0.3, 0.7]
    assert grid["headroom_a"] == [149.9, 299.7, 299.3]
    assert site["power_kw"] == 75.12 and site["control"]["last_solve_ms"] == 12.3
    chargers = await (await c.get("/api/chargers")).json()
    one = chargers[0]["connectors"][0]
    assert chargers[0]["limit_a"] == 16.0
    assert one["current_a"] == [15.9, None, 15.8] and one["power_kw"] == 11.01
    assert one["soc_percent"] == 42.4
    assert one["session"]["energy_kwh"] == 12.35 and one["session"]["energy_wanted_kwh"] == 55.56
    history = await (await c.get("/api/history")).json()
    assert history["power_kw"] == [75.12]
    # And nowhere in the API more than two decimals.
    for path in ("/api/site", "/api/chargers", "/api/chargers/CP1", "/api/history"):
        body = await (await c.get(path)).json()
        long = [(p, n) for p, n in _numbers(body) if round(n, 2) != n]
        assert long == [], f"{path}: {long}"


async def test_connectors_have_one_wording_and_keep_the_raw_status(client) -> None:
    cfg = config()
    state = populated(cfg)
    c = await client(cfg, state)
    one = (await (await c.get("/api/chargers")).json())[0]["connectors"][0]
    assert (one["status"], one["state"], one["state_detail"]) == ("Charging", "charging", None)
    # The same situation from a 2.0.1 charger: "Occupied", a session and a fresh draw.
    connector = state.chargers["CP1"].connectors[1]
    connector.status, connector.current_mono = "Occupied", state.monotonic()
    one = (await (await c.get("/api/chargers")).json())[0]["connectors"][0]
    assert (one["status"], one["state"]) == ("Occupied", "charging")
    connector.current_a = (0.0, 0.0, 0.0)
    connector.offered_a, connector.offered_mono = 16.0, state.monotonic()
    one = (await (await c.get("/api/chargers/CP1")).json())["connectors"][0]
    assert (one["state"], one["state_detail"]) == ("paused", "by the vehicle")


async def test_connectors_show_what_the_control_loop_assumed_and_gave(client) -> None:
    cfg = config()
    state = populated(cfg)
    c = await client(cfg, state)
    plan = (await (await c.get("/api/chargers")).json())[0]["connectors"][0]["plan"]
    assert plan == {
        "departure": "2026-11-27T05:30:00Z",
        "departure_source": "fleet",
        "need_kwh": 40.0,
        "need_source": "default",
        "capped": False,
        "dispatched_a": 16.0,
        # What the plan predicts: with no stated need, only the energy planned.
        "plan_status": "need_unknown",
        "ready_at": None,
        "shortfall_kwh": None,
        "late_min": None,
        "planned_kwh": 27.6,
        "limited_by": [],  # it gets what it could take
    }
    feeder = {
        "kind": "circuit",
        "node": "feeder",
        "phase": "L1",
        "unit": "A",
        "limit": 32.0,
        "measured": 31.04,
        "planned": 32.0,
        "headroom": 0.0,
        "shared_with": [{"session": "CP2/1", "current_a": 16.04}],
        "dual": 0.086337,
        "text": "feeder L1's limit holds it",
        "short": "feeder L1 at its limit 32 A, shared with 1 other",
        "step": 3,  # not in the view: only what LimitView declares goes out
    }
    state.control.sessions["CP1/1"] = SessionPlan(
        NOW + timedelta(hours=4), "command", 55.0 / 3, "command", True, 31.96, limited_by=(feeder,)
    )
    detail = await (await c.get("/api/chargers/CP1")).json()
    plan = detail["connectors"][0]["plan"]
    (why,) = plan["limited_by"]
    assert (why["kind"], why["node"], why["phase"], why["limit"]) == ("circuit", "feeder", "L1", 32)
    assert why["measured"] == 31.0
    assert why["shared_with"] == [{"session": "CP2/1", "current_a": 16.0}]
    assert why["short"] == feeder["short"] and why["dual"] == 0.086337 and "step" not in why
    assert plan["departure"] == "2026-11-27T07:00:00Z" and plan["departure_source"] == "command"
    assert (plan["need_kwh"], plan["need_source"], plan["capped"]) == (18.33, "command", True)
    assert plan["dispatched_a"] == 32.0
    state.control.sessions.clear()  # e.g. before the first cycle
    one = (await (await c.get("/api/chargers")).json())[0]["connectors"][0]
    assert one["plan"] is None


async def test_charger_detail_shows_its_capabilities_and_effective_quirks(client) -> None:
    c = await client()
    charger = c.sitectl.state.chargers["CP1"]
    detail = await (await c.get("/api/chargers/CP1")).json()
    assert detail["capabilities"] == {}  # not probed yet
    assert detail["quirks"]["name"] == "default" and detail["quirks"]["min_current_a"] == 6.0
    charger.vendor, charger.model = "ABB", "TAC-W22-T-R-0"
    charger.capabilities = {
        "values": {"ChargeProfileMaxStackLevel": "16"},
        "unknown": [],
        "not_supported": {},
        "complete": True,
    }
    detail = await (await c.get("/api/chargers/CP1")).json()
    assert detail["capabilities"]["values"] == {"ChargeProfileMaxStackLevel": "16"}
    assert detail["quirks"]["name"] == "abb-terra-ac"
    assert detail["quirks"]["max_stack_level"] == 0  # the file knows better than it says
    assert "https://github.com/evcc-io/evcc/issues/15493" in detail["quirks"]["sources"]


async def test_an_override_by_http_is_the_limit_source_operator_http(client) -> None:
    from sitectl.uplink.commands import handle_command

    cfg = config()
    state = populated(cfg)
    c = await client(
        cfg,
        state,
        commands=lambda name, payload: handle_command(state, cfg, name, payload, origin="http"),
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ok = await c.post(
        "/api/overrides",
        headers=headers,
        json={"node": "feeder", "limit_a": 90, "expires_in_s": 600},
    )
    body = await ok.json()  # the same answer as before the limit board
    assert ok.status == 200 and set(body) == {"ok", "command", "node", "limit_a", "expires_at"}
    (window,) = state.limits.in_force(NOW)
    assert (window.source, window.node, window.limit_a) == ("operator:http", "feeder", (90.0,) * 3)
    assert window.end == NOW + timedelta(seconds=600) and window.start == NOW
    site = await (await c.get("/api/site")).json()
    assert [(w["source"], w["node"], w["limit_a"]) for w in site["limits"]] == [
        ("operator:http", "feeder", [90.0, 90.0, 90.0])
    ]
    assert site["limits"][0]["end"] == (NOW + timedelta(seconds=600)).isoformat().replace(
        "+00:00", "Z"
    )
    assert [s["source"] for s in site["limit_sources"]] == ["operator:http"]
    cleared = await c.post(
        "/api/overrides", headers=headers, json={"node": "feeder", "clear": True}
    )
    assert cleared.status == 200 and state.limits.sources() == []


async def test_site_lists_limits_in_force_announced_and_sources_with_heartbeats(client) -> None:
    from sitectl.limits import GridLimit

    cfg = config()
    state = populated(cfg)
    now_window = GridLimit(
        "grid",
        "openadr:p1",
        NOW - timedelta(minutes=1),
        NOW + timedelta(hours=1),
        limit_kw=150.0,
        reason="capacity",
        ref="e1",
    )
    later = GridLimit("grid", "openadr:p1", NOW + timedelta(hours=2), limit_kw=100.0, hard=False)
    state.limits.publish("openadr:p1", [now_window, later], NOW, valid_until=NOW + timedelta(1))
    state.limits.publish("14a:relay", [], NOW - timedelta(minutes=5), valid_until=NOW)
    c = await client(cfg, state)
    site = await (await c.get("/api/site")).json()
    assert site["grid_limit_kw"] == 150.0 and site["limit_kw"] == 200.0
    (w,) = site["limits"]
    assert (w["source"], w["ref"], w["hard"], w["limit_kw"], w["reason"]) == (
        "openadr:p1",
        "e1",
        True,
        150.0,
        "capacity",
    )
    assert [(a["limit_kw"], a["hard"]) for a in site["limits_announced"]] == [(100.0, False)]
    sources = {s["source"]: s for s in site["limit_sources"]}
    assert sources["14a:relay"]["silent"] is True and sources["openadr:p1"]["silent"] is False
    assert sources["openadr:p1"]["windows"] == 2


async def test_limit_history_lists_interventions_and_refuses_bad_queries(client, tmp_path) -> None:
    from sitectl.control.limit_watch import LIMIT_EVENTS_MIGRATION, LimitWatch
    from sitectl.limits import GridLimit

    cfg = config()
    state = populated(cfg)
    store = Store(tmp_path / "limits.sqlite", migrations=(*MIGRATIONS, LIMIT_EVENTS_MIGRATION))
    watch = LimitWatch(state, store)
    window = GridLimit("feeder", "14a:relay", NOW, limit_kw=42.0, reason="dimming", ref="in1")
    state.limits.publish("14a:relay", [window], NOW)
    watch.tick(NOW)
    state.limits.publish("14a:relay", [], NOW + timedelta(minutes=3))
    watch.tick(NOW + timedelta(minutes=3))
    c = await client(cfg, state, store=store)
    body = await (await c.get("/api/limits/history")).json()
    assert [e["action"] for e in body["events"]] == ["ended", "started"]
    first = body["events"][1]
    assert (first["source"], first["node"], first["limit_kw"], first["ref"]) == (
        "14a:relay",
        "feeder",
        42.0,
        "in1",
    )
    assert "dimming" in first["text"] and first["seq"] == 1
    since = (NOW + timedelta(minutes=1)).isoformat()
    recent = await (await c.get("/api/limits/history", params={"since": since})).json()
    assert [e["action"] for e in recent["events"]] == ["ended"]
    one = await (await c.get("/api/limits/history?limit=1")).json()
    assert len(one["events"]) == 1
    for query, field in (("limit=0", "limit"), ("limit=x", "limit"), ("since=yesterday", "since")):
        bad = await c.get(f"/api/limits/history?{query}")
        assert bad.status == 422 and (await bad.json())["field"] == field
    naive = await c.get(
        "/api/limits/history", params={"since": NOW.replace(tzinfo=None).isoformat()}
    )
    assert naive.status == 422
    store.close()
