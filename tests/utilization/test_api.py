"""``GET /api/reports/utilization`` on a real socket, over a store written by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from sitectl.config import Config
from sitectl.http.server import HttpServer
from sitectl.state import SiteState
from sitectl.store import Store
from sitectl.utilization.models import UtilizationReport
from tests.utilization.support import Raw, depot
from tests.utilization.test_report_raw import T0, WINDOW, write_two_hours

#: The state's injected clock: a day after the records.
NOW = T0 + timedelta(days=1)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def served(config: Config) -> tuple[HttpServer, asyncio.Task[None]]:
    server = HttpServer(config, SiteState(config, clock=lambda: NOW), port=0)
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.ready.wait(), 10)
    return server, task


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[str]:
    config = depot(tmp_path)
    store = Store(config.storage.path)
    write_two_hours(Raw(store))
    server, task = await served(config)
    try:
        yield f"http://127.0.0.1:{server.port}/api/reports/utilization"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


async def get(url: str, **params: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as response:
        return response.status, await response.json()


async def test_the_report_over_a_window(api: str) -> None:
    status, body = await get(api, **{"from": iso(T0), "to": iso(T0 + timedelta(seconds=WINDOW))})
    assert status == 200, body
    report = UtilizationReport.model_validate(body)
    cp11 = next(c for c in report.connectors if (c.charger, c.connector) == ("CP1", 1))
    charging = 28 * 60 + 5 * 60 + 25 * 30  # as in test_report_raw
    assert cp11.seconds.charging == pytest.approx(charging)
    assert cp11.energy_kwh == pytest.approx(7.29)
    feeder = next(c for c in report.circuits if c.node == "feeder")
    assert feeder.share_at_limit == pytest.approx(30 / 110, abs=1e-4)
    assert body["from"] == iso(T0)


async def test_the_default_window_is_the_last_seven_days_of_the_state_clock(api: str) -> None:
    status, body = await get(api)
    assert status == 200, body
    assert body["to"] == iso(NOW)
    assert body["window_s"] == 7 * 86400
    assert body["totals"]["energy_kwh"] == pytest.approx(7.29)
    status, relative = await get(api, **{"from": "-2d", "to": "now"})
    assert status == 200 and relative["totals"]["energy_kwh"] == pytest.approx(7.29)


@pytest.mark.parametrize(
    ("params", "code", "field"),
    [
        ({"from": "yesterday-ish"}, 400, "from"),
        ({"to": ""}, 400, "to"),
        ({"to": "x" * 100}, 400, "to"),
        ({"from": "now", "to": "-1d"}, 422, "from"),
        ({"from": "-2000d"}, 422, "from"),
    ],
)
async def test_bad_windows_are_refused_saying_why(api: str, params, code: int, field: str) -> None:
    status, body = await get(api, **params)
    assert (status, body.get("field")) == (code, field), body
    assert body["error"]


async def test_without_a_store_it_says_so(tmp_path: Path) -> None:
    config = depot(tmp_path)  # nothing written: no file yet
    server, task = await served(config)
    try:
        status, body = await get(f"http://127.0.0.1:{server.port}/api/reports/utilization")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{server.port}/api/openapi.json") as response,
        ):
            document = await response.json()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert status == 503 and "no store" in body["error"]
    assert "/api/reports/utilization" in document["paths"]
    assert "UtilizationReport" in document["components"]["schemas"]
