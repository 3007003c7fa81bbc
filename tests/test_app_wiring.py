"""The application as `sitectl run` builds it: /metrics with MQTT configured, start-up alarms.

Every component is the real one (`build_components`): the uplink on the suite's mosquitto,
the local HTTP server on a free port, a grid meter whose gateway never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sitectl.app import App
from sitectl.config import load_config
from tests.helpers import free_ports, wait_for
from tests.uplink.support import Capture

TOKEN = "wiring-http-token-0123456789"


def _config_text(tmp_path: Path, broker_port: int) -> tuple[str, int]:
    http_port, ocpp_port, dead_meter_port = free_ports(3)
    text = textwrap.dedent(f"""\
        site: {{id: wiring-depot, limit_kw: 100, phase_limit_a: 160, meter: grid-meter,
               non_ev_max_a: 40}}
        circuits:
          - {{id: feeder, limit_a: 100}}
        chargers:
          - {{id: CP1, circuit: feeder, max_current_a: 32, password: cp1-password-0123456789}}
        devices:
          # Nothing listens here: a gateway that is dead from the first day.
          - {{name: grid-meter, profile: eastron-sdm630, host: 127.0.0.1,
             port: {dead_meter_port}, unit_id: 1, poll_period_s: 0.2, timeout_s: 0.2}}
        ocpp: {{listen_host: 127.0.0.1, listen_port: {ocpp_port}}}
        control: {{period_s: 0.5, profile_validity_s: 2, meter_grace_s: 1}}
        storage: {{path: {tmp_path / "state.sqlite"}}}
        http: {{listen_host: 127.0.0.1, listen_port: {http_port}, token: {TOKEN}}}
        mqtt: {{host: 127.0.0.1, port: {broker_port}, topic_prefix: wiring/test,
               summary_period_s: 0.5}}
        """)
    return text, http_port


@pytest.fixture
async def running_app(tmp_path: Path, mosquitto) -> AsyncIterator[tuple[App, int]]:
    text, http_port = _config_text(tmp_path, mosquitto.port)
    path = tmp_path / "site.yaml"
    path.write_text(text)
    config, _ = load_config(path, environ={})
    app = App(config)
    task = asyncio.create_task(app.run(install_signal_handlers=False))
    try:
        yield app, http_port
    finally:
        app.stop()
        with contextlib.suppress(Exception):
            assert await asyncio.wait_for(task, 15) == 0


async def _metrics(port: int) -> dict[str, list]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200, await response.text()
        text = await response.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


async def _scrape_when_up(port: int) -> dict[str, list]:
    result: dict[str, dict[str, list]] = {}

    async def up() -> bool:
        try:
            result["m"] = await _metrics(port)
        except aiohttp.ClientConnectionError:
            return False
        return True

    await wait_for(up, timeout=10, message="the HTTP server to answer")
    return result["m"]


async def test_metrics_scrape_with_mqtt_configured(running_app) -> None:
    _, port = running_app
    families = await _scrape_when_up(port)
    # The outbox gauge is the uplink's (it was a 500 while it called a property).
    assert "sitectl_outbox_messages" in families
    assert families["sitectl_outbox_messages"][0].value >= 0
    for key in ("lost", "rejected", "dropped_summaries", "dropped_charger_states"):
        assert families[f"sitectl_outbox_{key}_total"][0].value == 0


async def test_a_meter_never_read_is_an_alarm_on_metrics_and_mqtt(running_app, mosquitto) -> None:
    capture = Capture(mosquitto.host, mosquitto.port, prefix="wiring/test")
    try:
        app, port = running_app
        await wait_for(
            lambda: app.state is not None and ("meter_failed", "grid") in app.state.alarms,
            timeout=10,
            message="the never-read meter to raise its alarm",
        )
        assert "never read since start" in app.state.alarms[("meter_failed", "grid")].text
        families = await _scrape_when_up(port)
        raised = {
            (s.labels["code"], s.labels["subject"]) for s in families["sitectl_alarm"] if s.value
        }
        assert ("meter_failed", "grid") in raised
        await wait_for(
            lambda: any(
                m.data.get("code") == "meter_failed" and m.data.get("event") == "raised"
                for m in capture.on("alarms")
            ),
            timeout=10,
            message="the alarm on MQTT",
        )
    finally:
        capture.close()


async def test_the_watchdog_is_fed_by_control_cycles_and_stops_when_control_hangs(
    tmp_path: Path, mosquitto, monkeypatch
) -> None:
    import socket
    import time

    from sitectl.control.loop import ControlLoop

    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    hang = asyncio.Event()
    real_cycle = ControlLoop.cycle

    async def cycle(self: ControlLoop) -> None:
        if hang.is_set():
            await asyncio.Event().wait()  # a control loop stuck on something
        await real_cycle(self)

    monkeypatch.setattr(ControlLoop, "cycle", cycle)
    pings: list[float] = []
    messages: list[str] = []

    def drain() -> None:
        while True:
            try:
                text = listener.recv(256).decode()
            except BlockingIOError:
                return
            messages.append(text)
            if text == "WATCHDOG=1":
                pings.append(time.monotonic())

    text, _ = _config_text(tmp_path, mosquitto.port)
    path = tmp_path / "site.yaml"
    path.write_text(text)
    config, _ = load_config(path, environ={})
    app = App(config)
    task = asyncio.create_task(app.run(install_signal_handlers=False))
    try:
        await wait_for(lambda: (drain(), len(pings) >= 3)[1], timeout=10, message="3 pings")
        assert "READY=1" in messages
        hang.set()
        await wait_for(lambda: (drain(), app.state.control.cycles)[1] > 0, message="a cycle")
        stuck_at = time.monotonic()
        # Once the loop hangs (within one 0.5 s period) no more pings come: watch for 2 s
        # (an absence can only be seen by waiting; a timer-fed watchdog pings in that time).
        deadline = stuck_at + 2.0
        await wait_for(lambda: time.monotonic() > deadline, timeout=5, message="2 s to pass")
        drain()
        assert not [p for p in pings if p > stuck_at + 1.0], "pinged while control hung"
    finally:
        app.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)
        listener.close()


async def test_the_app_watches_the_clock(running_app) -> None:
    from sitectl.clock import kernel_clock_synchronized

    app, _ = running_app
    await wait_for(lambda: app.components, message="the components")
    assert "clock" in [c.name for c in app.components]
    # The alarm follows what the kernel says about this machine's clock.
    expected = kernel_clock_synchronized() is False
    await wait_for(
        lambda: (("clock_unsynchronized", "site") in app.state.alarms) == expected,
        message="the clock alarm to match the kernel",
    )


async def test_an_override_by_http_is_audited_on_mqtt_metrics_and_the_store(
    running_app, mosquitto
) -> None:
    """Issue #20: the HTTP override is the limit source operator:http; its start and end are
    interventions: on the MQTT alarms/events stream, counted on /metrics, kept in the store."""
    capture = Capture(mosquitto.host, mosquitto.port, prefix="wiring/test")
    _, port = running_app
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def limit_events(event: str) -> list:
        return [m.data for m in capture.on("alarms") if m.data.get("event") == event]

    try:
        await _scrape_when_up(port)
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(
                f"{base}/api/overrides",
                json={"node": "feeder", "limit_a": 20, "expires_in_s": 600},
            ) as response:
                assert response.status == 200, await response.text()
            await wait_for(
                lambda: limit_events("limit_started"), timeout=10, message="limit_started on MQTT"
            )
            (started,) = limit_events("limit_started")
            assert started["code"] == "grid_limit" and started["subject"] == "feeder"
            assert started["limit"]["source"] == "operator:http"
            assert started["limit"]["limit_a"] == [20.0, 20.0, 20.0]
            async with http.get(f"{base}/api/site") as response:
                site = await response.json()
            assert [w["source"] for w in site["limits"]] == ["operator:http"]
            feeder = next(c for c in site["circuits"] if c["id"] == "feeder")
            assert feeder["limit_a"] == [20.0, 20.0, 20.0]  # the limit in force
            async with http.post(
                f"{base}/api/overrides", json={"node": "feeder", "clear": True}
            ) as response:
                assert response.status == 200
            await wait_for(
                lambda: limit_events("limit_ended"), timeout=10, message="limit_ended on MQTT"
            )
            async with http.get(f"{base}/api/limits/history") as response:
                history = await response.json()
        assert [e["action"] for e in history["events"]] == ["ended", "started"]
        assert all(e["seq"] for e in history["events"])  # from the store
        families = await _metrics(port)
        counted = {
            (s.labels["action"], s.labels["source"]): s.value
            for s in families["sitectl_limit_events"]
            if s.name.endswith("_total")
        }
        assert counted == {("started", "operator:http"): 1.0, ("ended", "operator:http"): 1.0}
    finally:
        capture.close()
