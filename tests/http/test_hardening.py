"""The HTTP side against a LAN prober: token guessing, slow clients, headers (issue #22)."""

from __future__ import annotations

import logging

from aiohttp.test_utils import TestClient, TestServer

from sitectl.http.server import HttpServer
from tests.http.test_api import TOKEN, config, populated


async def test_token_guessing_is_limited_logged_sparingly_and_alarmed(caplog) -> None:
    cfg = config(open_reads=False)
    state = populated(cfg)
    server = HttpServer(cfg, state)
    caplog.set_level(logging.WARNING, logger="sitectl")
    async with TestClient(TestServer(server.app)) as client:
        statuses = []
        for k in range(40):
            response = await client.get("/api/site", headers={"Authorization": f"Bearer x{k}"})
            statuses.append(response.status)
        assert statuses == [401] * 10 + [429] * 30
        good = await client.get("/api/site", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status == 429 and int(good.headers["Retry-After"]) > 0
    assert ("http_login_failures", "127.0.0.1") in state.alarms
    lines = [r for r in caplog.records if r.name == "sitectl.http.server"]
    assert len(lines) <= 7
