"""`sitectl probe` against a real (simulated) Modbus meter, and the devices in the app."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from devices.sim import SimMeter, SimServer
from sitectl.app import App, build_components
from sitectl.config import load_config
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent


def config_text(port: int) -> str:
    return f"""\
site: {{id: probe, limit_kw: 100, phase_limit_a: 160, meter: grid-meter, non_ev_max_a: 20}}
devices:
  - {{name: grid-meter, profile: eastron-sdm630, host: 127.0.0.1, port: {port}, unit_id: 3,
     poll_period_s: 0.2, timeout_s: 0.5}}
mqtt: {{enabled: false}}
http: {{enabled: false}}
storage: {{path: probe.sqlite}}
"""


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sitectl", "probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


async def test_probe_prints_quantities_and_exact_causes(write_config) -> None:
    meter = SimMeter("eastron-sdm630", unit_id=3, values={"current_l1": 42.5})
    async with SimServer([meter]) as server:
        path = write_config(config_text(server.port))
        result = await asyncio.to_thread(probe, "-c", str(path), "--raw")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "grid-meter" in result.stdout and "42.5" in result.stdout
        meter.exception = 2  # illegal data address
        result = await asyncio.to_thread(probe, "-c", str(path), "--device", "grid-meter")
        assert result.returncode == 1
        assert "exception" in result.stdout.lower()
    # Nothing listens any more: connection refused, said as such.
    result = await asyncio.to_thread(probe, "-c", str(path))
    assert result.returncode == 1 and "refused" in result.stdout.lower()
    result = await asyncio.to_thread(probe, "-c", str(path), "--device", "nope")
    assert result.returncode == 1 and "no device 'nope'" in result.stderr


async def test_app_polls_configured_devices_into_site_state(write_config) -> None:
    meter = SimMeter("eastron-sdm630", unit_id=3, values={"current_l1": 17.0})
    async with SimServer([meter]) as server:
        port = free_port()
        text = config_text(server.port) + f"ocpp: {{listen_host: 127.0.0.1, listen_port: {port}}}\n"
        config, _ = load_config(write_config(text), environ={})
        app = App(config, components=build_components)
        task = asyncio.create_task(app.run(install_signal_handlers=False))
        try:
            await wait_for(
                lambda: app.state is not None and "grid-meter" in app.state.readings,
                timeout=10,
                message="a reading in SiteState",
            )
            reading = app.state.readings["grid-meter"]
            assert reading.ok and reading.current_a[0] == 17.0
        finally:
            app.stop()
            assert await asyncio.wait_for(task, 15) == 0
