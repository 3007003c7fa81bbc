"""Payload builders: every message validates against its committed JSON Schema; no id tag in
clear; topics; ``seq`` splicing; energy delivered today."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest

from sitectl.state import PlanForecast, PlanStep, SessionPlan, SessionState, SiteState
from sitectl.uplink.commands import command_schemas, handle_command
from sitectl.uplink.messages import (
    EnergyToday,
    Topics,
    alarm_body,
    charger_body,
    comparable,
    encode,
    iso,
    limit_event_body,
    session_body,
    status_body,
    summary_body,
    topic_segment,
    with_seq,
)
from tests.uplink.support import SECRET_TAG, depot_config, rich_state

SCHEMAS = Path(__file__).resolve().parents[2] / "sitectl" / "uplink" / "schemas"
NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
STATS = {
    "queued": 3,
    "queued_bytes": 900,
    "dropped_summaries": 1,
    "dropped_charger_states": 0,
    "thinned_summaries": 5,
    "rejected": 0,
}


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def wire(body: dict[str, Any], seq: int = 7) -> dict[str, Any]:
    """What the subscriber parses: the body as the outbox sends it."""
    return json.loads(with_seq(encode(body), seq))


@pytest.fixture
def config(tmp_path):
    return depot_config(tmp_path, "127.0.0.1", 1883)


def every_message(config, state: SiteState) -> list[tuple[str, dict[str, Any]]]:
    """(schema, wire payload) for everything the builders make from `state`."""
    out: list[tuple[str, dict[str, Any]]] = [
        ("status", wire(status_body(True, "0.1.0", NOW, NOW))),
        ("status", wire(status_body(False, "0.1.0", NOW, NOW, "shutdown"))),
        # The Last Will has no seq.
        ("status", json.loads(encode(status_body(False, "0.1.0", NOW, NOW, "connection lost")))),
        ("summary", wire(summary_body(state, config, NOW, 12.5, STATS))),
    ]
    for charger in state.chargers.values():
        out.append(("charger", wire(charger_body(charger, NOW, state.control.sessions))))
        for connector in charger.connectors.values():
            if connector.session is not None:
                out.append(("session", wire(session_body(connector.session, "started", NOW))))
    for session in state.ended_sessions:
        out.append(("session", wire(session_body(session, "stopped", NOW))))
    for alarm in state.alarms.values():
        out.append(("alarm", wire(alarm_body(alarm, raised=True, now=NOW))))
        out.append(("alarm", wire(alarm_body(alarm, raised=False, now=NOW))))
    for event in state.limit_events:
        out.append(("alarm", wire(limit_event_body(event, NOW))))
    return out


def test_every_payload_validates_against_its_schema(config) -> None:
    state = rich_state(config, NOW)
    messages = every_message(config, state)
    assert {kind for kind, _ in messages} == {"status", "summary", "charger", "session", "alarm"}
    for kind, payload in messages:
        errors = list(validator(kind).iter_errors(payload))
        assert not errors, f"{kind}: {[e.message for e in errors]}\n{payload}"


def test_an_empty_depot_validates_too(config) -> None:
    state = SiteState(config, clock=lambda: NOW)
    for kind, payload in every_message(config, state):
        assert not list(validator(kind).iter_errors(payload)), payload


def test_command_replies_validate(config) -> None:
    state = rich_state(config, NOW)
    check = validator("reply")
    replies = [
        handle_command(
            state, config, "override", {"node": "grid", "limit_a": 1, "expires_in_s": 9}
        ),
        handle_command(state, config, "override", b"{nope"),
        handle_command(state, config, "nope", None),
        handle_command(state, config, "republish", None, republish=lambda: {"chargers": 2}),
    ]
    for reply in replies:
        reply["ts"] = "2026-11-27T06:00:00.000Z"
        assert not list(check.iter_errors(reply)), reply


def test_command_schemas_are_committed_and_current() -> None:
    for name, schema in command_schemas().items():
        path = SCHEMAS / "commands" / f"{name}.json"
        assert path.exists(), f"missing {path}: run write_command_schemas()"
        assert json.loads(path.read_text()) == json.loads(json.dumps(schema)), (
            f"{path} is stale: python -c 'from sitectl.uplink.commands import "
            "write_command_schemas; write_command_schemas()'"
        )
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_id_tag_is_never_in_clear(config) -> None:
    state = rich_state(config, NOW)
    for _, payload in every_message(config, state):
        assert SECRET_TAG not in json.dumps(payload)
    started = session_body(state.chargers["CP1"].connectors[1].session, "started", NOW)
    assert len(started["id_tag_hash"]) == 16


def test_summary_content(config) -> None:
    state = rich_state(config, NOW)
    body = summary_body(state, config, NOW, 12.5, STATS)
    assert body["grid"] == {
        "meter": "grid-meter",
        "quality": "ok",
        "power_kw": 82.5,
        "current_a": [120.0, 118.5, 119.25],
        "measured_at": "2026-11-27T06:00:00.000Z",
    }
    grid = body["circuits"]["grid"]
    assert grid["rating_a"] == [160.0, 160.0, 160.0]
    assert grid["limit_a"] == [150.0, 150.0, 150.0]
    assert grid["headroom_a"] == [30.0, 31.5, 30.75]
    assert grid["override"] == {
        "limit_a": [150.0, 150.0, 150.0],
        "expires_at": "2026-11-27T07:00:00.000Z",
    }
    # No control status yet for the feeder: configured values, nothing measured.
    assert body["circuits"]["feeder"]["limit_a"] == [100.0, 100.0, 90.0]
    assert body["circuits"]["feeder"]["headroom_a"] is None
    assert body["sessions"] == {"active": 1, "charging": 1, "paused": 0}
    assert body["control"]["fallback"] is True
    assert body["control"]["meters"] == {"grid-meter": "ok", "tx-meter": "stale"}
    assert body["alarms"][0]["code"] == "charger_noncompliant"
    assert body["outbox"] == STATS


def test_charger_content_maps_garbage_to_null(config) -> None:
    state = rich_state(config, NOW)
    body = charger_body(state.chargers["CP1"], NOW)
    assert body["connectors"][0]["current_a"] == [31.5, 31.9, None]
    assert body["connectors"][1]["power_kw"] is None  # NaN from the charger
    assert body["power_kw"] == 14.7
    assert body["compliance"] == "noncompliant"


def with_plans(state: SiteState) -> SiteState:
    """CP1/1 planned short (late), CP1/2 a floor-only connector of unknown need."""
    steps = tuple(PlanStep(NOW + timedelta(minutes=15 * k), 900.0, 32.0, 22.08) for k in range(30))
    short = PlanForecast(
        "short",
        "the plan leaves it 12.3 kWh short at its departure",
        3,
        steps,
        55.3449,
        67.6551,
        ready_at=NOW + timedelta(hours=5, minutes=33, seconds=29),
        shortfall_kwh=12.3102,
        late_min=33.46,
        late_rate="planned",
    )
    unknown = PlanForecast("need_unknown", "no stated need", 3, steps, 40.2, None)
    departure = NOW + timedelta(hours=5)
    state.control.sessions = {
        "CP1/1": SessionPlan(departure, "vehicle", 80.0, "vehicle", True, 32.0, short),
        "CP1/2": SessionPlan(departure, "default", 40.0, "unknown", False, 6.0, unknown),
    }
    return state


def test_the_plan_in_brief_per_connector(config) -> None:
    state = with_plans(rich_state(config, NOW))
    body = wire(charger_body(state.chargers["CP1"], NOW, state.control.sessions))
    assert not list(validator("charger").iter_errors(body)), body
    short, unknown = body["connectors"][0]["plan"], body["connectors"][1]["plan"]
    assert short == {
        "status": "short",
        "departure": "2026-11-27T11:00:00.000Z",
        "ready_at": "2026-11-27T11:33:00.000Z",  # to the minute
        "shortfall_kwh": 12.3,
        "late_min": 33,
        "planned_kwh": 55,
    }
    assert unknown["status"] == "need_unknown"
    assert unknown["ready_at"] is None and unknown["shortfall_kwh"] is None
    # No steps on MQTT: a plan adds a small constant to the retained state.
    without = len(encode(charger_body(state.chargers["CP1"], NOW)))
    assert len(encode(body)) - without < 400
    # Seconds of drift in the prediction do not republish the charger.
    before = comparable(charger_body(state.chargers["CP1"], NOW, state.control.sessions))
    plan = state.control.sessions["CP1/1"]
    drifted = dataclasses.replace(
        plan.forecast, ready_at=plan.forecast.ready_at - timedelta(seconds=20)
    )
    state.control.sessions["CP1/1"] = dataclasses.replace(plan, forecast=drifted)
    assert comparable(charger_body(state.chargers["CP1"], NOW, state.control.sessions)) == before


def test_why_a_connector_gets_less_in_brief(config) -> None:
    state = with_plans(rich_state(config, NOW))
    reason = {
        "kind": "circuit",
        "node": "feeder",
        "phase": "L1",
        "planned": 119.7,
        "shared_with": [{"session": "CP2/1", "current_a": 16.0}],
        "text": "feeder L1's limit holds it: limit 120.0 A, planned 119.7 A; shared with CP2/1",
        "short": "feeder L1 at its limit 120 A, shared with 1 other",
    }
    plan = state.control.sessions["CP1/1"]
    state.control.sessions["CP1/1"] = dataclasses.replace(plan, limited_by=(reason,))
    body = wire(charger_body(state.chargers["CP1"], NOW, state.control.sessions))
    assert not list(validator("charger").iter_errors(body)), body
    assert body["connectors"][0]["limited_by"] == [
        {"kind": "circuit", "node": "feeder", "text": reason["short"]}
    ]
    assert body["connectors"][1]["limited_by"] == []
    # The numbers that move every cycle stay on the local API: no republish for them.
    before = comparable(charger_body(state.chargers["CP1"], NOW, state.control.sessions))
    moved = {**reason, "planned": 118.2, "text": reason["text"].replace("119.7", "118.2")}
    state.control.sessions["CP1/1"] = dataclasses.replace(plan, limited_by=(moved,))
    assert comparable(charger_body(state.chargers["CP1"], NOW, state.control.sessions)) == before


def test_comparable_ignores_time_stamps(config) -> None:
    state = rich_state(config, NOW)
    charger = state.chargers["CP1"]
    before = comparable(charger_body(charger, NOW))
    charger.connectors[1].measured_at = NOW + timedelta(seconds=10)
    assert comparable(charger_body(charger, NOW + timedelta(seconds=10))) == before
    charger.connectors[1].power_kw = 15.0
    assert comparable(charger_body(charger, NOW)) != before


def test_session_stopped_has_duration(config) -> None:
    state = rich_state(config, NOW)
    body = session_body(state.ended_sessions[0], "stopped", NOW)
    assert body["duration_s"] == 10500.0
    assert body["energy_kwh"] == 50.0
    assert body["charger"] == "CP+2"
    with pytest.raises(ValueError):
        session_body(state.ended_sessions[0], "paused", NOW)


def test_topics() -> None:
    topics = Topics("sitectl/depot-north")
    assert topics.charger("CP+2") == "sitectl/depot-north/chargers/CP%2B2"
    assert topic_segment("a/b#c%d") == "a%2Fb%23c%25d"
    assert topics.commands == "sitectl/depot-north/cmd/+"
    assert topics.command_name("sitectl/depot-north/cmd/override") == "override"
    assert topics.command_name("sitectl/depot-north/cmd/") is None
    assert topics.command_name("sitectl/depot-north/cmd/a/b") is None
    assert topics.command_name("sitectl/other/cmd/override") is None


def test_with_seq_puts_seq_first() -> None:
    assert with_seq('{"ts":"x","a":1}', 42) == b'{"seq":42,"ts":"x","a":1}'
    assert with_seq("{}", 1) == b'{"seq":1}'
    with pytest.raises(ValueError):
        encode({"x": float("nan")})


# Energy delivered today


def session(energy_wh: float, started_at: datetime, session_id: str = "CP1/1") -> SessionState:
    return SessionState(session_id, 1, started_at, energy_wh=energy_wh)


def test_energy_today_counts_growth_and_restarts_at_local_midnight() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)  # 21:00 in Berlin
    energy = EnergyToday(berlin, process_start=start)
    s = session(0.0, start + timedelta(minutes=1))
    energy.observe(s, start + timedelta(minutes=1))
    s.energy_wh = 5000.0
    energy.observe(s, start + timedelta(hours=1))
    assert energy.kwh(start + timedelta(hours=1)) == 5.0
    # 23:00 UTC is midnight in Berlin: a new day.
    s.energy_wh = 7000.0
    energy.observe(s, datetime(2026, 11, 27, 23, 0, 5, tzinfo=UTC))
    assert energy.day == date(2026, 11, 28)
    assert energy.kwh(datetime(2026, 11, 27, 23, 0, 5, tzinfo=UTC)) == 2.0
    s.energy_wh = 8000.0
    energy.finish(s, datetime(2026, 11, 27, 23, 30, tzinfo=UTC))
    assert energy.kwh(datetime(2026, 11, 27, 23, 30, tzinfo=UTC)) == 3.0


def test_energy_today_does_not_recount_a_session_from_before_a_restart() -> None:
    process_start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    energy = EnergyToday(ZoneInfo("UTC"), process_start, date(2026, 11, 27), wh=20_000.0)
    old = session(15_000.0, process_start - timedelta(hours=2))  # counted by the last process
    energy.observe(old, process_start + timedelta(seconds=10))
    assert energy.kwh(process_start) == 20.0
    old.energy_wh = 16_000.0
    energy.observe(old, process_start + timedelta(seconds=20))
    assert energy.kwh(process_start) == 21.0
    # A total from another day restarts at zero.
    stale = EnergyToday(ZoneInfo("UTC"), process_start, date(2026, 11, 26), wh=99_000.0)
    assert stale.kwh(process_start) == 0.0


def test_limits_in_force_and_their_interventions(config) -> None:
    state = rich_state(config, NOW)
    limits = summary_body(state, config, NOW, 0.0, STATS)["limits"]
    sources = {s["source"]: s for s in limits["sources"]}
    assert set(sources) == {"14a:relay", "openadr:p1", "operator:mqtt"}
    assert sources["14a:relay"]["silent"] and not sources["openadr:p1"]["silent"]
    in_force = {(w["source"], w["node"]): w for w in limits["in_force"]}
    assert set(in_force) == {("openadr:p1", "grid"), ("operator:mqtt", "grid")}
    dso = in_force[("openadr:p1", "grid")]
    assert (dso["limit_kw"], dso["hard"], dso["ref"]) == (80.0, False, "evt-1")
    assert in_force[("operator:mqtt", "grid")]["end"] == iso(NOW + timedelta(hours=1))
    assert limits["grid_limit_kw"] == config.site.limit_kw  # a soft window does not lower it
    bodies = [limit_event_body(e, NOW) for e in state.limit_events]
    assert [b["event"] for b in bodies] == ["limit_started", "limit_changed", "limit_ended"]
    assert {b["code"] for b in bodies} == {"grid_limit"} and bodies[0]["subject"] == "grid"
    assert bodies[1]["previous"]["limit_kw"] == 80.0 and bodies[1]["limit"]["limit_kw"] == 70.0
    assert "changed from 80 kW to 70 kW" in bodies[1]["text"]
    # An alarm event may not carry a window, nor a limit event lack one.
    bad = dict(wire(bodies[0]))
    del bad["limit"]
    assert list(validator("alarm").iter_errors(bad))
