"""The firmware image cache: each image downloaded once, kept by content, verified, evicted LRU.

Rules (reference ``ocpp-local-controller.md`` section 4):

- **Bytes are never changed** (F5: signatures cover the whole file). Requests go out with
  ``Accept-Encoding: identity``, bodies are not decoded, and an origin that answers with a
  ``Content-Encoding`` anyway is refused rather than guessed at.
- **Content-addressed.** An image is the file ``<cache_dir>/images/<sha256>``; the store indexes
  images (``fw_images``) and the URLs that gave them (``fw_sources``).
- **Verified before use** (F6: rewrite only after the image is fully cached and verified). An image
  counts as verified when this process computed its SHA-256 over the file: after the download, or
  after a restart (`run` checks every image in a worker thread; `ensure` checks on demand).
  `lookup` and `image` return verified images only, after a ``stat`` that catches a file changed
  on disk; a changed file is hashed again, and a corrupt one is evicted and fetched again.
- **Checked against the origin and the request.** The length must equal what the origin declared
  (``Content-Length``, ``Content-Range``, FTP ``SIZE``); a checksum the request carries (2.0.1
  PublishFirmware MD5, F12) must match.
- **One download per URL.** Concurrent `ensure` calls for a URL share one transfer.
- **Resumable** (F9). A partial download is kept (``fw_partials``) and resumed with ``Range`` and
  ``If-Range`` (RFC 9110 §13.1.5, §14.2) on the next attempt, also after a restart; an origin that
  ignores the range or whose file changed gets a fresh download.
- **Size cap with LRU eviction** (``firmware.cache_max_mb``). Images a rollout or a publication
  needs are pinned and never evicted; an image that cannot fit is refused with `CacheFull` before
  its body is fetched (when the origin declares its length).
- Peers' faults (bad URL, HTTP errors, broken connections, wrong lengths, wrong checksums) raise a
  `FirmwareError` subclass with a message fit for a log line; nothing here crashes the caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from sitectl import __version__
from sitectl.config import FirmwareConfig
from sitectl.firmware.ftp import FtpError, ftp_open
from sitectl.security_events import INSECURE_FIRMWARE_URL, INVALID_FIRMWARE
from sitectl.store import Store
from sitectl.tasks import cancel_all

__all__ = [
    "SCHEMES",
    "USER_AGENT",
    "CacheFull",
    "CachedImage",
    "ChecksumMismatch",
    "DownloadError",
    "FirmwareCache",
    "FirmwareError",
    "UnsupportedSource",
    "check_url",
    "safe_url",
]

log = logging.getLogger(__name__)


def _log_security_event(type_: str, text: str) -> None:
    log.warning("security event %s: %s", type_, text)


#: Schemes the cache downloads from.
SCHEMES = ("http", "https", "ftp")
#: Sent to origins, so their logs tell sitectl's one download from the chargers' own.
USER_AGENT = f"sitectl/{__version__} firmware-cache"

_CHUNK = 1 << 20
_SHA256_ASKED = re.compile(r"[0-9a-fA-F]{64}")
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
#: A prefetch that failed is not tried again for this long (a burst of UpdateFirmware calls for
#: a broken URL must not hammer the origin); an explicit `ensure` always tries.
PREFETCH_BACKOFF_S = 60.0
#: last_used is written to the store at most this often per image (LRU needs no more precision).
_TOUCH_PERSIST_S = 60.0


@dataclass(frozen=True, slots=True)
class CachedImage:
    """A verified image in the cache.

    ``path`` is the file; ``source_url`` the URL it was first downloaded from; ``md5`` and
    ``sha256`` are lowercase hex over the whole file.
    """

    sha256: str
    size: int
    path: Path
    source_url: str
    md5: str


class FirmwareError(Exception):
    """A firmware image could not be cached; the message says why (fit for a log line)."""


class DownloadError(FirmwareError):
    """The origin failed: an HTTP or FTP error, the network, a length that does not add up."""


class ChecksumMismatch(FirmwareError):
    """The image's MD5 is not the one the request carries."""


class CacheFull(FirmwareError):
    """The image does not fit, even after evicting every image no rollout needs."""


class UnsupportedSource(FirmwareError):
    """The URL is not one sitectl can download (scheme, syntax)."""


class _Interrupted(Exception):
    """A transfer broke off or can be tried again; the partial file is kept for a resume."""


@dataclass
class _Body:
    """An opened transfer: the offset its bytes start at, the declared total, the bytes."""

    start: int
    total: int | None
    validator: str | None
    chunks: AsyncIterator[bytes]


@dataclass
class _Entry:
    """One image in the in-memory index."""

    image: CachedImage
    last_used: float
    persisted_used: float
    #: (size, mtime_ns) of the file when its hash was last checked; None: not verified yet.
    stamp: tuple[int, int] | None = None


def safe_url(url: str) -> str:
    """The URL for a log line: credentials removed, length bounded."""
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:
            host = parts.hostname or ""
            if parts.port:
                host = f"{host}:{parts.port}"
            url = parts._replace(netloc=f"***@{host}").geturl()
    except ValueError:
        pass
    return url if len(url) <= 200 else url[:197] + "..."


def check_url(url: Any) -> str:
    """The URL's scheme (lower case) if sitectl can download from it.

    Raises:
        UnsupportedSource: not a string URL with a host and one of `SCHEMES`.
    """
    if not isinstance(url, str) or not url or any(c in url for c in "\r\n\0 "):
        raise UnsupportedSource(f"not a usable URL: {str(url)[:120]!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UnsupportedSource(f"not a usable URL {safe_url(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsupportedSource(
            f"cannot download {safe_url(url)!r}: scheme {scheme or 'none'!r} "
            f"(sitectl fetches {', '.join(SCHEMES)})"
        )
    if not parts.hostname:
        raise UnsupportedSource(f"no host in {safe_url(url)!r}")
    return scheme


def _hash_file(path: Path) -> tuple[str, str, int, tuple[int, int]]:
    """(sha256, md5, size, stamp) of a file; runs in a worker thread."""
    before = os.stat(path)
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    after = os.stat(path)
    stamp = (after.st_size, after.st_mtime_ns)
    if (before.st_size, before.st_mtime_ns) != stamp:
        stamp = (-1, -1)  # changed while we read it: not verified
    return sha.hexdigest(), md5.hexdigest(), size, stamp


def _hash_prefix(path: Path, length: int, hashers: tuple[Any, ...]) -> None:
    """Feed the first `length` bytes of a file to the hashers (resuming a download)."""
    with open(path, "rb") as f:
        left = length
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise OSError(f"{path} is shorter than {length} bytes")
            for hasher in hashers:
                hasher.update(chunk)
            left -= len(chunk)


def _mb(size: float) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class FirmwareCache:
    """Downloads firmware images once, keeps them on disk by SHA-256, evicts the LRU ones.

    Args:
        store: the store (with `FIRMWARE_MIGRATION` applied).
        config: the ``firmware`` section (``cache_dir``, ``cache_max_mb``).
        attempts: transfers per `ensure` before giving up (each resumes the previous one).
        retry_delay_s: wait before the second attempt; doubled for each further one.
        connect_timeout_s: TCP/TLS connect limit.
        read_timeout_s: limit for each read from the origin.
        ssl_context: TLS context for https origins (default: the system's CAs).
        clock: Unix seconds, for LRU order (injected in tests).
    """

    name = "firmware-cache"

    def __init__(
        self,
        store: Store,
        config: FirmwareConfig,
        *,
        attempts: int = 3,
        retry_delay_s: float = 1.0,
        connect_timeout_s: float = 30.0,
        read_timeout_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: Told of an image that fails its checksum or a refused https downgrade (app wires
        #: it to `SiteState.security_events`); logs by default.
        self.security_event: Callable[[str, str], None] = _log_security_event
        self.store = store
        self.config = config
        self.root = Path(config.cache_dir)
        self.images_dir = self.root / "images"
        self.partial_dir = self.root / "partial"
        self.max_bytes = config.cache_max_mb * 1024 * 1024
        self.attempts = max(1, attempts)
        self.retry_delay_s = retry_delay_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._ssl = ssl_context
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._sources: dict[str, str] = {}  # url -> sha256
        self._pins: dict[str, set[str]] = {}  # sha256 -> holders
        self._inflight: dict[str, asyncio.Task[CachedImage]] = {}
        self._verifying: dict[str, asyncio.Task[bool]] = {}
        self._failed: dict[str, float] = {}  # url -> when its last prefetch failed
        self._prefetching: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._load()

    # Start-up.

    def _load(self) -> None:
        for row in self.store.query("SELECT * FROM fw_images"):
            sha = row["sha256"]
            path = self.images_dir / sha
            if not _SHA256.fullmatch(sha) or not path.is_file():
                log.warning("firmware image %s is missing from %s; dropped", sha, self.images_dir)
                self.store.execute("DELETE FROM fw_images WHERE sha256 = ?", (sha,))
                continue
            image = CachedImage(sha, row["size"], path, row["source_url"], row["md5"])
            used = float(row["last_used"])
            self._entries[sha] = _Entry(image, used, used)
        for row in self.store.query("SELECT url, sha256 FROM fw_sources"):
            self._sources[row["url"]] = row["sha256"]
        for row in self.store.query("SELECT sha256, holder FROM fw_pins"):
            self._pins.setdefault(row["sha256"], set()).add(row["holder"])
        known = set()
        for row in self.store.query("SELECT url, file FROM fw_partials"):
            if (self.partial_dir / row["file"]).is_file():
                known.add(row["file"])
            else:
                self.store.execute("DELETE FROM fw_partials WHERE url = ?", (row["url"],))
        for leftover in self.partial_dir.iterdir():
            if leftover.name not in known:
                leftover.unlink(missing_ok=True)
        for leftover in self.images_dir.iterdir():
            if leftover.name not in self._entries:
                log.info("removing %s: not in the firmware index", leftover)
                leftover.unlink(missing_ok=True)

    async def run(self) -> None:
        """Verify every indexed image (SHA-256 in a worker thread), then idle until cancelled."""
        try:
            started = time.monotonic()
            todo = [sha for sha, entry in self._entries.items() if entry.stamp is None]
            bad = 0
            for sha in todo:
                if not await self._verify_shared(sha):
                    bad += 1
            if todo:
                log.info(
                    "firmware cache: %d images (%s of %d MB) checked in %.1f s, %d corrupt",
                    len(self._entries),
                    _mb(self.used_bytes),
                    self.config.cache_max_mb,
                    time.monotonic() - started,
                    bad,
                )
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop background work and close the HTTP session."""
        await cancel_all([*self._background, *self._inflight.values(), *self._verifying.values()])
        if self._session is not None:
            await self._session.close()
            self._session = None

    # Lookups (synchronous, in memory).

    @property
    def used_bytes(self) -> int:
        """Bytes taken by cached images."""
        return sum(entry.image.size for entry in self._entries.values())

    def images(self) -> list[CachedImage]:
        """Every image in the index (verified or not), most recently used first."""
        entries = sorted(self._entries.values(), key=lambda e: e.last_used, reverse=True)
        return [entry.image for entry in entries]

    def lookup(self, url: str) -> CachedImage | None:
        """The verified image downloaded from `url`, or ``None`` (never blocks, never fetches).

        An image not verified yet (just after a restart) or changed on disk is checked in the
        background and ``None`` is returned meanwhile.
        """
        sha = self._sources.get(url)
        return None if sha is None else self.image(sha)

    def image(self, sha256: str) -> CachedImage | None:
        """The verified image with this SHA-256, or ``None`` (see `lookup`)."""
        entry = self._entries.get(sha256)
        if entry is None:
            return None
        if entry.stamp is None or not self._stat_ok(entry):
            if entry.stamp is not None:
                log.warning(
                    "firmware image %s changed on disk; checking it again", entry.image.path
                )
                entry.stamp = None
            self._schedule_verify(sha256)
            return None
        self._touch(entry)
        return entry.image

    def downloading(self, url: str | None = None) -> bool:
        """Whether `url` (or any URL, when None) is being downloaded."""
        if url is None:
            return bool(self._inflight or self._prefetching)
        return url in self._inflight or url in self._prefetching

    # Pins.

    def pin(self, sha256: str, holder: str) -> None:
        """Keep an image from eviction for `holder` (e.g. ``rollout:12``); persisted."""
        holders = self._pins.setdefault(sha256, set())
        if holder not in holders:
            holders.add(holder)
            self.store.execute(
                "INSERT OR IGNORE INTO fw_pins(sha256, holder) VALUES(?, ?)", (sha256, holder)
            )

    def unpin(self, sha256: str, holder: str) -> None:
        """Release `holder`'s pin; the image becomes evictable when no pin is left."""
        holders = self._pins.get(sha256)
        if holders is not None and holder in holders:
            holders.discard(holder)
            if not holders:
                del self._pins[sha256]
        self.store.execute("DELETE FROM fw_pins WHERE sha256 = ? AND holder = ?", (sha256, holder))

    def pinned(self, sha256: str) -> bool:
        """Whether any holder pins the image."""
        return bool(self._pins.get(sha256))

    # Fetching.

    async def ensure(
        self, url: str, md5: str | None = None, pin: str | None = None, sha256: str | None = None
    ) -> CachedImage:
        """The verified image for `url`, downloading it (once, shared) if needed.

        Args:
            url: ``http://``, ``https://`` or ``ftp://`` URL of the image.
            md5: the checksum the request carries (32 hex digits), if any.
            pin: pin the image for this holder before returning (no eviction in between).
            sha256: the image's SHA-256 (64 hex digits), if known: preferred to the MD5 (which
                proves no integrity against anyone who can choose the file, issue #22.6).

        Returns:
            The cached, verified image.

        Raises:
            UnsupportedSource: the URL cannot be fetched (scheme, syntax) or `md5` is malformed.
            DownloadError: the origin failed (status, network, length).
            ChecksumMismatch: the image's MD5 differs from `md5`, or its SHA-256 from `sha256`
                (the downloaded image is then not kept, unless something else holds it).
            CacheFull: the image does not fit.
        """
        check_url(url)
        if md5 is not None:
            if not isinstance(md5, str) or not _MD5.fullmatch(md5):
                raise UnsupportedSource(f"checksum {str(md5)[:40]!r} is not 32 hex digits (MD5)")
            md5 = md5.lower()
        if sha256 is not None:
            if not isinstance(sha256, str) or not _SHA256_ASKED.fullmatch(sha256):
                raise UnsupportedSource(
                    f"checksum {str(sha256)[:80]!r} is not 64 hex digits (SHA-256)"
                )
            sha256 = sha256.lower()
        image = await self._cached(url)
        stale = image is not None and (
            (md5 is not None and image.md5 != md5)
            or (sha256 is not None and image.sha256 != sha256)
        )
        if image is None or stale:
            if image is not None:
                log.warning(
                    "cached %s has MD5 %s, the request says %s: downloading it again",
                    safe_url(url),
                    image.md5,
                    md5,
                )
            image = await self._download_shared(url)
        if sha256 is not None and image.sha256 != sha256:
            if not self.pinned(image.sha256):
                self._evict(image.sha256, "its SHA-256 is not the one asked for")
            text = (
                f"{safe_url(url)}: the image's SHA-256 is {image.sha256}, the request says {sha256}"
            )
            self.security_event(INVALID_FIRMWARE, text)
            raise ChecksumMismatch(text)
        if md5 is not None and image.md5 != md5:
            if not self.pinned(image.sha256):
                self._evict(image.sha256, "its MD5 is not the one asked for")
            text = f"{safe_url(url)}: the image's MD5 is {image.md5}, the request says {md5}"
            self.security_event(INVALID_FIRMWARE, text)
            raise ChecksumMismatch(text)
        if pin is not None:
            self.pin(image.sha256, pin)
        entry = self._entries.get(image.sha256)
        if entry is not None:
            self._touch(entry)
        return image

    def prefetch(self, url: str, force: bool = False) -> bool:
        """Start caching `url` in the background (needs a running loop); errors are logged.

        Returns:
            Whether a download is now running (or was already); ``False`` for a URL that cannot
            be fetched or that failed less than `PREFETCH_BACKOFF_S` ago (unless `force`).
        """
        try:
            check_url(url)
        except UnsupportedSource as exc:
            log.info("firmware not cached: %s", exc)
            return False
        if url in self._inflight or url in self._prefetching:
            return True
        failed_at = self._failed.get(url)
        if not force and failed_at is not None and self._clock() - failed_at < PREFETCH_BACKOFF_S:
            log.debug("not fetching %s again yet: it failed recently", safe_url(url))
            return False
        self._prefetching.add(url)
        self._spawn(self._prefetch(url), f"firmware prefetch {safe_url(url)}")
        return True

    async def _prefetch(self, url: str) -> None:
        try:
            await self.ensure(url)
        except FirmwareError as exc:
            self._failed[url] = self._clock()
            log.warning("firmware %s not cached: %s", safe_url(url), exc)
        else:
            self._failed.pop(url, None)
        finally:
            self._prefetching.discard(url)

    async def import_file(self, path: str | Path, source_url: str) -> CachedImage:
        """Put a local file into the cache as the image of `source_url` (bytes copied as-is).

        Raises:
            CacheFull: it does not fit.
            OSError: the file cannot be read.
        """
        source = Path(path)
        sha, md5, size, _ = await asyncio.to_thread(_hash_file, source)
        if sha in self._entries:
            self._add_source(source_url, sha)
            return self._entries[sha].image
        self._make_room(size)
        temporary = self.partial_dir / f"import-{sha[:32]}.tmp"
        await asyncio.to_thread(shutil.copyfile, source, temporary)
        return self._install(source_url, temporary, sha, md5, size)

    # Verification.

    def _stat_ok(self, entry: _Entry) -> bool:
        try:
            st = os.stat(entry.image.path)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == entry.stamp

    async def _cached(self, url: str) -> CachedImage | None:
        sha = self._sources.get(url)
        entry = self._entries.get(sha) if sha else None
        if entry is None:
            return None
        if (entry.stamp is None or not self._stat_ok(entry)) and not await self._verify_shared(
            entry.image.sha256
        ):
            return None
        return entry.image

    def _schedule_verify(self, sha: str) -> None:
        if sha in self._verifying:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): `run` or `ensure` will check it
        self._spawn(self._verify_shared(sha), f"firmware verify {sha[:12]}")

    async def _verify_shared(self, sha: str) -> bool:
        task = self._verifying.get(sha)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._verify(sha))
            self._verifying[sha] = task
            task.add_done_callback(lambda t: self._verifying.pop(sha, None))
        return await asyncio.shield(task)

    async def _verify(self, sha: str) -> bool:
        """Hash the file; evict and fetch again when it is not the image it should be."""
        entry = self._entries.get(sha)
        if entry is None:
            return False
        try:
            digest, md5, size, stamp = await asyncio.to_thread(_hash_file, entry.image.path)
        except OSError as exc:
            problem = f"unreadable ({exc.strerror or exc})"
        else:
            if digest == sha and size == entry.image.size and md5 == entry.image.md5:
                if stamp[0] < 0:
                    return False  # written while we read it; checked again on next use
                entry.stamp = stamp
                return True
            problem = f"corrupt: {size} bytes with SHA-256 {digest[:16]}…"
        source = entry.image.source_url
        log.error(
            "firmware image %s is %s; evicting it and fetching it again from %s",
            sha[:16],
            problem,
            safe_url(source),
        )
        self._evict(sha, "corrupt")
        self.prefetch(source, force=True)
        return False

    # Downloading.

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True),
                auto_decompress=False,
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def _download_shared(self, url: str) -> CachedImage:
        task = self._inflight.get(url)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._download(url), name=f"firmware download {safe_url(url)}"
            )
            self._inflight[url] = task

            def done(finished: asyncio.Task[CachedImage]) -> None:
                if self._inflight.get(url) is finished:
                    del self._inflight[url]
                if not finished.cancelled():
                    finished.exception()  # retrieved: every waiter may have been cancelled

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _download(self, url: str) -> CachedImage:
        last: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._download_once(url)
            except _Interrupted as exc:
                last = exc
                log.warning(
                    "firmware download %s: %s (attempt %d of %d)",
                    safe_url(url),
                    exc,
                    attempt,
                    self.attempts,
                )
                if attempt < self.attempts:
                    await asyncio.sleep(self.retry_delay_s * 2 ** (attempt - 1))
        raise DownloadError(f"{safe_url(url)}: {last} (gave up after {self.attempts} attempts)")

    def _partial_file(self, url: str) -> Path:
        return self.partial_dir / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".part")

    async def _download_once(self, url: str) -> CachedImage:
        scheme = check_url(url)
        path = self._partial_file(url)
        rows = self.store.query("SELECT validator, total FROM fw_partials WHERE url = ?", (url,))
        have, validator, known_total = 0, None, None
        if rows and path.is_file():
            have = path.stat().st_size
            validator, known_total = rows[0]["validator"], rows[0]["total"]
            if scheme != "ftp" and validator is None:
                have = 0  # nothing to put in If-Range: a resume could mix two versions
            if known_total is not None and have > known_total:
                have = 0
        opener = self._open_ftp if scheme == "ftp" else self._open_http
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        received = 0
        total: int | None = None
        try:
            async with opener(url, have, validator) as body:
                if have and body.start == 0:
                    log.info("%s: the origin sends the whole image again", safe_url(url))
                    have = 0
                total = body.total
                if have and known_total is not None and total is not None and total != known_total:
                    self._drop_partial(url)
                    raise _Interrupted(
                        f"the image changed at the origin ({known_total} → {total} bytes); "
                        "starting over"
                    )
                if total is not None:
                    self._make_room(total)
                else:
                    log.warning(
                        "%s: the origin declares no length; it cannot be checked", safe_url(url)
                    )
                self._save_partial(url, path, body.validator, total)
                if have:
                    await asyncio.to_thread(_hash_prefix, path, have, (sha, md5))
                    log.info("%s: resuming at byte %d of %s", safe_url(url), have, total)
                received = have
                with open(path, "ab" if have else "wb") as sink:
                    try:
                        async for chunk in body.chunks:
                            received += len(chunk)
                            if total is not None and received > total:
                                self._drop_partial(url)
                                raise DownloadError(
                                    f"{safe_url(url)}: the origin sent more than the {total} "
                                    "bytes it declared"
                                )
                            sink.write(chunk)
                            sha.update(chunk)
                            md5.update(chunk)
                    finally:
                        sink.flush()
                        os.fsync(sink.fileno())
        except aiohttp.InvalidURL as exc:
            raise UnsupportedSource(f"not a usable URL {safe_url(url)!r}: {exc}") from None
        except aiohttp.TooManyRedirects:
            raise DownloadError(f"{safe_url(url)}: too many redirects") from None
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            declared = f" of {total}" if total is not None else ""
            raise _Interrupted(
                f"{type(exc).__name__}: {str(exc)[:160] or 'connection lost'} "
                f"after {received}{declared} bytes"
            ) from None
        except FtpError as exc:
            if exc.permanent:
                raise DownloadError(f"{safe_url(url)}: {exc}") from None
            raise _Interrupted(f"{exc} after {received} bytes") from None
        except OSError as exc:
            raise DownloadError(
                f"{safe_url(url)}: {exc.strerror or exc} (network or the cache directory)"
            ) from None
        if total is not None and received != total:
            self._drop_partial(url)
            raise DownloadError(
                f"{safe_url(url)}: the origin declared {total} bytes and sent {received}"
            )
        if total is None:
            try:
                self._make_room(received)
            except CacheFull:
                self._drop_partial(url)
                raise
        return self._install(url, path, sha.hexdigest(), md5.hexdigest(), received)

    @asynccontextmanager
    async def _open_http(self, url: str, have: int, validator: str | None) -> AsyncIterator[_Body]:
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if validator:
                headers["If-Range"] = validator
        async with self._get_session().get(
            url, headers=headers, allow_redirects=True, max_redirects=5
        ) as resp:
            status = resp.status
            if url.lower().startswith("https:") and any(
                r.url.scheme != "https" for r in (*resp.history, resp)
            ):
                # An https origin redirecting to http would hand the image (and the charger's
                # trust in it) to anyone on the path (issue #22.6): refused, not followed.
                text = (
                    f"{safe_url(url)}: the origin redirected from https to {resp.url.scheme}; "
                    "refusing the downgrade"
                )
                self.security_event(INSECURE_FIRMWARE_URL, text)
                raise DownloadError(text)
            if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise DownloadError(
                    f"{safe_url(url)}: the origin sent Content-Encoding "
                    f"{resp.headers['Content-Encoding']!r} although asked for the bytes as they "
                    "are; refusing to guess the image"
                )
            if status == 206 and have:
                found = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
                if found is None or int(found.group(1)) != have:
                    self._drop_partial(url)
                    raise _Interrupted(
                        f"unusable Content-Range {resp.headers.get('Content-Range')!r} for "
                        f"bytes={have}-; starting over"
                    )
                total = None if found.group(3) == "*" else int(found.group(3))
                yield _Body(have, total, validator, resp.content.iter_chunked(_CHUNK))
            elif status == 200:
                etag = resp.headers.get("ETag")
                new_validator = (
                    etag
                    if etag and not etag.startswith("W/")
                    else resp.headers.get("Last-Modified")
                )
                yield _Body(
                    0, resp.content_length, new_validator, resp.content.iter_chunked(_CHUNK)
                )
            elif status == 416 and have:
                found = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
                length = found.group(1) if found else "unknown"
                self._drop_partial(url)
                raise _Interrupted(
                    f"the origin cannot serve bytes from {have} on (its length is {length}); "
                    "starting over"
                )
            elif status >= 500 or status in (408, 429):
                raise _Interrupted(f"the origin answered HTTP {status} {resp.reason or ''}".strip())
            else:
                reason = f"HTTP {status} {resp.reason or ''}".strip()
                raise DownloadError(f"{safe_url(url)}: the origin answered {reason}")

    @asynccontextmanager
    async def _open_ftp(self, url: str, have: int, validator: str | None) -> AsyncIterator[_Body]:
        async with ftp_open(
            url, have, timeout_s=self._read_timeout_s, connect_timeout_s=self._connect_timeout_s
        ) as transfer:
            yield _Body(transfer.start, transfer.total, None, transfer.chunks)

    # Index and files.

    def _save_partial(self, url: str, path: Path, validator: str | None, total: int | None) -> None:
        self.store.execute(
            "INSERT INTO fw_partials(url, file, validator, total, updated_at) VALUES(?,?,?,?,?) "
            "ON CONFLICT(url) DO UPDATE SET file = excluded.file, validator = excluded.validator, "
            "total = excluded.total, updated_at = excluded.updated_at",
            (url, path.name, validator, total, _now_iso()),
        )

    def _drop_partial(self, url: str) -> None:
        self.store.execute("DELETE FROM fw_partials WHERE url = ?", (url,))
        self._partial_file(url).unlink(missing_ok=True)

    def _add_source(self, url: str, sha: str) -> None:
        self.store.execute(
            "INSERT INTO fw_sources(url, sha256) VALUES(?, ?) "
            "ON CONFLICT(url) DO UPDATE SET sha256 = excluded.sha256",
            (url, sha),
        )
        self._sources[url] = sha

    def _install(self, url: str, temporary: Path, sha: str, md5: str, size: int) -> CachedImage:
        """Move a complete, hashed file into the index (replacing a same-content copy)."""
        target = self.images_dir / sha
        existing = self._entries.get(sha)
        if existing is not None and self._stat_ok(existing):
            temporary.unlink(missing_ok=True)
        else:
            os.replace(temporary, target)
        st = os.stat(target)
        now = self._clock()
        image = CachedImage(sha, size, target, existing.image.source_url if existing else url, md5)
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO fw_images(sha256, size, md5, source_url, created_at, "
                "last_used) VALUES(?,?,?,?,?,?)",
                (sha, size, md5, image.source_url, _now_iso(), now),
            )
            conn.execute(
                "INSERT INTO fw_sources(url, sha256) VALUES(?, ?) "
                "ON CONFLICT(url) DO UPDATE SET sha256 = excluded.sha256",
                (url, sha),
            )
            conn.execute("DELETE FROM fw_partials WHERE url = ?", (url,))
        self._entries[sha] = _Entry(image, now, now, (st.st_size, st.st_mtime_ns))
        self._sources[url] = sha
        log.info("firmware %s cached: %s, SHA-256 %s, MD5 %s", safe_url(url), _mb(size), sha, md5)
        self._enforce_cap(keep=sha)
        return image

    def _touch(self, entry: _Entry) -> None:
        now = self._clock()
        entry.last_used = now
        if now - entry.persisted_used >= _TOUCH_PERSIST_S:
            entry.persisted_used = now
            self.store.execute(
                "UPDATE fw_images SET last_used = ? WHERE sha256 = ?", (now, entry.image.sha256)
            )

    def _evictable(self, keep: str | None = None) -> list[_Entry]:
        entries = [
            e
            for sha, e in self._entries.items()
            if sha != keep and not self.pinned(sha) and sha not in self._verifying
        ]
        return sorted(entries, key=lambda e: e.last_used)

    def _make_room(self, need: int) -> None:
        """Evict LRU images until `need` more bytes fit, or raise `CacheFull` evicting nothing."""
        if need > self.max_bytes:
            raise CacheFull(
                f"an image of {_mb(need)} is larger than the whole cache "
                f"(firmware.cache_max_mb: {self.config.cache_max_mb})"
            )
        used = self.used_bytes
        if used + need <= self.max_bytes:
            return
        candidates = self._evictable()
        kept = used - sum(e.image.size for e in candidates)
        if kept + need > self.max_bytes:
            raise CacheFull(
                f"an image of {_mb(need)} does not fit: {_mb(kept)} of the "
                f"{self.config.cache_max_mb} MB cache are pinned by rollouts or publications"
            )
        for entry in candidates:
            if used + need <= self.max_bytes:
                break
            self._evict(entry.image.sha256, "least recently used, to make room")
            used -= entry.image.size

    def _enforce_cap(self, keep: str) -> None:
        used = self.used_bytes
        for entry in self._evictable(keep):
            if used <= self.max_bytes:
                return
            self._evict(entry.image.sha256, "least recently used, over the size cap")
            used -= entry.image.size
        if used > self.max_bytes:
            log.warning(
                "firmware cache holds %s, over its %d MB cap: every other image is pinned",
                _mb(used),
                self.config.cache_max_mb,
            )

    def _evict(self, sha: str, reason: str) -> None:
        entry = self._entries.pop(sha, None)
        for url in [u for u, s in self._sources.items() if s == sha]:
            del self._sources[url]
        self.store.execute("DELETE FROM fw_images WHERE sha256 = ?", (sha,))
        (self.images_dir / sha).unlink(missing_ok=True)
        if entry is not None:
            log.info("firmware image %s (%s) evicted: %s", sha[:16], _mb(entry.image.size), reason)
