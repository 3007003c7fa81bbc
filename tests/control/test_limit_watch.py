"""The audit of limit windows (sitectl.control.limit_watch): events stored, announced, counted;
silent sources alarmed and cleared; the store's retention; /metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sitectl.config import Config
from sitectl.control.limit_watch import SILENT_ALARM, LimitWatch, limit_history
from sitectl.http.metrics import StateCollector, render_metrics
from sitectl.limits import GridLimit
from sitectl.state import SiteState
from sitectl.store import Store

#: A fixed origin for the arithmetic (never compared with the real clock).
T0 = datetime.now(UTC).replace(microsecond=0)


def config() -> Config:
    return Config.model_validate(
        {
            "site": {"id": "w", "limit_kw": 300, "phase_limit_a": 400, "non_ev_max_a": 40},
            "circuits": [{"id": "feeder", "limit_a": 200}],
            "charger_defaults": {"circuit": "feeder", "max_current_a": 32, "password": "x" * 16},
            "chargers": [{"id": "A"}],
            "mqtt": {"enabled": False},
            "http": {"enabled": False},
        }
    )


@pytest.fixture
def rig(tmp_path: Path):
    state = SiteState(config(), clock=lambda: T0)
    store = Store(tmp_path / "s.sqlite")
    heard: list[str] = []
    state.subscribe(lambda c: heard.append(c.subject) if c.kind == "limit_event" else None)
    watch = LimitWatch(state, store, retention_days=30)
    yield SimpleNamespace(state=state, store=store, watch=watch, heard=heard)
    store.close()


def dso(kw: float = 120.0, **kw_args) -> GridLimit:
    kw_args.setdefault("start", T0 - timedelta(minutes=1))
    kw_args.setdefault("end", T0 + timedelta(hours=1))
    return GridLimit("grid", "openadr:p1", limit_kw=kw, reason="capacity", ref="e1", **kw_args)


def test_a_window_starting_changing_and_ending_is_stored_announced_and_counted(rig) -> None:
    state, store, watch, heard = rig.state, rig.store, rig.watch, rig.heard
    assert watch.tick(T0) == []
    later = dso(start=T0 + timedelta(minutes=10), end=T0 + timedelta(minutes=20))
    state.limits.publish("openadr:p1", [later], T0)
    assert watch.tick(T0) == []  # announced, not yet in force: no intervention yet
    started = watch.tick(T0 + timedelta(minutes=10))
    assert [(e.action, e.limit.limit_kw) for e in started] == [("started", 120.0)]
    moved = dso(90.0, start=later.start, end=T0 + timedelta(minutes=30))
    state.limits.publish("openadr:p1", [moved], T0 + timedelta(minutes=12))
    (changed,) = watch.tick(T0 + timedelta(minutes=12))
    assert changed.action == "changed" and changed.previous == later
    assert "changed from 120 kW to 90 kW" in changed.text()
    assert watch.tick(T0 + timedelta(minutes=13)) == []  # nothing new: nothing recorded
    (ended,) = watch.tick(T0 + timedelta(minutes=30))  # its end passed
    assert ended.action == "ended" and ended.limit == moved
    # Stored, newest first, in the same words; announced once each; counted by source.
    history = limit_history(store, state)
    assert [h["action"] for h in history] == ["ended", "changed", "started"]
    assert history[1]["previous"]["limit_kw"] == 120.0 and history[1]["limit_kw"] == 90.0
    assert history[0]["seq"] > history[1]["seq"] > history[2]["seq"]
    assert history[0]["end"] == moved.end.isoformat() and history[0]["ref"] == "e1"
    assert len(heard) == 3 and len(state.limit_events) == 3
    assert state.control.limit_events == {
        ("started", "openadr:p1"): 1,
        ("changed", "openadr:p1"): 1,
        ("ended", "openadr:p1"): 1,
    }
    since = limit_history(store, state, since=T0 + timedelta(minutes=11))
    assert [h["action"] for h in since] == ["ended", "changed"]
    assert limit_history(store, state, limit=1)[0]["action"] == "ended"


def test_a_withdrawn_window_ends_and_an_override_is_audited_like_any_source(rig) -> None:
    from sitectl.limits import LimitOverride

    state, watch = rig.state, rig.watch
    state.limits.publish("openadr:p1", [dso()], T0)
    state.overrides["feeder"] = LimitOverride(
        "feeder", (50.0, 50.0, 50.0), T0 + timedelta(minutes=5), "http", set_at=T0
    )
    assert {(e.action, e.limit.source) for e in watch.tick(T0)} == {
        ("started", "openadr:p1"),
        ("started", "operator:http"),
    }
    state.limits.withdraw("openadr:p1")
    del state.overrides["feeder"]
    assert {(e.action, e.limit.source) for e in watch.tick(T0)} == {
        ("ended", "openadr:p1"),
        ("ended", "operator:http"),
    }


def test_a_silent_source_raises_an_alarm_its_fail_safe_starts_and_both_clear(rig) -> None:
    state, watch = rig.state, rig.watch
    lapse = T0 + timedelta(minutes=5)
    fail_safe = GridLimit("grid", "openadr:p1", T0, limit_kw=60.0)
    state.limits.publish(
        "openadr:p1", [dso()], T0, valid_until=lapse, fail_safe=[fail_safe], fail_safe_s=900
    )
    watch.tick(T0)
    assert (SILENT_ALARM, "openadr:p1") not in state.alarms
    events = watch.tick(lapse)
    alarm = state.alarms[(SILENT_ALARM, "openadr:p1")]
    assert "fail-safe applies" in alarm.text and "60 kW" in alarm.text
    assert str(alarm.severity) == "warning"
    # The fail-safe starts beside the announced window (silence never lifts a lower limit).
    assert {(e.action, e.limit.limit_kw) for e in events} == {("started", 60.0)}
    assert "120 kW" not in alarm.text
    watch.tick(lapse + timedelta(seconds=30))  # still silent: raised once
    state.limits.publish("openadr:p1", [dso()], lapse + timedelta(minutes=1), valid_until=None)
    events = watch.tick(lapse + timedelta(minutes=1))
    assert (SILENT_ALARM, "openadr:p1") not in state.alarms
    assert {(e.action, e.limit.limit_kw) for e in events} == {("ended", 60.0)}


def test_a_silent_source_without_a_fail_safe_says_so_and_clears_when_withdrawn(rig) -> None:
    state, watch = rig.state, rig.watch
    state.limits.publish("14a:relay", [], T0, valid_until=T0 + timedelta(seconds=10))
    watch.tick(T0 + timedelta(seconds=10))
    assert "no fail-safe given" in state.alarms[(SILENT_ALARM, "14a:relay")].text
    state.limits.withdraw("14a:relay")
    watch.tick(T0 + timedelta(seconds=11))
    assert (SILENT_ALARM, "14a:relay") not in state.alarms


def test_old_events_are_deleted_after_the_retention(rig) -> None:
    state, store, watch = rig.state, rig.store, rig.watch
    state.limits.publish("openadr:p1", [dso(end=T0 + timedelta(days=40))], T0)
    watch.tick(T0)
    assert len(limit_history(store, state)) == 1
    watch.tick(T0 + timedelta(days=20))
    assert len(limit_history(store, state)) == 1
    watch.tick(T0 + timedelta(days=31))  # 30 days kept
    assert limit_history(store, state) == []


def test_a_failing_store_costs_only_the_record(rig, caplog) -> None:
    state, store, watch, heard = rig.state, rig.store, rig.watch, rig.heard
    store.close()
    state.limits.publish("openadr:p1", [dso()], T0)
    (event,) = watch.tick(T0)
    assert event.action == "started" and event.seq == 0 and heard
    assert "limit event not stored" in caplog.text


def test_without_a_store_the_history_is_this_run_s(rig) -> None:
    state, watch = rig.state, rig.watch
    watch = LimitWatch(state, None)
    state.limits.publish("openadr:p1", [dso()], T0)
    watch.tick(T0)
    assert [h["action"] for h in limit_history(None, state)] == ["started"]


def test_metrics_show_windows_in_force_silent_sources_and_interventions(rig) -> None:
    state, watch = rig.state, rig.watch
    state.limits.publish("openadr:p1", [dso()], T0)
    state.limits.publish(
        "14a:relay",
        [GridLimit("feeder", "14a:relay", T0, limit_a=(30.0, 31.0, 32.0))],
        T0 - timedelta(minutes=1),
        valid_until=T0,
    )
    watch.tick(T0)
    text = render_metrics(StateCollector(state, state.config)).decode()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    watts = {
        (s.labels["source"], s.labels["hard"]): s.value
        for s in families["sitectl_limit_window_watts"]
    }
    assert watts == {("openadr:p1", "true"): 120_000.0}
    silent = {s.labels["source"]: s.value for s in families["sitectl_limit_source_silent"]}
    assert silent == {"14a:relay": 1.0, "openadr:p1": 0.0}
    events = {
        (s.labels["action"], s.labels["source"]): s.value
        for s in families["sitectl_limit_events"]
        if s.name.endswith("_total")
    }
    assert events[("started", "openadr:p1")] == 1.0
