"""Real parts for the firmware tests: an HTTP origin, an FTP origin, chargers that download.

- `Origin`: an aiohttp server on loopback serving random images, counting every request, with
  faults on demand (a connection cut after N bytes, a lying Content-Length, error statuses,
  gzip). Range and If-Range like a real file server.
- `FtpOrigin`: a small passive-mode FTP server (USER/PASS/TYPE/SIZE/EPSV/PASV/REST/RETR).
- `FwSimCharger`: the downloading simulated charger, `sitectl.sim.firmware.FirmwareSimCharger`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass

from aiohttp import web

from sitectl.sim.firmware import Download, FirmwareSimCharger

__all__ = [
    "Download",
    "FtpOrigin",
    "FwSimCharger",
    "Origin",
    "Seen",
    "image_bytes",
    "md5",
    "sha256",
]


def image_bytes(size: int, seed: int = 1) -> bytes:
    """`size` random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ------------------------------------------------------------------------------------------------
# HTTP origin


@dataclass
class Seen:
    """One request the origin received."""

    path: str
    method: str
    range: str | None
    if_range: str | None
    user_agent: str
    status: int = 0
    sent: int = 0


class Origin:
    """An HTTP origin on loopback with faults on demand."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[Seen] = []
        self.cut_after: dict[str, list[int]] = {}  # path -> cut points, one per request
        self.extra_length: dict[str, int] = {}  # path -> bytes claimed beyond the real length
        self.status: dict[str, list[int]] = {}  # path -> statuses to answer, one per request
        self.gzip: set[str] = set()
        self.port = 0
        self._runner: web.AppRunner | None = None

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def seen(self, path: str | None = None, sitectl: bool | None = None) -> list[Seen]:
        """Requests (for a path; only sitectl's or only the chargers' ones)."""
        return [
            r
            for r in self.requests
            if (path is None or r.path == path)
            and (sitectl is None or r.user_agent.startswith("sitectl/") == sitectl)
        ]

    async def start(self) -> Origin:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        seen = Seen(
            path,
            request.method,
            request.headers.get("Range"),
            request.headers.get("If-Range"),
            request.headers.get("User-Agent", ""),
        )
        self.requests.append(seen)
        statuses = self.status.get(path)
        if statuses:
            seen.status = statuses.pop(0)
            return web.Response(status=seen.status, text="origin says no\n")
        data = self.files.get(path)
        if data is None:
            seen.status = 404
            return web.Response(status=404, text="no such file\n")
        etag = f'"{sha256(data)[:20]}"'
        start, status = 0, 200
        headers = {"ETag": etag, "Content-Type": "application/octet-stream"}
        wanted = request.headers.get("Range")
        if wanted and (seen.if_range is None or seen.if_range == etag):
            first = int(wanted.removeprefix("bytes=").split("-")[0])
            if first >= len(data):
                seen.status = 416
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            start, status = first, 206
            headers["Content-Range"] = f"bytes {first}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if path in self.gzip:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body) + self.extra_length.get(path, 0)
        seen.status = status
        await response.prepare(request)
        cuts = self.cut_after.get(path)
        limit = cuts.pop(0) if cuts else None
        view = memoryview(body)
        for offset in range(0, len(body), 65536):
            chunk = view[offset : offset + 65536]
            if limit is not None and seen.sent + len(chunk) > limit:
                chunk = chunk[: max(0, limit - seen.sent)]
            await response.write(bytes(chunk))
            seen.sent += len(chunk)
            if limit is not None and seen.sent >= limit:
                break
        if limit is not None or path in self.extra_length:
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return response
        await response.write_eof()
        return response


# ------------------------------------------------------------------------------------------------
# FTP origin


class FtpOrigin:
    """A passive-mode FTP server for one test: files by path, every command recorded."""

    def __init__(self, files: dict[str, bytes], epsv: bool = True) -> None:
        self.files = files
        self.epsv = epsv
        self.commands: list[str] = []
        self.cut_after: list[int] = []  # one per RETR: close the data connection after N bytes
        self.port = 0
        self._server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"ftp://127.0.0.1:{self.port}/{path}"

    async def start(self) -> FtpOrigin:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(text: str) -> None:
            writer.write(f"{text}\r\n".encode())

        say("220-test FTP origin")
        say("220 ready")
        rest = 0
        data_ready: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        listener: asyncio.Server | None = None
        try:
            while line := await reader.readline():
                command, _, argument = line.decode().strip().partition(" ")
                self.commands.append(f"{command} {argument}".strip())
                command = command.upper()
                if command == "USER":
                    say("331 password please")
                elif command == "PASS":
                    say("230 logged in")
                elif command == "TYPE":
                    say("200 binary")
                elif command == "SIZE":
                    if argument in self.files:
                        say(f"213 {len(self.files[argument])}")
                    else:
                        say("550 no such file")
                elif command in ("EPSV", "PASV"):
                    if command == "EPSV" and not self.epsv:
                        say("500 EPSV not understood")
                        continue

                    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                        await data_ready.put((r, w))

                    listener = await asyncio.start_server(accept, "127.0.0.1", 0)
                    port = listener.sockets[0].getsockname()[1]
                    if command == "EPSV":
                        say(f"229 Entering Extended Passive Mode (|||{port}|)")
                    else:  # advertise a private address: the client must ignore it
                        say(f"227 Entering Passive Mode (10,9,8,7,{port // 256},{port % 256})")
                elif command == "REST":
                    rest = int(argument)
                    say("350 restarting")
                elif command == "RETR":
                    data = self.files.get(argument)
                    if data is None:
                        say("550 no such file")
                        continue
                    say("150 opening binary connection")
                    await writer.drain()
                    _, data_writer = await asyncio.wait_for(data_ready.get(), 5)
                    body = data[rest:]
                    rest = 0
                    cut = self.cut_after.pop(0) if self.cut_after else None
                    data_writer.write(body if cut is None else body[:cut])
                    await data_writer.drain()
                    data_writer.close()
                    say("226 done" if cut is None else "426 connection closed; transfer aborted")
                elif command == "QUIT":
                    say("221 bye")
                    break
                else:
                    say("502 not implemented")
                await writer.drain()
        finally:
            if listener is not None:
                listener.close()
            writer.close()


FwSimCharger = FirmwareSimCharger
