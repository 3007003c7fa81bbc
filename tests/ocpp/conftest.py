"""Fixtures for OCPP tests on real sockets: a stub CSMS and a running sitectl OCPP server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sitectl.config import Config
from sitectl.ocpp.server import OcppServer
from sitectl.sim.csms import StubCsms
from sitectl.store import Store

PASSWORD = "charger-password-0001"


def depot_config(chargers: list[dict[str, Any]], upstream_url: str | None, **ocpp: Any) -> Config:
    """A depot with the given chargers on one generous feeder."""
    return Config.model_validate(
        {
            "site": {"id": "test", "limit_kw": 1000, "phase_limit_a": 2000},
            "circuits": [{"id": "feeder", "limit_a": 2000}],
            "chargers": [
                {"circuit": "feeder", "max_current_a": 32, "password": PASSWORD, **c}
                for c in chargers
            ],
            "ocpp": {"listen_host": "127.0.0.1", "upstream_url": upstream_url, **ocpp},
            "mqtt": {"enabled": False},
            "http": {"enabled": False},
        }
    )


@pytest.fixture
async def csms() -> AsyncIterator[StubCsms]:
    async with StubCsms() as stub:
        yield stub


class Recorder:
    """Collects router events from every link (the listener)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.upstream: list[tuple[str, bool]] = []
        self.charger: list[tuple[str, bool]] = []

    def link_events(self, link, events) -> None:
        self.events += [(link.identity, e) for e in events]

    def link_upstream(self, link, connected: bool) -> None:
        self.upstream.append((link.identity, connected))

    def link_charger(self, link, connected: bool) -> None:
        self.charger.append((link.identity, connected))

    def link_frame(self, link, side, inbound: bool, text: str) -> None:
        pass


@pytest.fixture
async def start_server(tmp_path) -> AsyncIterator[Callable[..., Any]]:
    """Start sitectl's OCPP server for a config; returns (server, base URL).

    The server gets a store in the test's temp dir (journal, authorization cache), as in
    production; pass ``store=None`` for a plain proxy.
    """
    running: list[asyncio.Task] = []
    stores: list[Store] = []

    async def start(config: Config, listener: Any = None, **kwargs: Any):
        if "store" not in kwargs:
            kwargs["store"] = Store(tmp_path / f"sitectl-{len(stores)}.sqlite")
            stores.append(kwargs["store"])
        server = OcppServer(config, listener=listener, port=0, **kwargs)
        task = asyncio.create_task(server.run())
        running.append(task)
        ready = asyncio.create_task(server.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start-up error
        assert ready in done, "OCPP server did not start"
        scheme = "wss" if config.ocpp.security_profile >= 2 else "ws"
        return server, f"{scheme}://127.0.0.1:{server.port}{config.ocpp.path}"

    yield start
    for task in running:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for store in stores:
        store.close()
