"""The composition root: ordered shutdown, crash handling, and SiteState notifications."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sitectl.app import App, FunctionComponent
from sitectl.config import load_config
from sitectl.state import Change, Severity, SiteState
from sitectl.store import Store
from tests.helpers import wait_for


class Recorder:
    """A component that records when it starts and stops."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events

    async def run(self) -> None:
        self.events.append(f"start {self.name}")
        try:
            await asyncio.Event().wait()
        finally:
            self.events.append(f"stop {self.name}")


async def test_components_stop_in_reverse_start_order(write_config) -> None:
    config, _ = load_config(write_config(), environ={})
    events: list[str] = []
    app = App(config, components=lambda c, s, st: [Recorder(n, events) for n in "abc"])
    task = asyncio.create_task(app.run(install_signal_handlers=False))
    await wait_for(lambda: len(events) == 3, message="three components to start")
    app.stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert events[3:] == ["stop c", "stop b", "stop a"]
    # The store was opened, written and closed (the WAL checkpointed away on close).
    assert Store(config.storage.path).get_meta("site_id") == "test-depot"
    assert Path(config.storage.path).with_name("state.sqlite-wal").stat().st_size == 0


async def test_a_crashing_component_stops_the_app_with_exit_code_1(write_config, caplog) -> None:
    config, _ = load_config(write_config(), environ={})
    events: list[str] = []

    async def crash() -> None:
        await wait_for(lambda: "start steady" in events, message="steady to start")
        raise RuntimeError("meter exploded")

    def factory(c, s, st):
        return [Recorder("steady", events), FunctionComponent("crashy", crash)]

    app = App(config, components=factory)
    code = await asyncio.wait_for(app.run(install_signal_handlers=False), 10)
    assert code == 1
    assert "stop steady" in events
    assert "component crashy crashed" in caplog.text
    assert "meter exploded" in caplog.text


async def test_a_component_that_returns_is_a_failure(write_config) -> None:
    config, _ = load_config(write_config(), environ={})

    async def quits() -> None:
        return None

    app = App(config, components=lambda c, s, st: [FunctionComponent("quitter", quits)])
    assert await asyncio.wait_for(app.run(install_signal_handlers=False), 10) == 1


def test_state_knows_every_configured_charger_and_notifies(write_config) -> None:
    config, _ = load_config(write_config(), environ={})
    state = SiteState(config)
    assert set(state.chargers) == {"CP1"}
    assert list(state.chargers["CP1"].connectors) == [1]
    seen: list[Change] = []

    def broken(change: Change) -> None:
        raise ValueError("subscriber bug")

    state.subscribe(broken)
    unsubscribe = state.subscribe(seen.append)
    assert state.raise_alarm("meter_stale", "grid-meter", Severity.WARNING, "no data for 5 s")
    assert not state.raise_alarm("meter_stale", "grid-meter", Severity.WARNING, "again")
    assert state.clear_alarm("meter_stale", "grid-meter")
    assert not state.clear_alarm("meter_stale", "grid-meter")
    unsubscribe()
    state.set_reading("grid-meter", object())
    # A failing subscriber did not stop the others; unsubscribed callbacks see nothing more.
    assert seen == [Change("alarm", "meter_stale:grid-meter")] * 2


async def test_run_serves_ocpp_from_the_config(write_config) -> None:
    import socket

    from sitectl.app import build_components
    from sitectl.sim.charger import SimCharger
    from sitectl.sim.csms import StubCsms
    from tests.helpers import free_port

    csms = StubCsms()
    await csms.start()
    port = free_port()
    text = (
        write_config()
        .read_text()
        .replace(
            "  listen_host: 127.0.0.1\n",
            f"  listen_host: 127.0.0.1\n  listen_port: {port}\n  upstream_url: {csms.url}\n",
        )
    )
    config, _ = load_config(write_config(text, "ocpp.yaml"), environ={})
    app = App(config, components=build_components)
    task = asyncio.create_task(app.run(install_signal_handlers=False))

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        await wait_for(listening, timeout=10, message="the OCPP port to open")
        async with SimCharger(
            "CP1", "1.6", f"ws://127.0.0.1:{port}/ocpp", "cp1-password-0123456789"
        ) as sim:
            result = await sim.boot()
            assert result.status == "Accepted"
            await wait_for(
                lambda: app.state.chargers["CP1"].connected, message="the charger in SiteState"
            )
            assert app.state.chargers["CP1"].boot_accepted
            # The capability probe is wired (issue #17): it asks after the boot.
            await wait_for(
                lambda: app.state.chargers["CP1"].capabilities.get("complete"),
                message="the capability probe",
            )
    finally:
        app.stop()
        assert await asyncio.wait_for(task, 15) == 0
        await csms.stop()
