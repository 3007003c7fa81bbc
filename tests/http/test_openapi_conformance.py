"""The running API conforms to its own OpenAPI document (schemathesis, property-based)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from sitectl.control.fleet import Fleet
from sitectl.http.openapi import openapi_document
from sitectl.http.server import HttpServer
from sitectl.sessions import SESSIONS_MIGRATION, SessionLog
from sitectl.store import MIGRATIONS, Store
from sitectl.uplink.commands import handle_command
from sitectl.utilization.store import UTILIZATION_MIGRATION
from tests.http.test_api import TOKEN, config, populated

schema = schemathesis.openapi.from_dict(openapi_document(config()))


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real HTTP server on a free port, in its own thread and event loop."""
    ready = threading.Event()
    holder: dict = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        cfg = config()
        state = populated(cfg)
        store = Store(
            tmp_path_factory.mktemp("api") / "s.sqlite",
            migrations=(*MIGRATIONS, SESSIONS_MIGRATION, UTILIZATION_MIGRATION),
        )
        cfg.storage.path = store.path  # the utilization report reads it
        server = HttpServer(
            cfg,
            state,
            sessions=SessionLog(store, state),
            port=0,
            commands=lambda n, p: handle_command(state, cfg, n, p),
            fleet=Fleet(cfg, state),
        )
        # The fuzzer posts hundreds of wrong tokens to /api/login; locked out, every later
        # call would be a 429. The lockout itself is tested in test_login.py.
        server.logins.max_failures = 1_000_000
        holder["server"] = server

        async def main() -> None:
            task = asyncio.create_task(server.run())
            await server.ready.wait()
            ready.set()
            holder["task"] = task
            await asyncio.gather(task, return_exceptions=True)

        loop.run_until_complete(main())
        store.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "the HTTP server did not start"
    yield f"http://127.0.0.1:{holder['server'].port}"
    holder["loop"].call_soon_threadsafe(holder["task"].cancel)
    thread.join(10)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_api_conforms_to_its_openapi_document(case, api_url: str) -> None:
    # The writes also apply rules no static schema can state (an expiry in the past or more
    # than 7 days ahead, a limit above that node's rating, a session that has ended): they are
    # refused with 422, so "every schema-valid body is accepted" cannot hold for them; nor for
    # the utilization report's window (from before to, a calendar date like Feb 30). Every
    # other check runs on every operation.
    semantic = case.method == "POST" or case.path == "/api/reports/utilization"
    excluded = [positive_data_acceptance] if semantic else []
    case.call_and_validate(
        base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=excluded
    )
