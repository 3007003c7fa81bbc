"""Serving cached firmware images to the chargers on the LAN (aiohttp).

Rules:

- **URLs.** ``<firmware.base_url>/firmware/<sha256>/<token>/<file name>``. The token is
  ``c.<identity>.<expiry>.<mac>`` for one charger and one image (identity in unpadded base64url,
  expiry in Unix seconds, ``firmware.token_lifetime_s`` ahead rounded up to the hour), or
  ``p.<mac>`` for an image published on sitectl's own identity (2.0.1 PublishFirmware, reference
  F12), where ``mac`` is 128 bits of HMAC-SHA256 with a secret kept in the store (``meta``), so URLs
  handed out survive a restart. The file name is the origin's, cleaned: some chargers look at the
  extension. The server reads the image from the SHA-256 in the path, never from a file name.
- **Refusals are 404 with a log line:** a path that tries to leave ``/firmware/`` (``..``, ``.``,
  percent-encoded dots, slashes, backslashes or NUL, empty segments), a malformed path, a token that
  does not verify for this image, an image not cached and verified, a published-image token for an
  image no longer published. The 404 does not say which, so it does not help guessing.
- **The exact bytes** (F5): no ``Content-Encoding`` ever, ``Cache-Control: no-transform``.
- **HTTP semantics** (F9, RFC 9110): ``GET`` and ``HEAD``; a strong ``ETag`` that is the image's
  SHA-256 (stable across restarts and re-downloads); ``Last-Modified``; ``Content-Length``;
  ``Accept-Ranges: bytes``; one byte range → 206 with ``Content-Range`` (several ranges or a
  malformed one are ignored → 200, §14.2 allows it); an unsatisfiable one → 416 with
  ``Content-Range: bytes */size``; ``If-Range`` with a strong ETag or the exact date (§13.1.5);
  ``If-None-Match`` → 304.
- **Streamed from disk** with ``sendfile`` (zero copy); a file is never read whole into memory.
- HTTPS with the site certificate is the caller's TLS context (`start`); ``base_url`` tells the
  chargers which scheme to use.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import IO
from urllib.parse import unquote, urlsplit

from aiohttp import web

from sitectl.config import Config
from sitectl.firmware.cache import CachedImage, FirmwareCache

__all__ = ["PUBLISHED", "FirmwareServer", "file_name", "hide_tokens"]

log = logging.getLogger(__name__)

#: The holder of a published-image token (not a charger identity: identities cannot hold "*").
PUBLISHED = "*published*"

_PREFIX = "/firmware/"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(
    r"c\.([A-Za-z0-9_-]{2,400})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})|p\.([A-Za-z0-9_-]{22})"
)
_TOKEN_IN_PATH = re.compile(r"/[cp]\.[A-Za-z0-9_.-]+")
_TOKEN_IN_URL = re.compile(r"(/firmware/[0-9a-f]{64})/[cp]\.[A-Za-z0-9_.-]+")
_BAD_SEQUENCES = ("%2f", "%5c", "%2e", "%00", "\\", "\0", "//")
_SECRET_KEY = "firmware_token_secret"
_CHUNK = 256 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def file_name(url: str) -> str:
    """The last path segment of `url`, reduced to ``[A-Za-z0-9._-]`` (``firmware.bin`` if empty)."""
    try:
        segment = PurePosixPath(unquote(urlsplit(url).path)).name
    except ValueError:
        segment = ""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", segment)[-64:].lstrip(".")
    return cleaned or "firmware.bin"


def _path_problem(path: str) -> str | None:
    """Why a raw request path is refused before parsing, or None."""
    lowered = path.lower()
    for sequence in _BAD_SEQUENCES:
        if sequence in lowered:
            return f"forbidden sequence {sequence!r} in the path"
    if any(segment in (".", "..") for segment in path.split("/")):
        return "dot segment in the path"
    return None


def _redact(path: str) -> str:
    shown = _TOKEN_IN_PATH.sub("/<token>", path)
    return shown if len(shown) <= 200 else shown[:197] + "..."


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """One byte range as (first, last), ``"unsatisfiable"``, or None to ignore the header."""
    value = value.strip()
    if not value.lower().startswith("bytes="):
        return None
    spec = value[6:].strip()
    found = re.fullmatch(r"(\d*)\s*-\s*(\d*)", spec)
    if "," in spec or found is None or found.group(0) == "-":
        return None
    first, last = found.group(1), found.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _etag_listed(header: str, etag: str) -> bool:
    """Whether an If-None-Match list names `etag` (weak comparison) or is ``*``."""
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


@dataclass
class ChargerFetches:
    """What one token holder fetched (for status pages and tests)."""

    requests: int = 0
    bytes_sent: int = 0
    images: set[str] = field(default_factory=set)
    last_at: datetime | None = None


def hide_tokens(text: str) -> str:
    """`text` with the token of every firmware URL in it replaced (API and dashboard output:
    a token lets whoever holds it download that image)."""
    return _TOKEN_IN_URL.sub(r"\1/<token>", text)


class FirmwareServer:
    """The ``/firmware/`` routes and the URLs that point at them.

    Args:
        cache: the image cache (its store keeps the token secret and the publications).
        config: the configuration (``firmware.base_url``, ``token_lifetime_s``).
        clock: Unix time (injectable for tests).
    """

    def __init__(
        self, cache: FirmwareCache, config: Config, clock: Callable[[], float] = time.time
    ) -> None:
        self.cache = cache
        self._clock = clock  # wall seconds: a token outlives a restart, its expiry too
        self.config = config
        self.base_url = config.firmware.base_url
        store = cache.store
        secret = store.get_meta(_SECRET_KEY)
        if secret is None:
            secret = secrets.token_hex(32)
            store.set_meta(_SECRET_KEY, secret)
        self._secret = bytes.fromhex(secret)
        self._published: dict[str, tuple[str, int, str]] = {
            row["md5"]: (row["sha256"], row["request_id"], row["location"])
            for row in store.query("SELECT * FROM fw_published")
        }
        self.fetches: dict[str, ChargerFetches] = {}
        self.refused = 0
        self.port: int | None = None
        if self.base_url is None:
            log.warning(
                "firmware.base_url is not set: chargers cannot be pointed at sitectl's "
                "firmware cache (UpdateFirmware is forwarded unchanged, rollouts cannot start)"
            )

    # URLs and tokens.

    def _mac(self, kind: bytes, holder: str, sha256: str, expires: int | None = None) -> str:
        message = (
            b"sitectl-firmware-v1\0" + kind + b"\0" + holder.encode() + b"\0" + sha256.encode()
        )
        if expires is not None:
            message += b"\0" + str(expires).encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest()[:16])

    def token(self, identity: str, sha256: str) -> str:
        """The token of one charger for one image, valid for ``firmware.token_lifetime_s``.

        The expiry is in the token and under its MAC: a URL handed to a charger (or leaked from
        its logs) stops working after the lifetime (issue #22.6); a new one is issued with the
        next UpdateFirmware.
        """
        # Rounded up to the hour: one charger gets the same URL for an image within an hour
        # (a retry of the same UpdateFirmware, a CSMS repeating it, a test comparing them).
        expires = math.ceil((self._clock() + self.config.firmware.token_lifetime_s) / 3600) * 3600
        mac = self._mac(b"c", identity, sha256, expires)
        return f"c.{_b64(identity.encode())}.{expires}.{mac}"

    def _holder(self, token: str, sha256: str) -> str | None:
        """Who a token was issued to (a charger identity or `PUBLISHED`), or None."""
        found = _TOKEN.fullmatch(token)
        if found is None:
            return None
        if found.group(4) is not None:
            expected = self._mac(b"p", "", sha256)
            return PUBLISHED if hmac.compare_digest(found.group(4), expected) else None
        try:
            identity = _unb64(found.group(1)).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        expires = int(found.group(2))
        expected = self._mac(b"c", identity, sha256, expires)
        if not hmac.compare_digest(found.group(3), expected):
            return None
        return identity if self._clock() < expires else None

    def local_url(self, identity: str, image: CachedImage) -> str | None:
        """The URL `identity` downloads `image` from, or None when ``base_url`` is not set."""
        if self.base_url is None:
            return None
        token = self.token(identity, image.sha256)
        return f"{self.base_url}{_PREFIX}{image.sha256}/{token}/{file_name(image.source_url)}"

    def image_of(self, url: str) -> CachedImage | None:
        """The verified image a URL of this server points at (any valid token), or None."""
        if self.base_url is None or not url.startswith(self.base_url + _PREFIX):
            return None
        parts = url[len(self.base_url) + len(_PREFIX) :].split("?", 1)[0].split("/")
        if len(parts) != 3 or not _SHA256.fullmatch(parts[0]):
            return None
        if self._holder(parts[1], parts[0]) is None:
            return None
        return self.cache.image(parts[0])

    # Publications (PublishFirmware on the local controller identity, F12).

    def publish(self, image: CachedImage, md5: str, request_id: int) -> str | None:
        """Publish an image; returns its URL (None without ``base_url``). Pins the image."""
        if self.base_url is None:
            return None
        token = f"p.{self._mac(b'p', '', image.sha256)}"
        location = f"{self.base_url}{_PREFIX}{image.sha256}/{token}/{file_name(image.source_url)}"
        self.cache.pin(image.sha256, f"published:{md5}")
        self.cache.store.execute(
            "INSERT INTO fw_published(md5, sha256, request_id, location, published_at) "
            "VALUES(?,?,?,?,?) ON CONFLICT(md5) DO UPDATE SET sha256 = excluded.sha256, "
            "request_id = excluded.request_id, location = excluded.location, "
            "published_at = excluded.published_at",
            (md5, image.sha256, request_id, location, datetime.now(UTC).isoformat()),
        )
        self._published[md5] = (image.sha256, request_id, location)
        return location

    def unpublish(self, md5: str) -> bool:
        """Withdraw a publication; returns whether there was one. Unpins the image."""
        found = self._published.pop(md5, None)
        if found is None:
            return False
        self.cache.unpin(found[0], f"published:{md5}")
        self.cache.store.execute("DELETE FROM fw_published WHERE md5 = ?", (md5,))
        return True

    def published(self) -> dict[str, tuple[str, int, str]]:
        """Publications by MD5: (sha256, request id, location)."""
        return dict(self._published)

    # Serving.

    def add_routes(self, app: web.Application) -> None:
        """Add ``GET``/``HEAD /firmware/...`` to an application (before it starts)."""
        app.router.add_get(_PREFIX + "{tail:.*}", self._handle, allow_head=True)

    async def start(
        self, host: str = "0.0.0.0", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> web.AppRunner:
        """Serve on a port of its own (tests, benchmarks, until the HTTP component exists).

        Returns:
            The runner (``await runner.cleanup()`` stops it); `port` is the port bound.
        """
        app = web.Application()
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)
        await site.start()
        server = site._server  # aiohttp has no public accessor for the bound port
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info(
            "firmware files served on %s://%s:%d%s",
            "https" if ssl_context else "http",
            host,
            self.port,
            _PREFIX,
        )
        return runner

    async def run_standalone(
        self, host: str = "0.0.0.0", port: int = 8080, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Serve on a port of its own until cancelled (a component until the HTTP one exists)."""
        runner = await self.start(host, port, ssl_context)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    def _refuse(self, request: web.Request, reason: str) -> web.Response:
        self.refused += 1
        log.warning(
            "firmware request refused (404): %s: %s %r from %s",
            reason,
            request.method,
            _redact(request.raw_path),
            request.remote,
        )
        return web.Response(status=404, text="not found\n")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        problem = _path_problem(path)
        if problem is not None:
            return self._refuse(request, problem)
        parts = path[len(_PREFIX) :].split("/")
        if len(parts) != 3 or not all(parts):
            return self._refuse(request, "not /firmware/<sha256>/<token>/<name>")
        sha256, token, _ = parts
        if not _SHA256.fullmatch(sha256):
            return self._refuse(request, "not a SHA-256")
        holder = self._holder(token, sha256)
        if holder is None:
            return self._refuse(request, f"token does not verify for image {sha256[:16]}")
        if holder == PUBLISHED and sha256 not in {p[0] for p in self._published.values()}:
            return self._refuse(request, f"image {sha256[:16]} is not published")
        image = self.cache.image(sha256)
        if image is None:
            return self._refuse(request, f"image {sha256[:16]} is not in the cache")
        return await self._send(request, image, holder)

    async def _send(
        self, request: web.Request, image: CachedImage, holder: str
    ) -> web.StreamResponse:
        try:
            f: IO[bytes] = open(image.path, "rb")  # noqa: SIM115 - closed in finally
        except OSError as exc:
            return self._refuse(request, f"image file unreadable ({exc.strerror})")
        try:
            st = os.fstat(f.fileno())
            size = image.size
            if st.st_size != size:
                # Changed under us: `image()` schedules a check (evict + fetch again if corrupt).
                return self._refuse(request, f"image {image.sha256[:16]} changed on disk")
            etag = f'"{image.sha256}"'
            modified = int(st.st_mtime)
            headers = {
                "ETag": etag,
                "Last-Modified": email.utils.formatdate(modified, usegmt=True),
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
                "Cache-Control": "no-transform",
            }
            none_match = request.headers.get("If-None-Match")
            if none_match is not None and _etag_listed(none_match, etag):
                return web.Response(status=304, headers=headers)
            start, end, status = 0, size - 1, 200
            wanted = request.headers.get("Range")
            if wanted is not None and _if_range_holds(
                request.headers.get("If-Range"), etag, modified
            ):
                parsed = _parse_range(wanted, size)
                if parsed == "unsatisfiable":
                    headers["Content-Range"] = f"bytes */{size}"
                    return web.Response(status=416, headers=headers)
                if isinstance(parsed, tuple):
                    start, end = parsed
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            count = max(0, end - start + 1)
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = count
            await response.prepare(request)
            if request.method == "HEAD" or count == 0:
                await response.write_eof()
                return response
            sent = 0
            try:
                sent = await self._stream(request, response, f, start, count)
                await response.write_eof()
            except (ConnectionError, OSError) as exc:
                log.info(
                    "firmware %s: %s stopped fetching after %d of %d bytes (%s)",
                    image.sha256[:16],
                    holder,
                    sent,
                    count,
                    type(exc).__name__,
                )
            else:
                log.info(
                    "firmware %s served to %s: bytes %d-%d of %d (HTTP %d)",
                    image.sha256[:16],
                    holder,
                    start,
                    end,
                    size,
                    status,
                )
            stats = self.fetches.setdefault(holder, ChargerFetches())
            stats.requests += 1
            stats.bytes_sent += sent
            stats.images.add(image.sha256)
            stats.last_at = datetime.now(UTC)
            return response
        finally:
            f.close()

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        f: IO[bytes],
        offset: int,
        count: int,
    ) -> int:
        """Send `count` bytes of `f` from `offset`: sendfile, or chunks where it is unavailable."""
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        loop = asyncio.get_running_loop()
        try:
            return await loop.sendfile(transport, f, offset, count)
        except NotImplementedError:
            pass
        sent = 0
        f.seek(offset)
        while sent < count:
            chunk = await loop.run_in_executor(None, f.read, min(_CHUNK, count - sent))
            if not chunk:
                raise OSError("image file shorter than its index entry")
            await response.write(chunk)
            sent += len(chunk)
        return sent


def _if_range_holds(value: str | None, etag: str, modified: int) -> bool:
    """Whether a Range applies under If-Range: absent, the same strong ETag, or the exact date."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False  # a weak validator never matches in If-Range (RFC 9110 §13.1.5)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return int(when.timestamp()) == modified
