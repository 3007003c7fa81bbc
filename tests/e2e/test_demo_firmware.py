"""The demo's firmware rollout: the printed command works as pasted, and a new version shows."""

from __future__ import annotations

import asyncio
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from sitectl.sim import DEMO_CONFIG
from sitectl.sim.demo import FIRMWARE_VERSION, DemoParts, run_demo
from tests.helpers import wait_for

DEMO = DEMO_CONFIG
PROMPT = "in another terminal: "
IDLE = "DEMO-03"  # of DEMO-01..03 and DEMO-12, the one without a vehicle at the start


async def test_the_printed_rollout_command_works_as_pasted(tmp_path: Path) -> None:
    out = io.StringIO()
    parts: list[DemoParts] = []

    def ready(demo: DemoParts) -> None:
        # Before the fleet's first move: no bus ever parks at IDLE, so the canary need not
        # wait for a session to end (the others are busy; a rollout never interrupts them).
        plug_in = demo.depot.plug_in

        async def elsewhere(charger_id: str, *args: Any, **kwargs: Any) -> None:
            if charger_id != IDLE:
                await plug_in(charger_id, *args, **kwargs)

        demo.depot.plug_in = elsewhere  # type: ignore[method-assign]
        parts.append(demo)

    demo = asyncio.create_task(run_demo(DEMO, chargers=4, speed=60, out=out, on_ready=ready))
    try:
        await wait_for(lambda: bool(parts), timeout=30, message="the demo to start")
        app = parts[0].app
        line = next(x for x in out.getvalue().splitlines() if PROMPT in x)
        command = shlex.split(line.split(PROMPT, 1)[1])
        assert command[:3] == [sys.executable, "-m", "sitectl"]
        # As a user would paste it: another directory, no venv on the PATH.
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["PATH"] = "/usr/bin:/bin"
        done = await asyncio.to_thread(
            subprocess.run, command, cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        rollouts = next(c for c in app.components if c.name == "firmware-rollouts")
        [rollout] = rollouts.list()
        # The idle charger reboots into the new version; sitectl and the status line see it.
        await wait_for(
            lambda: app.state.chargers[IDLE].firmware_version == FIRMWARE_VERSION,
            timeout=30,
            message="the idle charger on the new version",
        )
        await wait_for(
            lambda: f"| firmware 1.0.0 ×3, {FIRMWARE_VERSION} ×1 |" in out.getvalue(),
            timeout=10,
            message="the version in the status line",
        )
        assert rollouts.status(rollout["id"])["counts"]["installed"] >= 1
        app.stop()
        assert await asyncio.wait_for(demo, 60) == 0
    finally:
        if not demo.done():
            demo.cancel()
