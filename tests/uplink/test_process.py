"""sitectl's uplink as a real process: SIGKILL makes the broker publish the Last Will, and a
restart during a broker outage loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import wait_for
from tests.uplink.support import assert_gapless, depot_config, unique_prefix

REPO = Path(__file__).resolve().parents[2]


class Runner:
    """`python -m tests.uplink.runner` on a config."""

    def __init__(self, config_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.uplink.runner", str(config_path)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.readline() == "ready"

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def alarms(self, start: int, count: int) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(f"alarms {start} {count}\n")
        self.process.stdin.flush()
        word, queued = self.readline().split()
        assert word == "queued"
        return int(queued)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


async def test_sigkill_makes_the_broker_publish_the_last_will(
    tmp_path, mosquitto, capture_factory
) -> None:
    prefix = unique_prefix()
    capture = capture_factory(mosquitto.host, mosquitto.port, prefix=prefix)
    depot_config(tmp_path, mosquitto.host, mosquitto.port, prefix)
    runner = Runner(tmp_path / "site.yaml")
    try:
        await wait_for(lambda: capture.on("status"), timeout=15, message="the birth")
        assert capture.on("status")[0].data["status"] == "online"
        runner.kill()
        await wait_for(lambda: len(capture.on("status")) == 2, message="the Last Will")
    finally:
        runner.close()
    will = capture.on("status")[1].data
    assert will["status"] == "offline" and will["reason"] == "connection lost"
    assert "seq" not in will  # composed before the fact: it cannot have a number
    # And it is what a newcomer finds.
    late = capture_factory(mosquitto.host, mosquitto.port, prefix=prefix)
    await wait_for(lambda: late.on("status"), message="retained status")
    assert late.on("status")[0].retain and late.on("status")[0].data["status"] == "offline"


async def test_restart_during_a_broker_outage_loses_nothing(
    tmp_path, broker, capture_factory
) -> None:
    capture = capture_factory(broker.host, broker.port, persistent=True, client_id="cap-restart")
    depot_config(tmp_path, broker.host, broker.port, summary_period_s=0.5)
    first = Runner(tmp_path / "site.yaml")
    try:
        await wait_for(lambda: capture.on("status"), timeout=15, message="the birth")
        broker.stop()
        assert first.alarms(0, 20) >= 20
        first.kill()
    finally:
        first.close()
    second = Runner(tmp_path / "site.yaml")  # the broker is still down
    try:
        assert second.alarms(20, 5) >= 25  # the first process's messages are still there
        broker.start()
        await wait_for(lambda: len(capture.on("alarms")) >= 25, timeout=15, message="every alarm")
    finally:
        second.close()
    unique = assert_gapless(capture.all())
    assert unique[0].data["seq"] == 1
    subjects = [m.data["subject"] for m in unique if m.topic.endswith("/alarms")]
    assert subjects == [str(n) for n in range(25)]
    births = [m for m in unique if m.topic.endswith("/status") and m.data["status"] == "online"]
    assert len(births) == 2
