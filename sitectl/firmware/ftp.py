"""A minimal passive-mode FTP download, for firmware origins that are FTP servers.

Only what fetching one file needs: login (``anonymous`` unless the URL carries credentials),
``TYPE I``, ``SIZE`` for the declared length, ``EPSV`` (RFC 2428) or else ``PASV`` (RFC 959
§4.1.2; passive only, the reference's rule F7: "FTP needs passive mode"), ``REST`` to resume
(RFC 3659 §5), ``RETR``. Rules:

- The data connection always goes to the host of the control connection. The address a ``PASV``
  reply advertises is ignored: that is the usual defence against FTP bounce (RFC 2577 §3) and it
  also survives servers behind NAT that advertise their private address.
- A path with CR, LF or NUL is refused before anything is sent (no command injection).
- Replies 4xx are transient (`FtpError.permanent` false: the caller may retry), 5xx permanent.
- The URL path is taken relative to the login directory, as in RFC 1738 §3.2.2; a leading
  ``%2F`` makes it absolute.

Plain FTP only (no FTPS): the image is checked against its length and hash after the transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

__all__ = ["FtpError", "FtpTransfer", "ftp_open"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_EPSV = re.compile(r"\(([^\d])\1\1(\d+)\1\)")
_PASV = re.compile(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


async def _within(awaitable: Awaitable[T], seconds: float) -> T:
    """Await with a time limit (asyncio.timeout: wait_for can lose a cancellation in 3.11)."""
    async with asyncio.timeout(seconds):
        return await awaitable


class FtpError(Exception):
    """The FTP server refused or broke off; ``permanent`` for 5xx replies and bad URLs."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class FtpTransfer:
    """An opened RETR: where the bytes start, the declared size, and the bytes."""

    start: int
    total: int | None
    chunks: AsyncIterator[bytes]


class _Control:
    """The control connection: commands out, (code, text) replies in."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout_s = timeout_s

    async def _line(self) -> str:
        raw = await _within(self.reader.readline(), self.timeout_s)
        if not raw:
            raise FtpError("the FTP server closed the control connection", permanent=False)
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def reply(self) -> tuple[int, str]:
        """Read one reply, multi-line (``123-``...``123 ``) included."""
        text = await self._line()
        if len(text) < 3 or not text[:3].isdigit():
            raise FtpError(f"not an FTP reply: {text[:80]!r}", permanent=True)
        code = int(text[:3])
        if text[3:4] == "-":
            while True:
                line = await self._line()
                if line[:3] == text[:3] and line[3:4] in (" ", ""):
                    break
        return code, text

    async def command(self, command: str) -> tuple[int, str]:
        self.writer.write(command.encode("utf-8") + b"\r\n")
        await _within(self.writer.drain(), self.timeout_s)
        return await self.reply()

    async def expect(self, command: str, *ok: int) -> tuple[int, str]:
        code, text = await self.command(command)
        if code not in ok:
            shown = "PASS ****" if command.startswith("PASS ") else command
            raise FtpError(f"FTP {shown!r} answered {text[:120]!r}", permanent=code >= 500)
        return code, text


@asynccontextmanager
async def ftp_open(
    url: str,
    offset: int = 0,
    timeout_s: float = 60.0,
    connect_timeout_s: float = 30.0,
    chunk_size: int = 1 << 20,
) -> AsyncIterator[FtpTransfer]:
    """Open ``RETR`` of an ``ftp://`` URL, resuming at `offset` when the server allows it.

    Args:
        url: ``ftp://[user[:password]@]host[:port]/path``.
        offset: bytes already held; ``REST`` asks for the rest (``start`` tells what was granted).
        timeout_s: limit for each reply and each read on the data connection.
        connect_timeout_s: limit for each TCP connect.
        chunk_size: largest chunk yielded.

    Returns:
        A context yielding the `FtpTransfer`; iterate ``chunks`` to the end, which also checks
        the server's final ``226`` reply.

    Raises:
        FtpError: a refused command, a bad reply, a broken connection.
        OSError: the TCP connection could not be made (or broke).
    """
    parts = urlsplit(url)
    if parts.scheme != "ftp" or not parts.hostname:
        raise FtpError(f"not an ftp:// URL with a host: {url[:120]!r}", permanent=True)
    path = unquote(parts.path.lstrip("/"))
    if not path or any(c in path for c in "\r\n\0"):
        raise FtpError(f"unusable FTP path {parts.path[:120]!r}", permanent=True)
    user = unquote(parts.username) if parts.username else "anonymous"
    password = unquote(parts.password) if parts.password else "anonymous@"
    host, port = parts.hostname, parts.port or 21

    reader, writer = await _within(asyncio.open_connection(host, port), connect_timeout_s)
    control = _Control(reader, writer, timeout_s)
    data_writer: asyncio.StreamWriter | None = None
    try:
        code, text = await control.reply()
        if code != 220:
            raise FtpError(f"FTP greeting {text[:120]!r}", permanent=code >= 500)
        code, _ = await control.expect(f"USER {user}", 230, 331)
        if code == 331:
            await control.expect(f"PASS {password}", 230, 202)
        await control.expect("TYPE I", 200)
        total: int | None = None
        code, text = await control.command(f"SIZE {path}")
        if code == 213:
            with contextlib.suppress(ValueError):
                total = int(text[4:].strip())
        peer = writer.get_extra_info("peername")[0]
        code, text = await control.command("EPSV")
        if code == 229 and (found := _EPSV.search(text)):
            data_port = int(found.group(2))
        else:
            _, text = await control.expect("PASV", 227)
            found = _PASV.search(text)
            if found is None:
                raise FtpError(f"cannot read the PASV reply {text[:120]!r}", permanent=True)
            numbers = [int(g) for g in found.groups()]
            advertised = ".".join(str(n) for n in numbers[:4])
            if advertised != peer:
                log.debug("FTP server advertised %s; connecting to %s instead", advertised, peer)
            data_port = numbers[4] * 256 + numbers[5]
        data_reader, data_writer = await _within(
            asyncio.open_connection(peer, data_port), connect_timeout_s
        )
        start = 0
        if offset > 0:
            code, _ = await control.command(f"REST {offset}")
            start = offset if code == 350 else 0
        await control.expect(f"RETR {path}", 125, 150)

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                chunk = await _within(data_reader.read(chunk_size), timeout_s)
                if not chunk:
                    break
                yield chunk
            code, text = await control.reply()
            if code not in (226, 250):
                raise FtpError(f"FTP transfer ended with {text[:120]!r}", permanent=False)

        yield FtpTransfer(start, total, chunks())
        with contextlib.suppress(Exception):
            writer.write(b"QUIT\r\n")
    finally:
        for stream in (data_writer, writer):
            if stream is not None:
                stream.close()
                with contextlib.suppress(Exception):
                    await stream.wait_closed()
