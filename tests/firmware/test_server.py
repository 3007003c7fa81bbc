"""The /firmware/ routes over real HTTP: semantics, tokens, path traversal, HTTPS."""

from __future__ import annotations

import asyncio
import email.utils
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from sitectl.firmware import CachedImage, FirmwareCache, FirmwareServer
from tests.firmware.conftest import fw_config
from tests.firmware.support import Origin, image_bytes, sha256
from tests.helpers import free_port
from tests.ocpp.certs import Pki

SIZE = 1_000_003


@dataclass
class Served:
    cache: FirmwareCache
    files: FirmwareServer
    image: CachedImage
    data: bytes
    base: str

    def url(self, identity: str = "CP1") -> str:
        url = self.files.local_url(identity, self.image)
        assert url is not None
        return url


@pytest.fixture
async def served(origin: Origin, make_cache, tmp_path) -> AsyncIterator[Served]:
    data = image_bytes(SIZE, seed=50)
    cache: FirmwareCache = make_cache()
    image = await cache.ensure(origin.add("vendor/fw-2.1.0.tar.gz", data))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    files = FirmwareServer(cache, fw_config(tmp_path, base_url=base))
    runner = await files.start("127.0.0.1", port)
    yield Served(cache, files, image, data, base)
    await runner.cleanup()


async def fetch(url: str, method: str = "GET", **headers: str) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, url, headers=headers) as response,
    ):
        return response.status, response.headers, await response.read()


async def raw_request(port: int, path: str) -> bytes:
    """A request line exactly as given (clients would normalise `..` away)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_full_get_and_head(served: Served) -> None:
    url = served.url()
    assert url.startswith(f"{served.base}/firmware/{served.image.sha256}/c.")
    assert url.endswith("/fw-2.1.0.tar.gz")  # the origin's file name, for chargers that look
    status, headers, body = await fetch(url, **{"Accept-Encoding": "gzip, br"})
    assert status == 200 and body == served.data
    assert headers["ETag"] == f'"{served.image.sha256}"'
    assert headers["Content-Length"] == str(SIZE)
    assert headers["Accept-Ranges"] == "bytes"
    assert "Content-Encoding" not in headers and headers["Cache-Control"] == "no-transform"
    assert email.utils.parsedate_to_datetime(headers["Last-Modified"])
    status, headers, body = await fetch(url, "HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(SIZE)


@pytest.mark.parametrize(
    ("header", "status", "content_range", "part"),
    [
        ("bytes=100-199", 206, f"bytes 100-199/{SIZE}", slice(100, 200)),
        ("bytes=999000-", 206, f"bytes 999000-{SIZE - 1}/{SIZE}", slice(999000, None)),
        ("bytes=-10", 206, f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}", slice(SIZE - 10, None)),
        ("bytes=0-99999999", 206, f"bytes 0-{SIZE - 1}/{SIZE}", slice(None)),
        (f"bytes={SIZE}-", 416, f"bytes */{SIZE}", slice(0, 0)),
        ("bytes=0-1,5-6", 200, None, slice(None)),  # several ranges: ignored (RFC 9110 §14.2)
        ("bytes=9-3", 200, None, slice(None)),  # malformed: ignored
        ("items=0-5", 200, None, slice(None)),
    ],
)
async def test_ranges(served: Served, header, status, content_range, part) -> None:
    got, headers, body = await fetch(served.url(), Range=header)
    assert got == status
    assert headers.get("Content-Range") == content_range
    if status != 416:
        assert body == served.data[part]
        assert headers["Content-Length"] == str(len(body))


async def test_if_range_and_if_none_match(served: Served) -> None:
    url, etag = served.url(), f'"{served.image.sha256}"'
    _, headers, _ = await fetch(url, "HEAD")
    cases = [
        (etag, 206),
        ('"something-else"', 200),
        (f"W/{etag}", 200),  # weak validators never match in If-Range (RFC 9110 §13.1.5)
        (headers["Last-Modified"], 206),
        ("Mon, 01 Jan 2001 00:00:00 GMT", 200),
    ]
    for if_range, expected in cases:
        status, _, body = await fetch(url, Range="bytes=10-19", **{"If-Range": if_range})
        assert status == expected, if_range
        assert body == (served.data[10:20] if expected == 206 else served.data)
    status, _, body = await fetch(url, **{"If-None-Match": f'"x", {etag}'})
    assert status == 304 and body == b""


async def test_tokens(served: Served, caplog) -> None:
    files, sha = served.files, served.image.sha256
    good = served.url("BUS 01")
    assert (await fetch(good))[0] == 200
    prefix, name = f"{served.base}/firmware/{sha}/", "fw.bin"
    token = files.token("BUS 01", sha)
    other = "f" * 64
    bad = [
        f"{prefix}{token[:-1]}{'A' if token[-1] != 'A' else 'B'}/{name}",  # tampered MAC
        f"{prefix}{files.token('BUS 02', sha).split('.')[0]}.{token.split('.')[2]}/{name}",
        f"{served.base}/firmware/{other}/{files.token('BUS 01', other)}/{name}",  # not cached
        f"{served.base}/firmware/{other}/{token}/{name}",  # another image's token
        f"{prefix}p.{'A' * 22}/{name}",  # a published-image token that is not one
        f"{prefix}/{name}",
        f"{prefix}{token}",
        f"{served.base}/firmware/{sha.upper()}/{token}/{name}",
        f"{served.base}/firmware/",
    ]
    caplog.clear()
    for url in bad:
        assert (await fetch(url))[0] == 404, url
    refusals = [r for r in caplog.records if "refused (404)" in r.message]
    assert len(refusals) == len(bad)
    assert not any(token in r.getMessage() for r in refusals)  # tokens stay out of the logs
    # Published-image tokens work only while the image is published.
    location = files.publish(served.image, "0" * 32, 7)
    assert location is not None and (await fetch(location))[0] == 200
    assert files.image_of(location) == served.image
    files.unpublish("0" * 32)
    assert (await fetch(location))[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/firmware/../etc/passwd",
        "/firmware/{sha}/../../../etc/passwd",
        "/firmware/%2e%2e/%2e%2e/etc/passwd",
        "/firmware/{sha}%2F..%2F..%2Fetc%2Fpasswd",
        "/firmware/{sha}/{token}/..",
        "/firmware/{sha}/{token}/%2E%2E%5Cwin.ini",
        "/firmware/{sha}/{token}/a\\..\\b",
        "/firmware//{sha}/{token}/x",
        "/firmware/{sha}/./{token}/x",
        "/firmware/{sha}/{token}/x%00.bin",
    ],
)
async def test_path_traversal_is_refused(served: Served, caplog, path: str) -> None:
    sha = served.image.sha256
    path = path.format(sha=sha, token=served.files.token("CP1", sha))
    caplog.clear()
    answer = await raw_request(served.files.port or 0, path)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:80]
    assert b"root:" not in answer
    assert any("refused (404)" in r.message for r in caplog.records)


async def test_https_with_the_site_certificate(origin: Origin, make_cache, tmp_path) -> None:
    pki = Pki(tmp_path)
    issued = pki.issue("sitectl.local", server=True)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(issued.cert, issued.key)
    cache = make_cache()
    data = image_bytes(300_000, seed=51)
    image = await cache.ensure(origin.add("fw.bin", data))
    port = free_port()
    files = FirmwareServer(cache, fw_config(tmp_path, base_url=f"https://127.0.0.1:{port}"))
    runner = await files.start("127.0.0.1", port, ssl_context=server_context)
    try:
        url = files.local_url("CP1", image)
        assert url is not None and url.startswith("https://")
        client = ssl.create_default_context(cafile=str(pki.ca.cert))
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, ssl=client, headers={"Range": "bytes=1000-"}) as response,
        ):
            assert response.status == 206 and await response.read() == data[1000:]
    finally:
        await runner.cleanup()


async def test_many_concurrent_downloads_get_identical_bytes(served: Served) -> None:
    results = await asyncio.gather(*(fetch(served.url(f"CP{i}")) for i in range(20)))
    assert {sha256(body) for _, _, body in results} == {served.image.sha256}
    assert {f"CP{i}" for i in range(20)} <= set(served.files.fetches)


async def test_mounted_in_the_local_http_server(origin: Origin, make_cache, tmp_path) -> None:
    """The production wiring: `HttpServer(routes=[files.add_routes])`, with its auth middleware
    closed to anonymous reads: chargers still fetch (they have their token, not the API's)."""
    from sitectl.http.server import HttpServer
    from sitectl.state import SiteState

    port = free_port()
    config = fw_config(tmp_path, base_url=f"http://127.0.0.1:{port}").model_copy(
        update={
            "http": fw_config(tmp_path).http.model_copy(
                update={"enabled": True, "listen_host": "127.0.0.1", "open_reads": False}
            )
        }
    )
    cache = make_cache(config)
    data = image_bytes(200_000, seed=52)
    image = await cache.ensure(origin.add("fw.bin", data))
    files = FirmwareServer(cache, config)
    http = HttpServer(config, SiteState(config), routes=[files.add_routes], port=port)
    task = asyncio.create_task(http.run())
    try:
        await asyncio.wait_for(http.ready.wait(), 10)
        url = files.local_url("CP1", image)
        status, _, body = await fetch(url)
        assert (status, body) == (200, data)
        status, headers, body = await fetch(url, Range="bytes=5-9")
        assert (status, body, headers["ETag"]) == (206, data[5:10], f'"{image.sha256}"')
        assert (await fetch(url.replace("/c.", "/c.x")))[0] == 404
        assert (await fetch(f"http://127.0.0.1:{port}/api/site"))[0] == 403  # the API stays closed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_download_url_expires_after_its_lifetime(served: Served) -> None:
    # Issue #22.6: tokens never expired; a URL from a charger's log was a key for ever.
    files = served.files
    now = {"t": 1_000_000.0}
    files._clock = lambda: now["t"]  # the server's clock, moved by the test
    url = served.url("CP1")
    status, _, body = await fetch(url)
    assert status == 200 and body == served.data
    now["t"] += files.config.firmware.token_lifetime_s + 3600  # past it, whatever the rounding
    status, _, _ = await fetch(url)
    assert status == 404
    assert files.image_of(url) is None
    # A fresh URL works again; a forged expiry does not verify.
    status, _, _ = await fetch(served.url("CP1"))
    assert status == 200
    token = url.rsplit("/", 2)[-2]
    kind, who, expires, mac = token.split(".")
    forged = f"{kind}.{who}.{int(expires) + 10**6}.{mac}"
    status, _, _ = await fetch(url.replace(token, forged))
    assert status == 404
