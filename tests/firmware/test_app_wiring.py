"""Firmware in the whole application, wired by `build_components` from a YAML file: REST and the
``sitectl firmware`` command start rollouts, the charger downloads from sitectl, the control
loop leaves an installing charger alone, the CSMS sees sitectl's local-controller identity."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ocpp.v16 import call as call16

from sitectl.app import App, build_components
from sitectl.config import Config, load_config
from sitectl.sim.charger import SimCharger
from sitectl.sim.csms import StubCsms
from tests.firmware.support import Origin, image_bytes
from tests.helpers import MINIMAL_CONFIG, free_ports, wait_for

TOKEN = "tok-0123456789"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Running:
    """sitectl running in-process from `path`, with a CSMS and an image origin."""

    app: App
    config: Config
    path: Path
    csms: StubCsms
    origin: Origin
    ocpp_url: str
    api: str


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    csms = StubCsms()
    await csms.start()
    origin = await Origin().start()
    ocpp_port, http_port = free_ports(2)
    text = MINIMAL_CONFIG.replace(
        "  listen_host: 127.0.0.1\n",
        f"  listen_host: 127.0.0.1\n  listen_port: {ocpp_port}\n  upstream_url: {csms.url}\n"
        "  local_controller_identity: SITECTL-LC\n",
    ).replace(
        "http:\n  enabled: false\n",
        f"http:\n  listen_host: 127.0.0.1\n  listen_port: {http_port}\n  token: {TOKEN}\n"
        f"firmware:\n  base_url: http://127.0.0.1:{http_port}\n  cache_dir: fw\n",
    )
    path = tmp_path / "site.yaml"
    path.write_text(text)
    config, _ = load_config(path, environ={})
    app = App(config, components=build_components)
    task = asyncio.create_task(app.run(install_signal_handlers=False))
    try:
        await wait_for(lambda: app.components, timeout=10, message="the components")
        yield Running(
            app,
            config,
            path,
            csms,
            origin,
            f"ws://127.0.0.1:{ocpp_port}/ocpp",
            f"http://127.0.0.1:{http_port}/api",
        )
    finally:
        app.stop()
        assert await asyncio.wait_for(task, 15) == 0
        await csms.stop()
        await origin.stop()


def updates(sim: SimCharger) -> list[dict[str, Any]]:
    return [kw for action, kw in sim.handled.calls if action == "UpdateFirmware"]


async def test_rest_to_charger_to_control_loop(running: Running) -> None:
    r = running
    names = [c.name for c in r.app.components]
    for name in (
        "firmware-cache",
        "firmware-interceptor",
        "firmware-rollouts",
        "firmware-local-controller",
    ):
        assert name in names
    await wait_for(lambda: r.csms.frames("SITECTL-LC"), message="the LC identity at the CSMS")
    data = image_bytes(200_000, seed=7)
    url = r.origin.add("cp-2.0.bin", data)
    async with (
        SimCharger("CP1", "1.6", r.ocpp_url, "cp1-password-0123456789") as sim,
        aiohttp.ClientSession() as http,
    ):
        await sim.boot()
        await wait_for(lambda: r.app.state.chargers["CP1"].connected, message="CP1 connected")
        async with http.post(
            f"{r.api}/firmware/rollouts",
            json={"url": url, "targets": ["CP1"]},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            assert response.status == 201, await response.text()
            rollout_id = (await response.json())["rollout"]["id"]

        await wait_for(lambda: updates(sim), timeout=15, message="UpdateFirmware at the charger")
        location = updates(sim)[0]["location"]
        assert location.startswith(r.config.firmware.base_url + "/firmware/")
        async with http.get(location) as response:
            assert response.status == 200 and await response.read() == data

        control = next(c for c in r.app.components if c.name == "control")
        await sim.call(call16.FirmwareStatusNotification(status="Installing"))
        await wait_for(lambda: control.memory["CP1"].unavailable, message="CP1 unavailable")
        await sim.call(call16.FirmwareStatusNotification(status="Installed"))
        await wait_for(lambda: not control.memory["CP1"].unavailable, message="CP1 back")
        async with http.get(f"{r.api}/firmware/rollouts/{rollout_id}") as response:
            assert (await response.json())["state"] == "done"
        # Forwarded unchanged to the CSMS (F2).
        assert sum("FirmwareStatusNotification" in f for f in r.csms.frames("CP1")) == 2


async def sitectl(*args: str) -> tuple[int, str, str]:
    """Run the ``sitectl`` command without blocking the event loop sitectl runs on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sitectl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_firmware_command(running: Running) -> None:
    r = running
    config = str(r.path)
    url = r.origin.add("cp-3.0.bin", image_bytes(100_000, seed=8))
    async with SimCharger("CP1", "1.6", r.ocpp_url, "cp1-password-0123456789") as sim:
        await sim.boot()
        await wait_for(lambda: r.app.state.chargers["CP1"].connected, message="CP1 connected")
        sim.handled.calls.clear()

        code, out, err = await sitectl("firmware", "list", "-c", config)
        assert code == 0, err
        assert "rollouts: none" in out and "cache: 0.0 MB of 4096.0 MB" in out

        code, out, err = await sitectl("firmware", "start", "-c", config, url, "--charger", "CP9")
        assert code == 1 and "unknown charger(s): CP9 (targets) [HTTP 422]" in err

        code, out, err = await sitectl("firmware", "start", "-c", config, url, "--all")
        assert code == 0, err
        assert out.startswith("rollout #1 started: " + url)
        await wait_for(lambda: updates(sim), timeout=15, message="UpdateFirmware at the charger")

        code, out, err = await sitectl("firmware", "status", "-c", config, "1", "--json")
        assert code == 0, err
        status = json.loads(out)
        assert status["chargers"][0]["charger"] == "CP1"
        assert status["chargers"][0]["state"] == "downloading"

        code, out, err = await sitectl("firmware", "stop", "-c", config, "1")
        assert code == 0 and "rollout #1 stopped" in out, err
        code, out, err = await sitectl("firmware", "list", "-c", config)
        assert "#1    stopped" in out and "cp-3.0.bin" in out

        code, out, err = await sitectl("firmware", "status", "-c", config, "7")
        assert code == 1 and "no rollout 7" in err
        code, out, err = await sitectl(
            "firmware", "list", "-c", config, "--api-url", "http://127.0.0.1:9"
        )
        assert code == 1 and "cannot reach sitectl at http://127.0.0.1:9" in err
