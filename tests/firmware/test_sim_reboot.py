"""The simulated charger reboots into the firmware it installed (real sockets through sitectl).

A rollout is only visible as a new version: after installing, the charger drops its connection,
comes back, and its BootNotification carries the image's version (1.6 ``firmwareVersion``,
2.0.1 ``chargingStation.firmwareVersion`` with reason ``FirmwareUpdate``); then ``Installed``.
"""

from __future__ import annotations

import json
import time

import pytest

from sitectl.sim.charger import SimEv
from sitectl.sim.firmware import image_version, sim_image
from tests.firmware.conftest import Depot
from tests.firmware.support import FwSimCharger, image_bytes
from tests.helpers import wait_for


def boots(sim: FwSimCharger) -> list[dict]:
    """The payload of every BootNotification the charger sent, in order."""
    calls = [json.loads(frame) for frame in sim.sent()]
    return [c[3] for c in calls if c[0] == 2 and c[2] == "BootNotification"]


def version_in(boot: dict) -> str:
    return boot.get("firmwareVersion") or boot["chargingStation"]["firmwareVersion"]


def test_image_version() -> None:
    assert image_version(sim_image("2.1.0", b"\x00" * 100)) == "2.1.0"
    other = image_version(image_bytes(1000, seed=5))
    assert other.startswith("sim-") and other != image_version(image_bytes(1000, seed=6))


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_charger_boots_into_the_version_it_installed(depot, version: str) -> None:
    d: Depot = await depot([{"id": "CP01", "ocpp_version": version}], canary_count=0)
    url = d.origin.add("fw-2.1.0.bin", sim_image("2.1.0", image_bytes(300_000, seed=11)))
    sim = await d.charger("CP01")
    assert d.state.chargers["CP01"].firmware_version == "1.0.0"

    rollout = d.rollouts.start(url, "all")
    await wait_for(lambda: d.rollouts.status(rollout)["state"] == "done", message="done")
    await wait_for(lambda: sim.statuses[-1][0] == "Installed", message="Installed")

    first, second = boots(sim)
    assert version_in(first) == "1.0.0" and version_in(second) == "2.1.0"
    if version == "2.0.1":
        assert (first["reason"], second["reason"]) == ("PowerUp", "FirmwareUpdate")
    assert sim.firmware_version == "2.1.0"
    assert d.state.chargers["CP01"].firmware_version == "2.1.0"
    row = d.rollouts.status(rollout)["chargers"][0]
    assert row["state"] == "installed" and "1.0.0 → 2.1.0" in row["detail"]
    rebooting = ["InstallRebooting"] if version == "2.0.1" else []
    assert [s for s, _ in sim.statuses] == [
        "Downloading",
        "Downloaded",
        "Installing",
        *rebooting,
        "Installed",
    ]
    # The boot came between Installing and Installed, on a new connection.
    [(_, booted)] = sim.boots
    installing = next(t for s, t in sim.statuses if s == "Installing")
    installed = next(t for s, t in sim.statuses if s == "Installed")
    assert installing < booted < installed
    await wait_for(lambda: d.state.chargers["CP01"].connected, message="connected again")


async def test_signed_update_reboots_too(depot) -> None:
    d: Depot = await depot([{"id": "CP01", "ocpp_version": "1.6"}])
    url = d.origin.add("fw.bin", sim_image("3.0.0", image_bytes(200_000, seed=12)))
    await d.cache.ensure(url)
    sim = await d.charger("CP01")
    sim.begin_update(d.files.local_url("CP01", d.cache.lookup(url)), 9, signed=True)
    await wait_for(lambda: sim.statuses and sim.statuses[-1][0] == "Installed", message="done")
    assert [version_in(b) for b in boots(sim)] == ["1.0.0", "3.0.0"]
    assert "InstallRebooting" in [s for s, _ in sim.statuses]


async def test_no_install_while_a_vehicle_charges(depot) -> None:
    """F10: downloaded during a session, installed (and rebooted) only after it."""
    d: Depot = await depot([{"id": "CP01", "ocpp_version": "2.0.1"}])
    url = d.origin.add("fw.bin", sim_image("2.2.0", image_bytes(200_000, seed=13)))
    await d.cache.ensure(url)
    sim = await d.charger("CP01")
    await sim.plug_in(1, SimEv())
    sim.begin_update(d.files.local_url("CP01", d.cache.lookup(url)), 3, signed=False)
    await wait_for(lambda: [s for s, _ in sim.statuses] == ["Downloading", "Downloaded"])
    assert sim.updating and sim.boots == []
    left = time.monotonic()
    await sim.unplug(1)
    await wait_for(lambda: not sim.updating, message="the update to end")
    assert sim.statuses[-1][0] == "Installed"
    installing = next(t for s, t in sim.statuses if s == "Installing")
    assert installing > left and sim.boots[0][1] > left
    assert sim.firmware_version == "2.2.0"
