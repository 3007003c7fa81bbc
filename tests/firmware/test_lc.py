"""PublishFirmware / UnpublishFirmware on sitectl's own 2.0.1 identity, against a small CSMS built
on the ``ocpp`` library (the stub CSMS has no PublishFirmwareStatusNotification handler)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from ocpp.routing import on
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Server, ServerConnection, serve

from sitectl.firmware import FirmwareCache, FirmwareServer, LocalControllerClient
from sitectl.security_events import (
    INSECURE_FIRMWARE_URL,
    INVALID_FIRMWARE,
    INVALID_LOGIN,
    SecurityEventLog,
)
from tests.firmware.conftest import fw_config
from tests.firmware.support import Origin, image_bytes, md5
from tests.helpers import free_port, wait_for


class _CsmsSide(ChargePoint201):
    def __init__(self, identity: str, connection: Any, csms: MiniCsms) -> None:
        super().__init__(identity, connection)
        self.csms = csms

    @on("BootNotification")
    def boot(self, charging_station: dict, reason: str, **kwargs: Any) -> Any:
        self.csms.boots.append((charging_station, reason))
        now = datetime.now(UTC).isoformat()
        return result201.BootNotification(
            current_time=now, interval=self.csms.interval, status="Accepted"
        )

    @on("Heartbeat")
    def heartbeat(self, **kwargs: Any) -> Any:
        self.csms.heartbeats += 1
        return result201.Heartbeat(current_time=datetime.now(UTC).isoformat())

    @on("SecurityEventNotification")
    def security_event(self, type: str, timestamp: str, **kwargs: Any) -> Any:
        self.csms.security.append((type, timestamp, kwargs.get("tech_info")))
        return result201.SecurityEventNotification()

    @on("PublishFirmwareStatusNotification")
    def publish_status(self, status: str, **kwargs: Any) -> Any:
        self.csms.statuses.append((status, kwargs.get("location"), kwargs.get("request_id")))
        return result201.PublishFirmwareStatusNotification()


@dataclass
class MiniCsms:
    """The CSMS end of the local controller's own connection."""

    port: int
    interval: int = 300
    boots: list[tuple[dict, str]] = field(default_factory=list)
    heartbeats: int = 0
    statuses: list[tuple[str, Any, Any]] = field(default_factory=list)
    security: list[tuple[str, str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    point: _CsmsSide | None = None
    server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/csms"

    async def start(self) -> None:
        self.server = await serve(self._handle, "127.0.0.1", self.port, subprotocols=["ocpp2.0.1"])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.point = None

    async def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        self.paths.append(connection.request.path)
        point = _CsmsSide("lc", connection, self)
        self.point = point
        with contextlib.suppress(Exception):
            await point.start()

    async def call(self, payload: Any) -> Any:
        assert self.point is not None
        return await self.point.call(payload)

    def status_names(self, request_id: int) -> list[str]:
        return [s for s, _, r in self.statuses if r == request_id]


@dataclass
class Rig:
    csms: MiniCsms
    lc: LocalControllerClient
    cache: FirmwareCache
    files: FirmwareServer
    origin: Origin


@pytest.fixture
async def rig(origin: Origin, store, tmp_path) -> AsyncIterator[Rig]:
    csms = MiniCsms(free_port(), interval=1)
    await csms.start()
    http_port = free_port()
    config = fw_config(
        tmp_path,
        upstream_url=csms.url,
        ocpp={"local_controller_identity": "SITECTL LC", "upstream_reconnect_max_s": 1},
        base_url=f"http://127.0.0.1:{http_port}",
    )
    cache = FirmwareCache(store, config.firmware, retry_delay_s=0.01)
    files = FirmwareServer(cache, config)
    runner = await files.start("127.0.0.1", http_port)
    lc = LocalControllerClient(config, cache, files)
    task = asyncio.create_task(lc.run())
    await wait_for(lc.connected.is_set, message="LC booted")
    yield Rig(csms, lc, cache, files, origin)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await cache.close()
    await runner.cleanup()
    await csms.stop()


async def get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def test_boot_heartbeat_and_identity(rig: Rig) -> None:
    assert rig.csms.paths == ["/csms/SITECTL%20LC"]  # the identity, percent-encoded (T5)
    station, reason = rig.csms.boots[0]
    assert station["model"] == "sitectl" and reason == "PowerUp"
    await wait_for(lambda: rig.csms.heartbeats >= 1, timeout=5, message="a heartbeat")


async def test_publish_and_unpublish(rig: Rig) -> None:
    data = image_bytes(1_500_000, seed=90)
    url = rig.origin.add("vendor/fw-5.0.bin", data)
    answer = await rig.csms.call(
        call201.PublishFirmware(location=url, checksum=md5(data).upper(), request_id=11)
    )
    assert answer.status == "Accepted"
    await wait_for(lambda: rig.csms.status_names(11)[-1:] == ["Published"], message="published")
    expected = ["Downloading", "Downloaded", "ChecksumVerified", "Published"]
    assert rig.csms.status_names(11) == expected
    [location] = rig.csms.statuses[-1][1]
    assert location.startswith(rig.files.base_url) and len(location) <= 512
    assert await get(location) == (200, data)
    assert rig.cache.pinned(rig.cache.lookup(url).sha256)

    answer = await rig.csms.call(call201.UnpublishFirmware(checksum=md5(data)))
    assert answer.status == "Unpublished"
    assert (await get(location))[0] == 404
    assert not rig.cache.pinned(rig.cache.lookup(url).sha256)
    answer = await rig.csms.call(call201.UnpublishFirmware(checksum=md5(data)))
    assert answer.status == "NoFirmware"


async def test_invalid_checksum_download_failure_and_rejection(rig: Rig) -> None:
    data = image_bytes(300_000, seed=91)
    url = rig.origin.add("fw.bin", data)
    await rig.csms.call(call201.PublishFirmware(location=url, checksum="0" * 32, request_id=21))
    await wait_for(lambda: "InvalidChecksum" in rig.csms.status_names(21))
    assert rig.csms.status_names(21) == ["Downloading", "Downloaded", "InvalidChecksum"]

    missing = rig.origin.url("missing.bin")
    await rig.csms.call(
        call201.PublishFirmware(location=missing, checksum="1" * 32, request_id=22, retries=0)
    )
    await wait_for(lambda: "DownloadFailed" in rig.csms.status_names(22))
    assert rig.csms.status_names(22) == ["Downloading", "DownloadFailed"]

    for location, checksum in [(url, "not-an-md5"), ("sftp://x/fw.bin", "2" * 32)]:
        answer = await rig.csms.call(
            call201.PublishFirmware(location=location, checksum=checksum, request_id=23)
        )
        assert answer.status == "Rejected" and answer.status_info["reason_code"] == "InvalidValue"
    assert rig.csms.status_names(23) == []


async def test_unpublish_during_the_download(rig: Rig) -> None:
    checksum = md5(rig.origin.files.setdefault("slow.bin", image_bytes(1000, seed=92)))
    rig.origin.status["slow.bin"] = [503] * 3  # the first attempt fails; the retry waits 1 s
    await rig.csms.call(
        call201.PublishFirmware(
            location=rig.origin.url("slow.bin"),
            checksum=checksum,
            request_id=31,
            retries=1,
            retry_interval=1,
        )
    )
    await wait_for(lambda: rig.csms.status_names(31) == ["Downloading"])
    answer = await rig.csms.call(call201.UnpublishFirmware(checksum=checksum))
    assert answer.status == "DownloadOngoing"
    await wait_for(lambda: rig.csms.status_names(31)[-1:] == ["Published"], timeout=10)


async def test_reconnects_and_boots_again(rig: Rig) -> None:
    await rig.csms.stop()
    await wait_for(lambda: not rig.lc.connected.is_set(), message="disconnected")
    await rig.csms.start()
    await wait_for(rig.lc.connected.is_set, timeout=10, message="reconnected")
    assert len(rig.csms.boots) == 2


async def test_own_security_events_reach_the_csms_in_order_also_after_a_reconnect(rig: Rig) -> None:
    log = SecurityEventLog()
    log.listeners.append(rig.lc.security_event)
    log.record(INVALID_LOGIN, "OCPP: 5 failed logins as CP1 from 10.0.0.9 in 60 s")
    log.record(INVALID_FIRMWARE, "x" * 400)  # longer than techInfo allows: cut, not refused
    await wait_for(lambda: len(rig.csms.security) == 2, message="both events at the CSMS")
    assert [t for t, _, _ in rig.csms.security] == [INVALID_LOGIN, INVALID_FIRMWARE]
    assert len(rig.csms.security[1][2]) == 255
    # Raised while the CSMS is away: kept and sent once the LC has booted again.
    await rig.csms.stop()
    await wait_for(lambda: not rig.lc.connected.is_set(), message="disconnected")
    log.record(INSECURE_FIRMWARE_URL, "https://origin/fw.bin: redirected to http")
    await rig.csms.start()
    await wait_for(lambda: len(rig.csms.security) == 3, timeout=10, message="the queued event")
    assert rig.csms.security[2][0] == INSECURE_FIRMWARE_URL
