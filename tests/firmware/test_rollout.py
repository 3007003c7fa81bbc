"""Rollouts with real chargers through sitectl: sessions wait, canary first, halts, restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sitectl.firmware import FirmwareServer, RolloutError, RolloutManager
from sitectl.firmware.rollout import update_request
from sitectl.sim.charger import SimEv
from tests.firmware.conftest import Depot, fw_config
from tests.firmware.support import FwSimCharger, image_bytes, md5, sha256
from tests.helpers import wait_for

MB = 1024 * 1024


def chargers(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"CP{i:02d}", "ocpp_version": "1.6" if i % 2 else "2.0.1"} for i in range(1, n + 1)
    ]


def step(d: Depot, rollout_id: int, charger: str) -> str:
    status = d.rollouts.status(rollout_id)
    assert status is not None
    return next(c["state"] for c in status["chargers"] if c["charger"] == charger)


async def start_sims(d: Depot, **special: dict[str, Any]) -> dict[str, FwSimCharger]:
    ids = [c.id for c in d.config.chargers]
    sims = await asyncio.gather(*(d.charger(i, **special.get(i, {})) for i in ids))
    return dict(zip(ids, sims, strict=True))


async def plug_in(d: Depot, sim: FwSimCharger) -> None:
    await sim.plug_in(1, SimEv())
    await wait_for(lambda: d.state.chargers[sim.identity].connectors[1].session is not None)


def installed_at(sim: FwSimCharger) -> float:
    """When it ran the new firmware: its boot after the install (before it says Installed)."""
    return min([t for _, t in sim.boots] + [t for s, t in sim.statuses if s == "Installed"])


async def test_sessions_wait_canary_first_at_most_max_parallel(depot) -> None:
    d: Depot = await depot(chargers(10), canary_count=1, max_parallel=3)
    data = image_bytes(MB, seed=80)
    url = d.origin.add("fw-4.0.bin", data)
    sims = await start_sims(d)
    in_session = ("CP02", "CP05", "CP08")
    for cid in in_session:
        await plug_in(d, sims[cid])

    rollout = d.rollouts.start(url, "all", md5=md5(data))
    await wait_for(
        lambda: d.rollouts.status(rollout)["counts"]["installed"] == 7, timeout=20, message="7 done"
    )
    status = d.rollouts.status(rollout)
    assert status["state"] == "running" and status["counts"]["queued"] == 3
    for cid in in_session:
        assert sims[cid].updates == []  # never asked while its bus charges
        row = next(c for c in status["chargers"] if c["charger"] == cid)
        assert row["detail"] == "waiting: in a session"

    # Canary first: nobody else was asked before CP01 had installed.
    [canary] = [c["charger"] for c in status["chargers"] if c["canary"]]
    assert canary == "CP01"
    done = {cid: sim for cid, sim in sims.items() if cid not in in_session}
    assert all(
        sim.updates[0][2] > installed_at(sims["CP01"])
        for sim in done.values()
        if sim is not sims["CP01"]
    )
    # At most max_parallel in flight at any moment (sent → Installed).
    events = sorted(
        [(sim.updates[0][2], 1) for sim in done.values()]
        + [(installed_at(sim), -1) for sim in done.values()]
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert 1 <= peak <= 3

    # Each session's end releases its charger, and only that one.
    for cid in ("CP05", "CP02", "CP08"):
        assert sims[cid].updates == []
        ending = time.monotonic()
        await sims[cid].unplug(1)  # StopTransaction: the session ends
        await wait_for(lambda c=cid: step(d, rollout, c) == "installed", message=f"{cid} done")
        assert sims[cid].updates[0][2] > ending
        assert all(sims[o].updates == [] for o in in_session if step(d, rollout, o) == "queued")
    await wait_for(lambda: d.rollouts.status(rollout)["state"] == "done")
    assert d.rollouts.status(rollout)["reason"] == "10 installed, 0 failed, 0 skipped"
    assert {sim.downloads[0].sha256 for sim in sims.values()} == {sha256(data)}
    assert len(d.origin.seen()) == 1  # sitectl's one download; the chargers fetched from sitectl
    # sitectl's own requests per version (F1, F4): 2.0.1 with requestId and retrieveDateTime.
    for sim in sims.values():
        action, kwargs, _ = sim.updates[0]
        assert action == "UpdateFirmware"
        if sim.version == "2.0.1":
            assert kwargs["request_id"] >= 100_000 and kwargs["firmware"]["retrieve_date_time"]
        else:
            assert kwargs["location"].startswith(d.files.base_url) and kwargs["retrieve_date"]
    assert d.cache.pinned(sha256(data)) is False  # released when done


async def test_a_failing_canary_halts_the_rollout(depot) -> None:
    d: Depot = await depot(chargers(4), canary_count=1, max_parallel=4)
    url = d.origin.add("fw.bin", image_bytes(500_000, seed=81))
    sims = await start_sims(d, CP01={"fail_with": "InstallationFailed"})
    rollout = d.rollouts.start(url, ["CP01", "CP02", "CP03", "CP04"])
    await wait_for(lambda: d.rollouts.status(rollout)["state"] == "halted")
    status = d.rollouts.status(rollout)
    assert status["reason"].startswith("canary CP01 failed")
    canary = status["chargers"][0]
    assert canary["state"] == "failed" and canary["charger_status"] == "InstallationFailed"
    assert [c["state"] for c in status["chargers"][1:]] == ["queued"] * 3
    assert all(sims[c].updates == [] for c in ("CP02", "CP03", "CP04"))
    assert ("firmware_failed", "CP01") in d.state.alarms
    assert ("firmware_rollout_halted", f"rollout-{rollout}") in d.state.alarms
    # Nothing in flight: the pin is released (as the halt settles, not necessarily with it).
    await wait_for(
        lambda: not d.cache.pinned(status["sha256"]), timeout=5, message="the pin released"
    )


async def test_failure_share_halts_after_the_canaries(depot) -> None:
    d: Depot = await depot(chargers(3), canary_count=0, max_parallel=1, halt_failure_share=0.4)
    url = d.origin.add("fw.bin", image_bytes(300_000, seed=82))
    sims = await start_sims(d, CP02={"fail_with": "DownloadFailed"})
    rollout = d.rollouts.start(url, "all")
    await wait_for(lambda: d.rollouts.status(rollout)["state"] == "halted")
    assert [c["state"] for c in d.rollouts.status(rollout)["chargers"]] == [
        "installed",
        "failed",
        "queued",
    ]
    assert "1 of 2 finished chargers failed (50% > 40%" in d.rollouts.status(rollout)["reason"]
    assert sims["CP03"].updates == []


async def test_updating_chargers_and_a_restart(depot) -> None:
    d: Depot = await depot(chargers(3), canary_count=0, max_parallel=1)
    url = d.origin.add("fw.bin", image_bytes(300_000, seed=83))
    sims = await start_sims(d)
    gate = sims["CP01"].install_gate = asyncio.Event()
    rollout = d.rollouts.start(url, "all")
    await wait_for(
        lambda: d.rollouts.status(rollout)["chargers"][0]["charger_status"] == "Installing"
    )
    assert d.rollouts.updating() == {"CP01"}  # the control loop budgets it at 0 A
    assert d.rollouts.in_progress() == {"CP01"}

    # sitectl restarts: the manager stops; a new one reads the same store. (What it had is
    # read once it has stopped: until then an event may still update the rollout.)
    old = d.tasks.pop()
    old.cancel()
    await asyncio.gather(old, return_exceptions=True)
    before = d.rollouts.status(rollout)
    manager = RolloutManager(
        d.store, d.state, d.cache, d.files, d.ocpp.call, d.config, protocols=d.interceptor.protocols
    )
    assert manager.status(rollout) == before
    assert manager.updating() == {"CP01"}
    d.tasks.append(asyncio.create_task(manager.run()))
    gate.set()
    await wait_for(lambda: manager.status(rollout)["state"] == "done", timeout=10)
    assert [c["state"] for c in manager.status(rollout)["chargers"]] == ["installed"] * 3
    assert manager.updating() == set() and manager.list()[0]["id"] == rollout


async def test_a_session_that_outlasts_the_wait_is_skipped_never_interrupted(depot) -> None:
    d: Depot = await depot(chargers(2), canary_count=0, session_wait_max_s=0.3)
    url = d.origin.add("fw.bin", image_bytes(200_000, seed=84))
    sims = await start_sims(d)
    await plug_in(d, sims["CP02"])
    rollout = d.rollouts.start(url, "all")
    await wait_for(lambda: d.rollouts.status(rollout)["state"] == "done")
    status = d.rollouts.status(rollout)
    assert status["reason"] == "1 installed, 0 failed, 1 skipped"
    assert "in a session for over 0 s" in status["chargers"][1]["detail"]
    assert sims["CP02"].updates == []


async def test_stop_and_operator_mistakes(depot, tmp_path) -> None:
    d: Depot = await depot(chargers(3))
    data = image_bytes(200_000, seed=85)
    url = d.origin.add("fw.bin", data)
    sims = await start_sims(d, CP03={"model": "DC-Bus-150"})
    for sim in sims.values():
        await plug_in(d, sim)
    rollout = d.rollouts.start(url, {"ids": ["CP01", "CP02"]})
    with pytest.raises(RolloutError, match="already being updated: CP02"):
        d.rollouts.start(url, ["CP02"])
    await wait_for(lambda: d.rollouts.status(rollout)["state"] == "running")
    assert d.rollouts.stop(rollout) and not d.rollouts.stop(rollout)
    status = d.rollouts.status(rollout)
    assert status["state"] == "stopped"
    assert [c["state"] for c in status["chargers"]] == ["canceled", "canceled"]
    assert all(sim.updates == [] for sim in sims.values())

    by_model = d.rollouts.start(url, {"model": "DC-Bus-150"})
    assert [c["charger"] for c in d.rollouts.status(by_model)["chargers"]] == ["CP03"]
    for targets, text in [
        (["CP09"], "unknown charger"),
        ({"model": "nope"}, "no charger of model"),
        ("some", "targets must be"),
        ([], "no charger to update"),
    ]:
        with pytest.raises(RolloutError, match=text):
            d.rollouts.start(url, targets)
    with pytest.raises(RolloutError, match="32 hex"):
        d.rollouts.start(url, ["CP01"], md5="xyz")
    with pytest.raises(RolloutError, match="scheme"):
        d.rollouts.start("sftp://x/y", ["CP01"])
    config = fw_config(tmp_path, chargers(1))
    no_base = RolloutManager(
        d.store, d.state, d.cache, FirmwareServer(d.cache, config), d.ocpp.call, config
    )
    with pytest.raises(RolloutError, match="base_url"):
        no_base.start(url, "all")

    wrong = d.rollouts.start(url, ["CP01"], md5="0" * 32)
    await wait_for(lambda: d.rollouts.status(wrong)["state"] == "failed")
    assert "MD5" in d.rollouts.status(wrong)["reason"]
    assert ("firmware_rollout_halted", f"rollout-{wrong}") in d.state.alarms
    # A SHA-256 (preferred to the MD5, issue #22.6) is checked the same way.
    with pytest.raises(RolloutError, match="64 hex"):
        d.rollouts.start(url, ["CP01"], sha256="0" * 32)
    wrong = d.rollouts.start(url, ["CP01"], sha256="0" * 64)
    await wait_for(lambda: d.rollouts.status(wrong)["state"] == "failed")
    assert "SHA-256" in d.rollouts.status(wrong)["reason"]


def test_update_requests_per_version() -> None:
    now = __import__("datetime").datetime(2026, 11, 27, 5, 0, tzinfo=__import__("datetime").UTC)
    assert update_request("1.6", "http://x/f", 1, now) == (
        "UpdateFirmware",
        {
            "location": "http://x/f",
            "retrieveDate": "2026-11-27T05:00:00Z",
            "retries": 3,
            "retryInterval": 60,
        },
    )
    action, payload = update_request("1.6", "http://x/f", 9, now, "c2ln", "PEM")
    assert action == "SignedUpdateFirmware" and payload["requestId"] == 9
    assert payload["firmware"]["signature"] == "c2ln"
    action, payload = update_request("2.0.1", "http://x/f", 10, now)
    assert action == "UpdateFirmware" and payload["firmware"] == {
        "location": "http://x/f",
        "retrieveDateTime": "2026-11-27T05:00:00Z",
    }
