"""The lockout's 429 is declared wherever the server can answer it (issue #22.2/#22.8)."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from sitectl.http.openapi import openapi_document
from sitectl.http.server import HttpServer
from tests.http.test_api import config, populated

COMMITTED = Path(__file__).resolve().parents[2] / "configs" / "openapi.json"


def test_every_operation_that_checks_a_token_declares_429_with_retry_after() -> None:
    document = openapi_document()
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if "401" in responses:
                checked += 1
                assert "429" in responses, f"{method.upper()} {path}"
                if path != "/api/login":
                    assert "Retry-After" in responses["429"]["headers"], f"{method} {path}"
    assert checked >= 10
    assert json.loads(COMMITTED.read_text())["paths"] == json.loads(json.dumps(document["paths"]))


async def test_a_locked_out_address_gets_the_declared_429_on_reads_and_writes() -> None:
    cfg = config(open_reads=False)
    server = HttpServer(cfg, populated(cfg))
    paths = openapi_document(cfg)["paths"]
    async with TestClient(TestServer(server.app)) as client:
        for k in range(10):
            await client.get("/api/site", headers={"Authorization": f"Bearer wrong-{k}"})
        for method, url, template in (
            ("get", "/api/site", "/api/site"),
            ("get", "/api/chargers/CP1", "/api/chargers/{charger_id}"),
            ("post", "/api/overrides", "/api/overrides"),
        ):
            response = await client.request(method, url, headers={"Authorization": "Bearer x"})
            assert response.status == 429, url
            assert int(response.headers["Retry-After"]) >= 1
            assert "429" in paths[template][method]["responses"], url
