"""Fixtures for the firmware tests: origins, a store with the firmware tables, caches, and a
whole depot on loopback (stub CSMS, sitectl's OCPP server, the firmware server, interceptor and
rollout manager, simulated chargers that download)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sitectl.config import Config
from sitectl.firmware import (
    FIRMWARE_MIGRATION,
    FanoutListener,
    FirmwareCache,
    FirmwareInterceptor,
    FirmwareServer,
    FirmwareTracker,
    RolloutManager,
)
from sitectl.ocpp.observe import StateObserver
from sitectl.ocpp.server import OcppServer
from sitectl.sim.csms import StubCsms
from sitectl.state import SiteState
from sitectl.store import MIGRATIONS, Store
from tests.firmware.support import FwSimCharger, Origin
from tests.helpers import free_port, wait_for
from tests.ocpp.conftest import PASSWORD, csms, start_server

__all__ = ["PASSWORD", "Depot", "csms", "fw_config", "start_server"]


def fw_config(
    tmp_path: Path,
    chargers: list[dict[str, Any]] | None = None,
    upstream_url: str | None = None,
    ocpp: dict[str, Any] | None = None,
    **firmware: Any,
) -> Config:
    """A depot config with a firmware section (cache in the test's temp dir)."""
    return Config.model_validate(
        {
            "site": {"id": "test", "limit_kw": 1000, "phase_limit_a": 2000},
            "circuits": [{"id": "feeder", "limit_a": 2000}],
            "chargers": [
                {"circuit": "feeder", "max_current_a": 32, "password": PASSWORD, **c}
                for c in chargers or []
            ],
            "ocpp": {"listen_host": "127.0.0.1", "upstream_url": upstream_url, **(ocpp or {})},
            "firmware": {"cache_dir": str(tmp_path / "fw-cache"), **firmware},
            "mqtt": {"enabled": False},
            "http": {"enabled": False},
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store with every migration plus the firmware one."""
    opened = Store(tmp_path / "sitectl.sqlite", migrations=(*MIGRATIONS, FIRMWARE_MIGRATION))
    yield opened
    opened.close()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    """An HTTP origin on loopback (see `Origin`)."""
    server = await Origin().start()
    yield server
    await server.stop()


@pytest.fixture
async def make_cache(store: Store, tmp_path: Path) -> AsyncIterator[Callable[..., FirmwareCache]]:
    """Build caches on the test's store (several: a restart is a new cache on the same store)."""
    caches: list[FirmwareCache] = []

    def make(config: Config | None = None, **kwargs: Any) -> FirmwareCache:
        kwargs.setdefault("retry_delay_s", 0.01)
        kwargs.setdefault("read_timeout_s", 5.0)
        cache = FirmwareCache(store, (config or fw_config(tmp_path)).firmware, **kwargs)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()


@dataclass
class Depot:
    """Everything of a firmware test depot, wired as production will wire it."""

    config: Config
    store: Store
    state: SiteState
    ocpp: OcppServer
    url: str
    csms: StubCsms
    origin: Origin
    cache: FirmwareCache
    files: FirmwareServer
    interceptor: FirmwareInterceptor
    tracker: FirmwareTracker
    rollouts: RolloutManager
    sims: dict[str, FwSimCharger] = field(default_factory=dict)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def charger(self, identity: str, **kwargs: Any) -> FwSimCharger:
        """Connect and boot a simulated charger; returns once its protocols were read."""
        version = self.config.charger(identity).ocpp_version  # type: ignore[union-attr]
        sim = FwSimCharger(identity, version, self.url, password=PASSWORD, **kwargs)
        await sim.connect()
        self.sims[identity] = sim
        await sim.boot()
        await wait_for(
            lambda: self.interceptor.protocols(identity) is not None,
            message=f"{identity}'s transfer protocols",
        )
        return sim


@pytest.fixture
async def depot(
    store: Store, csms: StubCsms, start_server: Any, origin: Origin, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Build a `Depot` for a list of chargers and firmware settings."""
    built: list[Depot] = []
    runners: list[Any] = []

    async def build(chargers: list[dict[str, Any]], **firmware: Any) -> Depot:
        port = free_port()
        firmware.setdefault("base_url", f"http://127.0.0.1:{port}")
        config = fw_config(tmp_path, chargers, csms.url, **firmware)
        state = SiteState(config)
        tracker = FirmwareTracker()
        listener = FanoutListener(StateObserver(state), tracker)
        server, url = await start_server(config, listener=listener, store=store)
        cache = FirmwareCache(store, config.firmware, retry_delay_s=0.01, read_timeout_s=5.0)
        files = FirmwareServer(cache, config)
        runners.append(await files.start("127.0.0.1", port))
        interceptor = FirmwareInterceptor(cache, files, state, config, call=server.call)
        server.csms_rewriters.append(interceptor.rewrite)
        rollouts = RolloutManager(
            store,
            state,
            cache,
            files,
            server.call,
            config,
            protocols=interceptor.protocols,
            tracker=tracker,
        )
        made = Depot(
            config,
            store,
            state,
            server,
            url,
            csms,
            origin,
            cache,
            files,
            interceptor,
            tracker,
            rollouts,
        )
        for component in (cache, interceptor, rollouts):
            made.tasks.append(asyncio.create_task(component.run(), name=component.name))
        built.append(made)
        return made

    yield build
    for made in built:
        for sim in made.sims.values():
            await sim.close()
        for task in made.tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    for runner in runners:
        await runner.cleanup()
