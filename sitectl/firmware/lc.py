"""sitectl's own OCPP 2.0.1 identity toward the CSMS, for PublishFirmware / UnpublishFirmware.

The spec's local-controller firmware mechanism (reference F12; 2.0.1 use case L03/L04; T14: "the
LC will just be a Charging Station without EVSEs"). Rules:

- One client connection to ``<ocpp.upstream_url>/<ocpp.local_controller_identity>`` with
  subprotocol ``ocpp2.0.1``; BootNotification first, Heartbeat at the interval the CSMS gives;
  reconnect with exponential backoff and full jitter (`backoff_delays`), capped at
  ``ocpp.upstream_reconnect_max_s``.
- PublishFirmware: answered Accepted when its checksum is 32 hex digits and its URL is one sitectl
  can fetch, Rejected otherwise. Then the image is cached (``retries``/``retryInterval`` honoured,
  bounded) and verified against the MD5 over the whole file, and PublishFirmwareStatusNotification
  reports Downloading → Downloaded → ChecksumVerified → Published (with the ``location`` list), or
  DownloadFailed, InvalidChecksum, PublishFailed (cache full, no ``firmware.base_url``). The
  image is pinned while published.
- UnpublishFirmware: DownloadOngoing while that checksum is still being fetched, Unpublished when
  it was published (the pin is released), NoFirmware otherwise (L04).
- The published URL carries a per-image token; the interceptor rewrites an UpdateFirmware that
  points at it to each charger's own token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections import deque
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from ocpp.routing import after, on
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from sitectl import __version__
from sitectl.config import Config
from sitectl.firmware.cache import (
    CacheFull,
    ChecksumMismatch,
    FirmwareCache,
    FirmwareError,
    check_url,
    safe_url,
)
from sitectl.firmware.server import FirmwareServer
from sitectl.ocpp.upstream import backoff_delays, basic_auth, client_tls_context
from sitectl.security_events import OwnSecurityEvent
from sitectl.tasks import cancel_all

__all__ = ["LocalControllerClient"]

log = logging.getLogger(__name__)

#: sitectl's own security events kept for the CSMS while it is not reachable.
SECURITY_QUEUE = 100

_MD5 = re.compile(r"[0-9a-fA-F]{32}")
#: Bounds on the CSMS's retries/retryInterval for PublishFirmware (a CSMS asking for 1,000
#: retries a day apart must not keep a task alive for years).
_MAX_RETRIES = 5
_MAX_RETRY_INTERVAL_S = 600.0


class _LcPoint(ChargePoint201):
    """The ``ocpp`` library's charging-station side, with the LC's handlers."""

    def __init__(self, identity: str, connection: Any, client: LocalControllerClient) -> None:
        super().__init__(identity, connection)
        self.client = client

    @on("PublishFirmware")
    def on_publish(self, location: str, checksum: str, request_id: int, **kwargs: Any) -> Any:
        problem = self.client.publish_problem(location, checksum)
        if problem is not None:
            log.warning("PublishFirmware %d rejected: %s", request_id, problem)
            return result201.PublishFirmware(
                status="Rejected",
                status_info={"reason_code": "InvalidValue", "additional_info": problem[:512]},
            )
        return result201.PublishFirmware(status="Accepted")

    @after("PublishFirmware")
    def after_publish(
        self,
        location: str,
        checksum: str,
        request_id: int,
        retries: int | None = None,
        retry_interval: int | None = None,
        **kwargs: Any,
    ) -> None:
        if self.client.publish_problem(location, checksum) is None:
            self.client.begin_publish(location, checksum, request_id, retries, retry_interval)

    @on("UnpublishFirmware")
    def on_unpublish(self, checksum: str, **kwargs: Any) -> Any:
        return result201.UnpublishFirmware(status=self.client.unpublish(checksum))


class LocalControllerClient:
    """sitectl's own identity toward the CSMS: boot, heartbeat, Publish/UnpublishFirmware.

    Args:
        config: the configuration (``ocpp.upstream_url``, ``ocpp.local_controller_identity``,
            upstream TLS files).
        cache: the image cache.
        server: the firmware file server (publications, URLs).
        password: Basic-auth password of the LC identity toward the CSMS, if it uses one.
        ssl_context: TLS toward a ``wss://`` CSMS (default: from the ``ocpp`` upstream files).

    Raises:
        ValueError: no upstream URL or no local controller identity configured.
    """

    name = "firmware-local-controller"

    def __init__(
        self,
        config: Config,
        cache: FirmwareCache,
        server: FirmwareServer,
        *,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        ocpp = config.ocpp
        if not ocpp.upstream_url or not ocpp.local_controller_identity:
            raise ValueError("the local controller needs ocpp.upstream_url and its identity")
        self.identity = ocpp.local_controller_identity
        self.url = f"{ocpp.upstream_url}/{quote(self.identity, safe='')}"
        self.cache = cache
        self.server = server
        self._password = password
        if ssl_context is None and self.url.startswith("wss:"):
            ssl_context = client_tls_context(
                _opt(ocpp.upstream_ca_file),
                _opt(ocpp.upstream_cert_file),
                _opt(ocpp.upstream_key_file),
            )
        self._ssl = ssl_context
        self._ping_s = ocpp.ping_interval_s
        self._reconnect_max_s = ocpp.upstream_reconnect_max_s
        self._point: _LcPoint | None = None
        self._ongoing: dict[str, asyncio.Task[None]] = {}  # md5 -> publication in progress
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Set while booted and connected (tests wait on it).
        self.connected = asyncio.Event()
        self.heartbeat_interval_s: int | None = None
        #: sitectl's own security events waiting for the CSMS (issue #22.10), oldest first.
        self._security: deque[OwnSecurityEvent] = deque(maxlen=SECURITY_QUEUE)
        self._security_wake = asyncio.Event()
        #: Security events the CSMS answered (tests wait on it).
        self.security_sent = 0

    # Connection.

    async def run(self) -> None:
        """Stay connected (reconnecting with backoff) until cancelled."""
        delays = self._delays()
        try:
            while True:
                try:
                    if await self._session():
                        delays = self._delays()  # it worked for a while: start the backoff over
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                    log.warning(
                        "local controller %s: CSMS connection failed: %s: %s",
                        self.identity,
                        type(exc).__name__,
                        exc,
                    )
                delay = next(delays)
                log.info("local controller %s: reconnecting in %.1f s", self.identity, delay)
                await asyncio.sleep(delay)
        finally:
            await cancel_all(self._tasks)

    def _delays(self) -> Iterator[float]:
        return backoff_delays(1.0, self._reconnect_max_s)

    async def _session(self) -> bool:
        """One connection: returns whether it got as far as an accepted boot."""
        self.heartbeat_interval_s = None
        headers = (
            {"Authorization": basic_auth(self.identity, self._password)}
            if self._password is not None
            else {}
        )
        async with connect(
            self.url,
            subprotocols=[Subprotocol("ocpp2.0.1")],
            additional_headers=headers,
            ssl=self._ssl,
            open_timeout=10,
            ping_interval=self._ping_s,
            proxy=None,
        ) as ws:
            if ws.subprotocol != "ocpp2.0.1":
                log.error(
                    "local controller %s: the CSMS did not accept ocpp2.0.1 (got %s)",
                    self.identity,
                    ws.subprotocol,
                )
                return False
            point = _LcPoint(self.identity, ws, self)
            reader = asyncio.get_running_loop().create_task(point.start())
            try:
                booted = asyncio.get_running_loop().create_task(self._boot_and_beat(point))
                done, _ = await asyncio.wait({reader, booted}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    with contextlib.suppress(ConnectionClosed):
                        task.result()
                return self.heartbeat_interval_s is not None
            finally:
                self._point = None
                self.connected.clear()
                for task in (reader, booted):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                log.info("local controller %s: disconnected from the CSMS", self.identity)

    async def _boot_and_beat(self, point: _LcPoint) -> None:
        while True:
            answer = await point.call(
                call201.BootNotification(
                    charging_station={
                        "model": "sitectl",
                        "vendor_name": "sitectl",
                        "firmware_version": __version__,
                    },
                    reason="PowerUp",
                )
            )
            interval = int(getattr(answer, "interval", 0) or 0) or 300
            if getattr(answer, "status", None) == "Accepted":
                break
            log.info(
                "local controller %s: boot %s; booting again in %d s",
                self.identity,
                getattr(answer, "status", None),
                interval,
            )
            await asyncio.sleep(interval)
        self.heartbeat_interval_s = interval
        self._point = point
        self.connected.set()
        sender = asyncio.get_running_loop().create_task(self._send_security(point))
        self._tasks.add(sender)
        sender.add_done_callback(self._tasks.discard)
        log.info(
            "local controller %s: booted at the CSMS (heartbeat every %d s)",
            self.identity,
            interval,
        )
        while True:
            await asyncio.sleep(interval)
            try:
                await point.call(call201.Heartbeat())
            except TimeoutError:
                log.warning("local controller %s: heartbeat not answered", self.identity)

    # sitectl's own security events (#22.10).

    def security_event(self, event: OwnSecurityEvent) -> None:
        """Queue one of sitectl's security events for the CSMS (bounded: the oldest go)."""
        self._security.append(event)
        self._security_wake.set()

    async def _send_security(self, point: _LcPoint) -> None:
        """Send the queued events in order while this connection lasts."""
        while self._point is point:
            while self._security and self._point is point:
                event = self._security[0]
                try:
                    await point.call(
                        call201.SecurityEventNotification(
                            type=event.type,
                            timestamp=event.at.isoformat(),
                            tech_info=event.tech_info or None,
                        )
                    )
                except TimeoutError:
                    log.warning(
                        "local controller %s: SecurityEventNotification not answered",
                        self.identity,
                    )
                    await asyncio.sleep(self._ping_s)
                    continue
                if self._security and self._security[0] is event:
                    self._security.popleft()
                self.security_sent += 1
            self._security_wake.clear()
            await self._security_wake.wait()

    # PublishFirmware / UnpublishFirmware (L03, L04).

    def publish_problem(self, location: Any, checksum: Any) -> str | None:
        """Why a PublishFirmware cannot be accepted, or None."""
        if not isinstance(checksum, str) or not _MD5.fullmatch(checksum):
            return f"checksum {str(checksum)[:40]!r} is not an MD5 (32 hex digits)"
        try:
            check_url(location)
        except FirmwareError as exc:
            return str(exc)
        return None

    def begin_publish(
        self,
        location: str,
        checksum: str,
        request_id: int,
        retries: int | None = None,
        retry_interval: int | None = None,
    ) -> None:
        """Start caching and publishing an image (after the request was accepted)."""
        md5 = checksum.lower()
        task = asyncio.get_running_loop().create_task(
            self._publish(location, md5, request_id, retries, retry_interval),
            name=f"publish firmware {md5}",
        )
        self._tasks.add(task)
        self._ongoing[md5] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if self._ongoing.get(md5) is finished:
                del self._ongoing[md5]

        task.add_done_callback(done)

    def unpublish(self, checksum: str) -> str:
        """UnpublishFirmware: ``DownloadOngoing``, ``Unpublished`` or ``NoFirmware`` (L04)."""
        md5 = checksum.lower() if isinstance(checksum, str) else ""
        if md5 in self._ongoing:
            status = "DownloadOngoing"
        elif self.server.unpublish(md5):
            status = "Unpublished"
        else:
            status = "NoFirmware"
        log.info("UnpublishFirmware %s: %s", md5, status)
        return status

    async def _publish(
        self,
        location: str,
        md5: str,
        request_id: int,
        retries: int | None,
        retry_interval: int | None,
    ) -> None:
        cached = self.cache.lookup(location)
        if cached is None or cached.md5 != md5:
            await self._notify("Downloading", request_id)
        attempts = 1 + min(max(retries or 0, 0), _MAX_RETRIES)
        pause = min(float(retry_interval or 30), _MAX_RETRY_INTERVAL_S)
        image = None
        for attempt in range(1, attempts + 1):
            try:
                image = await self.cache.ensure(location, md5)
                break
            except ChecksumMismatch as exc:
                log.warning("PublishFirmware %d: %s", request_id, exc)
                await self._notify("Downloaded", request_id)
                await self._notify("InvalidChecksum", request_id)
                return
            except CacheFull as exc:
                log.warning("PublishFirmware %d: %s", request_id, exc)
                await self._notify("PublishFailed", request_id)
                return
            except FirmwareError as exc:
                log.warning(
                    "PublishFirmware %d: %s (attempt %d of %d)", request_id, exc, attempt, attempts
                )
                if attempt < attempts:
                    await asyncio.sleep(pause)
        if image is None:
            await self._notify("DownloadFailed", request_id)
            return
        await self._notify("Downloaded", request_id)
        await self._notify("ChecksumVerified", request_id)
        published = self.server.publish(image, md5, request_id)
        if published is None:
            await self._notify("PublishFailed", request_id)
            return
        log.info(
            "PublishFirmware %d: %s published as %s", request_id, safe_url(location), published
        )
        await self._notify("Published", request_id, [published])

    async def _notify(
        self, status: str, request_id: int, location: list[str] | None = None
    ) -> None:
        point = self._point
        if point is None:
            log.warning(
                "local controller %s not connected: PublishFirmwareStatusNotification %s lost",
                self.identity,
                status,
            )
            return
        try:
            await point.call(
                call201.PublishFirmwareStatusNotification(
                    status=status, request_id=request_id, location=location
                )
            )
        except (TimeoutError, ConnectionClosed) as exc:
            log.warning(
                "PublishFirmwareStatusNotification %s for %d not delivered: %s",
                status,
                request_id,
                type(exc).__name__,
            )


def _opt(path: Any) -> str | None:
    return None if path is None else str(path)
