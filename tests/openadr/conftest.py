"""The stub VTN (real socket, checked against the OpenAPI document) and a VEN configured for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sitectl.config import Config
from sitectl.openadr.ven import OpenAdrVen
from sitectl.state import SiteState
from tests.openadr.vtn import StubVtn


@pytest.fixture
async def vtn() -> AsyncIterator[StubVtn]:
    stub = StubVtn()
    await stub.start()
    try:
        yield stub
    finally:
        await stub.stop()
    # Everything sitectl sent, and everything the stub answered, is what the document says.
    assert stub.errors == []


def at(minutes: float) -> str:
    """A time `minutes` from now (UTC, RFC 3339): never a literal date."""
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=minutes)
    return moment.isoformat().replace("+00:00", "Z")


def limit_interval(
    interval_id: int, kw: float | Any, start: str | None = None, duration: str | None = None
) -> dict:
    period = {k: v for k, v in (("start", start), ("duration", duration)) if v is not None}
    interval: dict[str, Any] = {
        "id": interval_id,
        "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [kw]}],
    }
    if period:
        interval["intervalPeriod"] = period
    return interval


KW = [
    {
        "objectType": "EVENT_PAYLOAD_DESCRIPTOR",
        "payloadType": "IMPORT_CAPACITY_LIMIT",
        "units": "KW",
    }
]


def ven_config(vtn: StubVtn, tmp_path: Path, **openadr: Any) -> Config:
    settings: dict[str, Any] = {
        "enabled": True,
        "vtn_url": vtn.base_url,
        "client_id": vtn.client_id,
        "client_secret": vtn.client_secret,
        "ven_name": "depot-north",
        "programs": [{"name": "flex"}],
        "failsafe_kw": 150,
        "poll_interval_s": 3600,  # tests read when they want, or wake the VEN
        "unreachable_after_s": 60,
        "request_timeout_s": 2,
    }
    settings.update(openadr)
    return Config.model_validate(
        {
            "site": {"id": "depot", "limit_kw": 500, "phase_limit_a": 800, "meter": "grid-meter"},
            "devices": [{"name": "grid-meter", "profile": "eastron-sdm630", "host": "127.0.0.1"}],
            "storage": {"path": str(tmp_path / "s.sqlite")},
            "mqtt": {"enabled": False},
            "http": {"enabled": False},
            "grid_signals": {"openadr": settings},
        }
    )


@pytest.fixture
def make_ven(vtn: StubVtn, tmp_path: Path) -> Iterator[Callable[..., tuple[OpenAdrVen, SiteState]]]:
    """Builds VENs for the stub VTN (``clock``: the state's; the rest: ``grid_signals.openadr``)."""
    made: list[OpenAdrVen] = []

    def make(clock: Callable[[], datetime] | None = None, **openadr: Any):
        cfg = ven_config(vtn, tmp_path, **openadr)
        state = SiteState(cfg, clock=clock) if clock is not None else SiteState(cfg)
        ven = OpenAdrVen(cfg, state)
        made.append(ven)
        return ven, state

    yield make
    for ven in made:
        ven.client.close()


@contextlib.asynccontextmanager
async def running(ven: OpenAdrVen) -> AsyncIterator[asyncio.Task]:
    """The VEN as the app runs it (its loops, its webhook), cancelled at the end."""
    task = asyncio.create_task(ven.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class FakeClock:
    """UTC now, moved on by the test (the board and the VEN read it; no waiting)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
