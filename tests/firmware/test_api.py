"""Firmware through the local HTTP API: a rollout started, followed and stopped over REST, on a
depot of real chargers that download from sitectl; the refusals name the field at fault."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from sitectl.http.server import HttpServer
from sitectl.uplink.commands import handle_command
from tests.firmware.conftest import Depot
from tests.firmware.support import image_bytes, md5, sha256
from tests.helpers import wait_for

TOKEN = "firmware-api-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api() -> AsyncIterator[Callable[[Depot], Any]]:
    """A test client on an `HttpServer` wired to a depot's cache, tracker and rollouts."""
    clients: list[TestClient] = []

    async def make(d: Depot) -> TestClient:
        config = d.config.model_copy(
            update={"http": d.config.http.model_copy(update={"token": SecretStr(TOKEN)})}
        )

        def commands(name: str, payload: dict[str, Any]) -> dict[str, Any]:
            return handle_command(d.state, config, name, payload, rollouts=d.rollouts)

        server = HttpServer(
            config,
            d.state,
            commands=commands,
            tracker=d.tracker,
            cache=d.cache,
            rollouts=d.rollouts,
        )
        client = TestClient(TestServer(server.app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def rollout(client: TestClient, rollout_id: int) -> dict[str, Any]:
    response = await client.get(f"/api/firmware/rollouts/{rollout_id}")
    assert response.status == 200
    return await response.json()


async def test_a_rollout_over_rest_from_start_to_installed(depot, api) -> None:
    d: Depot = await depot(
        [{"id": "CP01", "ocpp_version": "1.6"}, {"id": "CP02", "ocpp_version": "2.0.1"}]
    )
    client = await api(d)
    data = image_bytes(300_000, seed=91)
    url = d.origin.add("fw-5.0.bin", data)
    for identity in ("CP01", "CP02"):
        await d.charger(identity)
    before = await (await client.get("/api/firmware")).json()
    assert before["enabled"] is True and before["rollouts"] == []
    assert before["cache"]["images"] == [] and before["base_url"] == d.config.firmware.base_url

    started = await client.post(
        "/api/firmware/rollouts",
        json={"url": url, "targets": "all", "md5": md5(data)},
        headers=AUTH,
    )
    assert started.status == 201, await started.text()
    rollout_id = (await started.json())["rollout"]["id"]
    await wait_for(
        lambda: d.rollouts.status(rollout_id)["state"] == "done", timeout=20, message="installed"
    )
    done = await rollout(client, rollout_id)
    assert [(c["charger"], c["state"]) for c in done["chargers"]] == [
        ("CP01", "installed"),
        ("CP02", "installed"),
    ]
    assert done["counts"]["installed"] == 2 and done["sha256"] == sha256(data)

    listing = await (await client.get("/api/firmware")).json()
    [image] = listing["cache"]["images"]
    assert image["sha256"] == sha256(data) and image["size_bytes"] == len(data)
    assert [r["id"] for r in listing["rollouts"]] == [rollout_id]
    assert listing["rollouts"][0]["chargers"] is None  # the list is per rollout only

    async def statuses() -> list[str]:
        detail = await (await client.get("/api/chargers/CP02")).json()
        return [
            e["status"]
            for e in detail["firmware_events"]
            if e["action"].endswith("StatusNotification")
        ]

    # Done at the boot into the new version; Installed follows that boot.
    await wait_for(lambda: _last_is(statuses(), "Installed"), message="Installed after the reboot")
    detail = await (await client.get("/api/chargers/CP02")).json()
    assert detail["firmware_version"] == d.sims["CP02"].downloads[0].version
    update = next(e for e in detail["firmware_events"] if e["action"] == "UpdateFirmware")
    assert update["origin"] == "sitectl" and update["status"] == "Accepted"
    # The charger's download token is not shown, in the event nor in the frames.
    assert update["location"] == (
        f"{d.config.firmware.base_url}/firmware/{sha256(data)}/<token>/fw-5.0.bin"
    )
    token = d.files.token("CP02", sha256(data))
    assert token not in await (await client.get("/api/chargers/CP02")).text()
    assert any("<token>" in f["text"] for f in detail["recent_frames"])
    assert detail["firmware_update"] is None


async def test_stop_over_rest_and_refusals(depot, api) -> None:
    d: Depot = await depot([{"id": "CP01", "ocpp_version": "1.6"}])
    client = await api(d)
    sim = await d.charger("CP01")
    sim.install_gate = __import__("asyncio").Event()  # hold the install: stays in flight
    url = d.origin.add("fw.bin", image_bytes(100_000, seed=92))

    for body, status, field in [
        ({"url": url, "targets": ["CP09"]}, 422, "targets"),
        ({"url": url, "targets": "all", "md5": "xyz"}, 422, "md5"),
        ({"url": "sftp://x/f.bin", "targets": "all"}, 422, "url"),
        ({"targets": "all"}, 422, "url"),
        ({"url": url, "targets": "all", "action": "stop"}, 422, "action"),
        ({"url": url, "targets": "all", "reboot": True}, 422, "reboot"),
    ]:
        refused = await client.post("/api/firmware/rollouts", json=body, headers=AUTH)
        assert refused.status == status, (body, await refused.text())
        assert (await refused.json())["field"] == field, body
    unauthorised = await client.post("/api/firmware/rollouts", json={"url": url, "targets": "all"})
    assert unauthorised.status == 401
    assert d.rollouts.list() == []

    started = await client.post(
        "/api/firmware/rollouts", json={"url": url, "targets": ["CP01"]}, headers=AUTH
    )
    rollout_id = (await started.json())["rollout"]["id"]
    await wait_for(lambda: "CP01" in d.rollouts.in_progress(), timeout=10, message="in flight")
    chargers = await (await client.get("/api/chargers")).json()
    assert chargers[0]["firmware_update"] in ("downloading", "installing")

    assert (await client.post(f"/api/firmware/rollouts/{rollout_id}/stop")).status == 401
    stopped = await client.post(f"/api/firmware/rollouts/{rollout_id}/stop", headers=AUTH)
    assert stopped.status == 200 and (await stopped.json())["rollout"]["state"] == "stopped"
    again = await client.post(f"/api/firmware/rollouts/{rollout_id}/stop", headers=AUTH)
    assert again.status == 422 and "nothing to stop" in (await again.json())["error"]
    missing = await client.post("/api/firmware/rollouts/99/stop", headers=AUTH)
    assert missing.status == 404 and (await missing.json())["field"] == "rollout_id"
    assert (await client.get("/api/firmware/rollouts/99")).status == 404
    assert (await client.get("/api/firmware/rollouts/abc")).status == 404
    huge = "9" * 5000  # beyond what int() parses: still a 404, not a 500
    assert (await client.get(f"/api/firmware/rollouts/{huge}")).status == 404
    assert (await client.post(f"/api/firmware/rollouts/{huge}/stop", headers=AUTH)).status == 404
    sim.install_gate.set()


async def _last_is(statuses: Any, status: str) -> bool:
    found = await statuses
    return bool(found) and found[-1] == status
