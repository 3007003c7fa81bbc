"""A simulated charger that really updates its firmware (tests and the demo).

On UpdateFirmware (1.6, 2.0.1) or SignedUpdateFirmware (1.6 security whitepaper) it downloads the
image over HTTP, resuming with Range and If-Range when its connection is cut, and reports
Downloading → Downloaded → Installing with the status notification of its version (reference
F2). Like a real charger it installs only when no vehicle charges (F10), then reboots into the
new firmware: 2.0.1 and signed 1.6 say ``InstallRebooting`` first; the connection drops, and
after `reboot_s` it connects again, sends a BootNotification with the new ``firmwareVersion``
(2.0.1: reason ``FirmwareUpdate``), then ``Installed``. The version is the image's own
(`image_version`). FTP locations are recorded, not fetched. Faults on demand: `fail_with`,
`cut_after`, `install_gate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import websockets
from ocpp.routing import after, on
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from sitectl.sim.charger import SimCharger, _Point16, _Point201
from sitectl.tasks import cancel_all

__all__ = ["BadDownload", "Download", "FirmwareSimCharger", "image_version", "sim_image"]

#: How a simulated firmware image starts: this, the version, a newline (a real image carries
#: its version in a header the charger reads, too).
IMAGE_MAGIC = b"sitectl-sim-firmware "
#: Connection attempts after a reboot (sitectl may still be closing the old connection).
_RECONNECT_ATTEMPTS = 50


class BadDownload(Exception):
    """The server's answer is not the image (a status or an encoding a charger would refuse)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sim_image(version: str, payload: bytes) -> bytes:
    """A firmware image for the simulator: the header with `version`, then `payload`."""
    return IMAGE_MAGIC + version.encode() + b"\n" + payload


def image_version(data: bytes) -> str:
    """The version a simulated charger runs after installing `data`.

    The header's version for a `sim_image`; for any other bytes one derived from their hash,
    so that every different image is a different version.
    """
    if data.startswith(IMAGE_MAGIC):
        line = data[len(IMAGE_MAGIC) : data.find(b"\n", 0, 200)]
        with contextlib.suppress(UnicodeDecodeError):
            if line and (version := line.decode("ascii").strip()):
                return version
    return f"sim-{_sha256(data)[:12]}"


class _FwPoint16(_Point16):
    @on("UpdateFirmware")
    def update_firmware(self, **kwargs: Any) -> Any:
        self.sim.updates.append(("UpdateFirmware", kwargs, time.monotonic()))
        self.sim.handled.calls.append(("UpdateFirmware", kwargs))
        return result16.UpdateFirmware()

    @after("UpdateFirmware")
    def after_update_firmware(self, location: str, **kwargs: Any) -> None:
        self.sim.begin_update(location, None, signed=False)

    @on("SignedUpdateFirmware")
    def signed_update_firmware(self, **kwargs: Any) -> Any:
        self.sim.updates.append(("SignedUpdateFirmware", kwargs, time.monotonic()))
        self.sim.handled.calls.append(("SignedUpdateFirmware", kwargs))
        return result16.SignedUpdateFirmware(status="Accepted")

    @after("SignedUpdateFirmware")
    def after_signed_update(self, request_id: int, firmware: dict, **kwargs: Any) -> None:
        self.sim.begin_update(firmware["location"], request_id, signed=True)


class _FwPoint201(_Point201):
    @on("UpdateFirmware")
    def update_firmware(self, **kwargs: Any) -> Any:
        self.sim.updates.append(("UpdateFirmware", kwargs, time.monotonic()))
        self.sim.handled.calls.append(("UpdateFirmware", kwargs))
        return result201.UpdateFirmware(status="Accepted")

    @after("UpdateFirmware")
    def after_update_firmware(self, request_id: int, firmware: dict, **kwargs: Any) -> None:
        self.sim.begin_update(firmware["location"], request_id, signed=False)


@dataclass
class Download:
    """One image a simulated charger fetched."""

    location: str
    sha256: str
    size: int
    requests: list[tuple[int, str | None]] = field(default_factory=list)  # (status, Range)
    version: str = ""  # the firmware version in the image (`image_version`)


class FirmwareSimCharger(SimCharger):
    """A simulated charger that downloads firmware and reports its progress.

    Args (beyond `SimCharger`'s):
        fail_with: ``DownloadFailed`` or ``InstallationFailed`` to fail the update that way.
        cut_after: drop the first download's connection after this many bytes, then resume
            with Range.
        protocols: its ``SupportedFileTransferProtocols`` / ``FileTransferProtocols`` value.
        reboot_s: how long the reboot into new firmware keeps it offline.
    """

    def __init__(
        self,
        *args: Any,
        fail_with: str | None = None,
        cut_after: int | None = None,
        protocols: str | None = "HTTP,HTTPS",
        reboot_s: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fail_with = fail_with
        self.reboot_s = reboot_s
        #: From UpdateFirmware to the end of the install (the demo's fleet keeps away).
        self.updating = False
        self.boots: list[tuple[str, float]] = []  # (firmware version, monotonic) per reboot
        self.cut_after = cut_after
        self.updates: list[tuple[str, dict[str, Any], float]] = []
        self.downloads: list[Download] = []
        self.statuses: list[tuple[str, float]] = []
        self.install_gate: asyncio.Event | None = None  # set by a test to hold the install
        self.error: Exception | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        if protocols is not None:
            self.config_keys["SupportedFileTransferProtocols"] = protocols
            self.config_keys["OCPPCommCtrlr.FileTransferProtocols"] = protocols

    def point_class(self) -> type[_Point16] | type[_Point201]:
        return _FwPoint16 if self.version == "1.6" else _FwPoint201

    async def close(self) -> None:
        await cancel_all(self._tasks)
        await super().close()

    def begin_update(self, location: str, request_id: int | None, signed: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._update(location, request_id, signed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def update_locations(self) -> list[str]:
        """The location of every update request received, in order."""
        return [
            kwargs["firmware"]["location"] if kwargs.get("firmware") else kwargs["location"]
            for _, kwargs, _ in self.updates
        ]

    async def _update(self, location: str, request_id: int | None, signed: bool) -> None:
        if not location.startswith("http"):
            return  # an FTP URL: this simulator records it and stops there
        self.updating = True
        try:
            await self._download_and_install(location, request_id, signed)
        finally:
            self.updating = False

    async def _download_and_install(
        self, location: str, request_id: int | None, signed: bool
    ) -> None:
        await self.firmware_status("Downloading", request_id, signed)
        try:
            download = await self._download(location)
        except (aiohttp.ClientError, BadDownload, TimeoutError) as exc:
            self.error = exc
            await self.firmware_status("DownloadFailed", request_id, signed)
            return
        self.downloads.append(download)
        if self.fail_with == "DownloadFailed":
            await self.firmware_status("DownloadFailed", request_id, signed)
            return
        await self.firmware_status("Downloaded", request_id, signed)
        while self.plugs:  # F10: never install (and reboot) while a vehicle charges
            await asyncio.sleep(0.1)
        await self.firmware_status("Installing", request_id, signed)
        if self.install_gate is not None:
            await self.install_gate.wait()
        if self.fail_with == "InstallationFailed":
            await self.firmware_status("InstallationFailed", request_id, signed)
            return
        if signed or self.version != "1.6":  # plain 1.6 has no InstallRebooting
            await self.firmware_status("InstallRebooting", request_id, signed)
        await self.reboot(download.version)
        await self.firmware_status("Installed", request_id, signed)

    async def reboot(self, firmware_version: str | None = None) -> None:
        """Restart: the connection drops, and after `reboot_s` it comes back and boots.

        Args:
            firmware_version: what it runs from now on (``None``: the same as before).
        """
        await SimCharger.close(self)  # not our close(): that would cancel this very update
        await asyncio.sleep(self.reboot_s)  # the simulated boot time
        if firmware_version:
            self.firmware_version = firmware_version
        for attempt in range(_RECONNECT_ATTEMPTS):
            try:
                await self.connect()
                break
            except (OSError, websockets.InvalidHandshake, TimeoutError):
                if attempt == _RECONNECT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.1)
        self.boots.append((self.firmware_version, time.monotonic()))
        await self.boot(reason="FirmwareUpdate")

    async def _download(self, location: str) -> Download:
        data = bytearray()
        requests: list[tuple[int, str | None]] = []
        etag = None
        async with aiohttp.ClientSession(headers={"User-Agent": "sim-charger"}) as session:
            cut = self.cut_after
            while True:
                headers = {"Accept-Encoding": "gzip"}  # sitectl must ignore it (no compression)
                if data:
                    headers["Range"] = f"bytes={len(data)}-"
                    if etag:
                        headers["If-Range"] = etag
                async with session.get(location, headers=headers) as response:
                    requests.append((response.status, headers.get("Range")))
                    if response.status not in (200, 206):
                        raise BadDownload(f"HTTP {response.status} from {location}")
                    if "Content-Encoding" in response.headers:
                        raise BadDownload("the image came compressed: its bytes are not the file's")
                    if response.status == 200:
                        data.clear()
                    etag = response.headers.get("ETag")
                    while chunk := await response.content.read(
                        65536 if cut is None else min(65536, cut - len(data))
                    ):
                        data += chunk
                        if cut is not None and len(data) >= cut:
                            break
                    if cut is not None and len(data) >= cut:
                        cut = None  # drop this connection; resume on a new one
                        continue
                    break
        image = bytes(data)
        return Download(location, _sha256(image), len(image), requests, image_version(image))

    async def firmware_status(self, status: str, request_id: int | None, signed: bool) -> None:
        self.statuses.append((status, time.monotonic()))
        if self.version == "1.6" and signed:
            await self.call(call16.SignedFirmwareStatusNotification(status, request_id))
        elif self.version == "1.6":
            await self.call(call16.FirmwareStatusNotification(status))
        else:
            await self.call(call201.FirmwareStatusNotification(status, request_id))
