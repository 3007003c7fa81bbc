"""SIGKILL of sitectl mid-outage and mid-replay: nothing lost, nothing reordered.

sitectl runs as a real process (`sitectl run`); the stub CSMS and the simulated charger run in
the test. After a kill the charger reconnects, as real chargers do, and its journal is replayed
on its new upstream connection.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sitectl.sim.charger import SimCharger
from sitectl.sim.csms import StubCsms
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "charger-password-0001"


class Sitectl:
    """`sitectl run` in a subprocess, on a config in `directory`."""

    def __init__(self, directory: Path, csms_url: str) -> None:
        self.port = free_port()
        self.config = directory / "site.yaml"
        self.config.write_text(
            textwrap.dedent(f"""\
            site: {{id: kill-test, limit_kw: 100, phase_limit_a: 160, non_ev_max_a: 1}}
            chargers:
              - {{id: CP1, circuit: grid, max_current_a: 32, password: {PASSWORD}}}
            ocpp:
              listen_host: 127.0.0.1
              listen_port: {self.port}
              upstream_url: {csms_url}
              offline: {{unknown_id_policy: accept}}
            mqtt: {{enabled: false}}
            http: {{enabled: false}}
            storage: {{path: {directory / "sitectl.sqlite"}}}
            """)
        )
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sitectl",
                "--log-level",
                "WARNING",
                "run",
                "-c",
                str(self.config),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


async def connect(sitectl: Sitectl) -> SimCharger:
    sim = SimCharger("CP1", "1.6", sitectl.url, PASSWORD)

    async def try_connect() -> bool:
        try:
            await sim.connect()
        except OSError:
            return False
        return True

    await wait_for(try_connect, timeout=30, interval=0.1, message="sitectl to accept CP1")
    return sim


def transaction_messages(csms: StubCsms) -> list[tuple[str, int | None]]:
    """(action, energy Wh) of the transaction messages the CSMS received, in order."""
    out = []
    for frame in csms.frames("CP1", "in"):
        message = json.loads(frame)
        if message[0] != 2 or message[2] not in (
            "StartTransaction",
            "MeterValues",
            "StopTransaction",
        ):
            continue
        payload = message[3]
        if message[2] == "MeterValues" and "transactionId" not in payload:
            continue  # not of a transaction (e.g. answering sitectl's TriggerMessage on connect)
        if message[2] == "StartTransaction":
            out.append(("StartTransaction", payload["meterStart"]))
        elif message[2] == "StopTransaction":
            out.append(("StopTransaction", payload["meterStop"]))
        else:
            out.append(("MeterValues", int(payload["meterValue"][0]["sampledValue"][0]["value"])))
    return out


@pytest.fixture
async def rig(tmp_path):
    csms = StubCsms()
    await csms.start()
    sitectl = Sitectl(tmp_path, csms.url)
    yield csms, sitectl
    sitectl.stop()
    await csms.stop()


async def test_sigkill_mid_outage_loses_nothing(rig) -> None:
    csms, sitectl = rig
    sitectl.start()
    sim = await connect(sitectl)
    await sim.boot()
    await csms.stop()
    await wait_for(lambda: sim.ws.close_code is None, message="charger still connected")
    started = await sim.start_transaction(1, "BUS-1", 0)
    for k in range(1, 4):
        await sim.meter_values(1, [16.0] * 3, k * 100, started.transaction_id)
    sitectl.kill()
    await sim.close()
    sitectl.start()
    sim = await connect(sitectl)
    # Accepted by the CSMS before the kill: still accepted, from the store.
    assert (await sim.boot()).status == "Accepted"
    for k in range(4, 6):
        await sim.meter_values(1, [16.0] * 3, k * 100, started.transaction_id)
    await sim.stop_transaction(started.transaction_id, 600)
    await csms.start()
    await wait_for(
        lambda: ("StopTransaction", 600) in transaction_messages(csms),
        timeout=30,
        message="the journal to be replayed",
    )
    await sim.close()
    assert transaction_messages(csms) == [("StartTransaction", 0)] + [
        ("MeterValues", k * 100) for k in range(1, 6)
    ] + [("StopTransaction", 600)]
    ids = {
        json.loads(f)[3].get("transactionId")
        for f in csms.frames("CP1", "in")
        if '"MeterValues"' in f or '"StopTransaction"' in f
    }
    assert ids == {1000}


async def test_sigkill_mid_replay_duplicates_at_most_the_message_in_flight(rig) -> None:
    csms, sitectl = rig
    sitectl.start()
    sim = await connect(sitectl)
    await sim.boot()
    await csms.stop()
    started = await sim.start_transaction(1, "BUS-1", 0)
    for k in range(1, 21):
        await sim.meter_values(1, [16.0] * 3, k * 100, started.transaction_id)
    await sim.stop_transaction(started.transaction_id, 2100)
    csms.reply_delay_s = 0.05  # a slow CSMS, so the kill lands inside the replay
    await csms.start()
    await wait_for(
        lambda: len(transaction_messages(csms)) >= 6,
        timeout=30,
        message="the replay to be under way",
    )
    sitectl.kill()
    await sim.close()
    csms.reply_delay_s = 0.0
    sitectl.start()
    sim = await connect(sitectl)
    await wait_for(
        lambda: ("StopTransaction", 2100) in transaction_messages(csms),
        timeout=30,
        message="the rest of the journal",
    )
    await sim.close()
    received = transaction_messages(csms)
    expected = (
        [("StartTransaction", 0)]
        + [("MeterValues", k * 100) for k in range(1, 21)]
        + [("StopTransaction", 2100)]
    )
    deduplicated = [m for i, m in enumerate(received) if i == 0 or m != received[i - 1]]
    assert deduplicated == expected, received
    assert len(received) - len(expected) <= 1
