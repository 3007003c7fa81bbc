"""Commands without a broker: each one's success and each refusal, with the precise error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sitectl.firmware import FirmwareCache, FirmwareServer, RolloutManager
from sitectl.migrations import SCHEMA
from sitectl.state import Change, SiteState
from sitectl.store import Store
from sitectl.uplink.commands import MAX_COMMAND_BYTES, handle_command
from tests.uplink.support import depot_config, rich_state

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)  # the injected clock of every test here


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return depot_config(tmp_path_factory.mktemp("cmd"), "127.0.0.1", 1883)


@pytest.fixture
def state(config) -> SiteState:
    state = rich_state(config, NOW)
    state.overrides.clear()
    return state


def changes(state: SiteState) -> list[Change]:
    seen: list[Change] = []
    state.subscribe(seen.append)
    return seen


def refused(reply: dict, field: str | None, *words: str) -> None:
    assert reply["ok"] is False, reply
    assert reply["field"] == field, reply
    for word in words:
        assert word in reply["error"], reply


# override / clear_override


def test_override_sets_a_lower_limit_with_expiry(config, state) -> None:
    seen = changes(state)
    reply = handle_command(
        state,
        config,
        "override",
        b'{"node": "feeder", "limit_a": [80, 80, 70], "expires_in_s": 600}',
    )
    assert reply == {
        "ok": True,
        "command": "override",
        "node": "feeder",
        "limit_a": [80.0, 80.0, 70.0],
        "expires_at": "2026-11-27T06:10:00.000Z",
    }
    override = state.overrides["feeder"]
    assert override.limit_a == (80.0, 80.0, 70.0)
    assert override.expires_at == NOW + timedelta(minutes=10)
    assert override.source == "mqtt"
    assert Change("override", "feeder") in seen


def test_override_with_one_value_and_absolute_expiry(config, state) -> None:
    reply = handle_command(
        state,
        config,
        "override",
        {"node": "grid", "limit_a": 120, "expires_at": "2026-11-27T08:00:00+01:00"},
    )
    assert reply["ok"], reply
    assert state.overrides["grid"].limit_a == (120.0, 120.0, 120.0)
    assert state.overrides["grid"].expires_at == datetime(2026, 11, 27, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        (
            {"node": "grid", "limit_a": 161, "expires_in_s": 60},
            "limit_a",
            ["above the rating", "160"],
        ),
        # The feeder is rated [100, 100, 90]: 95 A on L3 is too much.
        ({"node": "feeder", "limit_a": 95, "expires_in_s": 60}, "limit_a", ["L3", "90 A"]),
        ({"node": "feeder-9", "limit_a": 10, "expires_in_s": 60}, "node", ["unknown node", "grid"]),
        ({"node": "grid", "limit_a": -1, "expires_in_s": 60}, "limit_a.0", ["greater than"]),
        ({"node": "grid", "limit_a": [1, 2], "expires_in_s": 60}, "limit_a", ["three numbers"]),
        ({"node": "grid", "limit_a": True, "expires_in_s": 60}, "limit_a", ["number"]),
        ({"node": "grid", "limit_a": "10", "expires_in_s": 60}, "limit_a", ["number"]),
        ({"node": "grid", "limit_a": 10}, "expires_in_s", ["exactly one"]),
        (
            {
                "node": "grid",
                "limit_a": 10,
                "expires_in_s": 5,
                "expires_at": "2026-11-27T07:00:00Z",
            },
            "expires_in_s",
            ["exactly one"],
        ),
        ({"node": "grid", "limit_a": 10, "expires_in_s": 0}, "expires_in_s", ["greater than 0"]),
        ({"node": "grid", "limit_a": 10, "expires_in_s": 8 * 86400}, "expires_in_s", ["7 days"]),
        (
            {"node": "grid", "limit_a": 10, "expires_at": "2026-11-27T05:00:00Z"},
            "expires_at",
            ["in the past"],
        ),
        (
            {"node": "grid", "limit_a": 10, "expires_at": _iso(NOW + timedelta(days=30))},
            "expires_at",
            ["7 days"],
        ),
        (
            {"node": "grid", "limit_a": 10, "expires_at": "2026-11-27T07:00:00"},
            "expires_at",
            ["timezone"],
        ),
        ({"node": "grid", "limit_a": 10, "expires_in_s": 60, "force": True}, "force", ["unknown"]),
    ],
)
def test_override_refusals(config, state, payload, field, words) -> None:
    refused(handle_command(state, config, "override", payload), field, *words)
    assert state.overrides == {}


def test_clear_override(config, state) -> None:
    handle_command(state, config, "override", {"node": "grid", "limit_a": 100, "expires_in_s": 60})
    seen = changes(state)
    assert handle_command(state, config, "clear_override", {"node": "grid"}) == {
        "ok": True,
        "command": "clear_override",
        "node": "grid",
        "cleared": True,
    }
    assert "grid" not in state.overrides
    assert Change("override", "grid") in seen
    assert handle_command(state, config, "clear_override", {"node": "grid"})["cleared"] is False
    refused(handle_command(state, config, "clear_override", {"node": "x"}), "node", "unknown node")
    refused(handle_command(state, config, "clear_override", {}), "node", "Field required")


# session_needs


def test_session_needs(config, state) -> None:
    seen = changes(state)
    reply = handle_command(
        state,
        config,
        "session_needs",
        {
            "charger": "CP1",
            "connector": 1,
            "session_id": "CP1/1234",
            "departure": "2026-11-27T14:30:00Z",
            "energy_kwh": 120.5,
        },
    )
    assert reply == {
        "ok": True,
        "command": "session_needs",
        "session_id": "CP1/1234",
        "departure": "2026-11-27T14:30:00.000Z",
        "energy_kwh": 120.5,
    }
    session = state.chargers["CP1"].connectors[1].session
    assert session.departure == datetime(2026, 11, 27, 14, 30, tzinfo=UTC)
    assert session.energy_wanted_kwh == 120.5
    assert Change("session_needs", "CP1/1") in seen
    # Energy alone keeps the departure.
    assert (
        handle_command(
            state, config, "session_needs", {"charger": "CP1", "connector": 1, "energy_kwh": 60}
        )["departure"]
        == "2026-11-27T14:30:00.000Z"
    )


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"charger": "CP9", "connector": 1, "energy_kwh": 10}, "charger", ["unknown charger"]),
        ({"charger": "CP1", "connector": 3, "energy_kwh": 10}, "connector", ["no connector 3"]),
        ({"charger": "CP1", "connector": 2, "energy_kwh": 10}, "connector", ["no session"]),
        ({"charger": "CP1", "connector": 1}, "departure", ["departure, energy_kwh"]),
        (
            {"charger": "CP1", "connector": 1, "session_id": "CP1/1", "energy_kwh": 10},
            "session_id",
            ["CP1/1234"],
        ),
        (
            {"charger": "CP1", "connector": 1, "departure": "2026-11-27T05:59:00Z"},
            "departure",
            ["in the past"],
        ),
        (
            {"charger": "CP1", "connector": 1, "departure": "tomorrow"},
            "departure",
            ["datetime"],
        ),
        ({"charger": "CP1", "connector": 1, "energy_kwh": -5}, "energy_kwh", ["greater than 0"]),
        ({"charger": "CP1", "connector": "1", "energy_kwh": 5}, "connector", ["integer"]),
    ],
)
def test_session_needs_refusals(config, state, payload, field, words) -> None:
    before = state.chargers["CP1"].connectors[1].session.energy_wanted_kwh
    refused(handle_command(state, config, "session_needs", payload), field, *words)
    assert state.chargers["CP1"].connectors[1].session.energy_wanted_kwh == before


# republish, firmware, and what is not a command


def test_republish_needs_a_transport_that_can(config, state) -> None:
    reply = handle_command(state, config, "republish", b"", republish=lambda: {"chargers": 2})
    assert reply == {"ok": True, "command": "republish", "chargers": 2}
    refused(handle_command(state, config, "republish", b"{}"), None, "not available")
    refused(handle_command(state, config, "republish", b'{"all": 1}'), "all", "unknown field")


@pytest.fixture
def rollouts(config, state, tmp_path) -> Iterator[RolloutManager]:
    """A real rollout manager on a real store; not running, so no charger is ever called."""
    firmware = config.firmware.model_copy(
        update={"base_url": "http://192.0.2.1:8080", "cache_dir": tmp_path / "fw"}
    )
    fw_config = config.model_copy(update={"firmware": firmware})
    store = Store(tmp_path / "s.sqlite", migrations=SCHEMA)
    cache = FirmwareCache(store, firmware)

    async def call(*args: Any, **kwargs: Any) -> dict:
        raise AssertionError("a charger was called")

    yield RolloutManager(store, state, cache, FirmwareServer(cache, fw_config), call, fw_config)
    store.close()


def test_firmware_without_rollouts_is_refused(config, state) -> None:
    refused(
        handle_command(state, config, "firmware", {"action": "list"}),
        None,
        "not available",
        "disabled",
    )


def test_firmware_start_status_stop_list(config, state, rollouts) -> None:
    def firmware(payload: dict) -> dict:
        return handle_command(state, config, "firmware", payload, rollouts=rollouts)

    url = "https://vendor.example/fw/t500-2.0.bin"
    reply = firmware({"action": "start", "url": url, "targets": ["CP1"], "md5": "a" * 32})
    assert reply["ok"] is True, reply
    rollout = reply["rollout"]
    assert rollout["state"] == "caching" and rollout["url"] == url
    assert [c["charger"] for c in rollout["chargers"]] == ["CP1"]
    assert rollout["chargers"][0]["state"] == "queued"
    status = firmware({"action": "status", "rollout_id": rollout["id"]})
    assert status["rollout"]["id"] == rollout["id"]
    by_model = firmware({"action": "start", "url": url, "targets": {"model": "T500"}})
    refused(by_model, "targets", "already being updated", "CP1")
    stopped = firmware({"action": "stop", "rollout_id": rollout["id"]})
    assert stopped["rollout"]["state"] == "stopped"
    assert stopped["rollout"]["chargers"][0]["state"] == "canceled"
    refused(firmware({"action": "stop", "rollout_id": rollout["id"]}), "rollout_id", "stopped")
    listed = firmware({"action": "list"})["rollouts"]
    assert [r["id"] for r in listed] == [rollout["id"]]


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"action": "start", "targets": "all"}, "url", ["needs the image's url"]),
        ({"action": "start", "url": "https://x.example/f.bin"}, "targets", ["needs targets"]),
        ({"action": "start", "url": "file:///etc/passwd", "targets": "all"}, "url", []),
        (
            {"action": "start", "url": "https://x.example/f.bin", "targets": ["CP9"]},
            "targets",
            ["unknown charger", "CP9"],
        ),
        (
            {"action": "start", "url": "https://x.example/f.bin", "targets": "all", "md5": "x"},
            "md5",
            ["pattern"],
        ),
        (
            {
                "action": "start",
                "url": "https://x.example/f.bin",
                "targets": "all",
                "signature": "c2ln",
            },
            "signature",
            ["go together"],
        ),
        ({"action": "reflash"}, "action", ["start", "stop"]),
        ({"action": "stop"}, "rollout_id", ["needs rollout_id"]),
        ({"action": "status", "rollout_id": 999}, "rollout_id", ["no rollout 999"]),
        ({"action": "list", "force": True}, "force", ["unknown field"]),
    ],
)
def test_firmware_refusals(config, state, rollouts, payload, field, words) -> None:
    reply = handle_command(state, config, "firmware", payload, rollouts=rollouts)
    refused(reply, field, *words)
    assert rollouts.list() == []


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"{nope", ["not valid JSON"]),
        (b"[1, 2]", ["JSON object"]),
        (b'"override"', ["JSON object"]),
        (b"\xff\xfe", ["not UTF-8"]),
        (b"{" + b" " * MAX_COMMAND_BYTES + b"}", ["at most 16384"]),
    ],
)
def test_malformed_payloads(config, state, payload, words) -> None:
    refused(handle_command(state, config, "override", payload), None, *words)


def test_unknown_command(config, state) -> None:
    refused(handle_command(state, config, "reboot", b"{}"), None, "unknown command 'reboot'")


def test_a_bug_in_a_handler_is_an_error_reply(config, state) -> None:
    def broken() -> dict:
        raise RuntimeError("boom")

    refused(handle_command(state, config, "republish", None, republish=broken), None, "boom")


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["override", "clear_override", "session_needs", "republish", "x"]),
    payload=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        ["node", "limit_a", "expires_in_s", "charger", "connector", "z"]
                    ),
                    inner,
                    max_size=5,
                )
            ),
            max_leaves=10,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_nothing_crashes(config, name, payload) -> None:
    state = rich_state(config, NOW)
    reply = handle_command(state, config, name, payload, republish=lambda: {})
    assert isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert reply["error"] and "internal error" not in reply["error"]
