"""The image cache against a real HTTP origin (and an FTP one) on loopback."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from sitectl.firmware import (
    CacheFull,
    ChecksumMismatch,
    DownloadError,
    FirmwareCache,
    UnsupportedSource,
)
from sitectl.firmware.cache import USER_AGENT
from tests.firmware.support import FtpOrigin, Origin, image_bytes, md5, sha256
from tests.helpers import free_port, wait_for

MB = 1024 * 1024


async def test_concurrent_requests_share_one_download(origin: Origin, make_cache) -> None:
    data = image_bytes(3 * MB)
    url = origin.add("fw/image-1.2.bin", data)
    cache = make_cache()
    images = await asyncio.gather(*(cache.ensure(url) for _ in range(10)))
    assert len(origin.seen()) == 1
    assert origin.seen()[0].user_agent == USER_AGENT and origin.seen()[0].range is None
    image = images[0]
    assert all(i == image for i in images)
    assert (image.sha256, image.md5, image.size) == (sha256(data), md5(data), len(data))
    assert image.path.read_bytes() == data
    assert image.path.name == image.sha256  # content-addressed
    assert cache.lookup(url) == image
    assert await cache.ensure(url, md5(data)) == image
    assert len(origin.seen()) == 1  # a hit costs nothing


async def test_index_survives_a_restart_and_is_verified_first(origin, make_cache) -> None:
    data = image_bytes(MB, seed=2)
    url = origin.add("fw.bin", data)
    image = await make_cache().ensure(url)
    again = make_cache()  # a restart: a new cache on the same store and directory
    assert again.lookup(url) is None  # not verified by this process yet
    task = asyncio.create_task(again.run())
    try:
        await wait_for(lambda: again.lookup(url) is not None, message="verified after restart")
    finally:
        task.cancel()
    assert again.lookup(url) == image
    assert len(origin.seen()) == 1


async def test_interrupted_download_resumes_with_range(origin: Origin, make_cache) -> None:
    data = image_bytes(3 * MB, seed=3)
    url = origin.add("fw.bin", data)
    origin.cut_after["fw.bin"] = [MB + 12345]
    image = await make_cache().ensure(url)
    first, second = origin.seen()
    assert first.range is None and first.sent == MB + 12345
    assert second.range == f"bytes={MB + 12345}-" and second.if_range is not None
    assert second.status == 206
    assert first.sent + second.sent == len(data)  # one full download, in two parts
    assert image.sha256 == sha256(data) and image.path.read_bytes() == data


async def test_partial_download_resumes_after_a_restart(origin: Origin, make_cache) -> None:
    data = image_bytes(2 * MB, seed=4)
    url = origin.add("fw.bin", data)
    origin.cut_after["fw.bin"] = [700_000]
    with pytest.raises(DownloadError, match="after 700000 of 2097152 bytes"):
        await make_cache(attempts=1).ensure(url)
    image = await make_cache(attempts=1).ensure(url)  # sitectl restarted
    assert origin.seen()[1].range == "bytes=700000-"
    assert image.sha256 == sha256(data)


async def test_origin_that_declares_a_wrong_length(origin: Origin, make_cache, caplog) -> None:
    data = image_bytes(MB, seed=5)
    url = origin.add("fw.bin", data)
    origin.extra_length["fw.bin"] = 4096  # Content-Length says 4 KiB more than it sends
    cache = make_cache()
    with pytest.raises(DownloadError) as failure:
        await cache.ensure(url)
    assert f"of {len(data) + 4096} bytes" in str(failure.value)
    assert "gave up after 3 attempts" in str(failure.value)
    # The resume found the origin's real length shorter than declared, and started over.
    assert any("cannot serve bytes from" in r.message for r in caplog.records)
    assert cache.lookup(url) is None and cache.images() == []


async def test_wrong_checksum_is_refused(origin: Origin, make_cache) -> None:
    data = image_bytes(MB, seed=6)
    url = origin.add("fw.bin", data)
    cache = make_cache()
    events: list[tuple[str, str]] = []
    cache.security_event = lambda type_, text: events.append((type_, text))
    with pytest.raises(ChecksumMismatch, match="the request says 0123"):
        await cache.ensure(url, "0123456789abcdef0123456789abcdef")
    [(kind, text)] = events  # a security event of sitectl's own (issue #22.10)
    assert kind == "InvalidFirmwareChecksum" and "the request says 0123" in text
    with pytest.raises(UnsupportedSource, match="32 hex digits"):
        await cache.ensure(url, "not-an-md5")
    assert (await cache.ensure(url, md5(data).upper())).md5 == md5(data)


async def test_a_sha256_is_checked_and_a_failed_image_is_not_kept(
    origin: Origin, make_cache
) -> None:
    data = image_bytes(MB, seed=16)
    url = origin.add("fw.bin", data)
    cache = make_cache()
    with pytest.raises(ChecksumMismatch, match="SHA-256 is"):
        await cache.ensure(url, sha256="ab" * 32)
    assert cache.lookup(url) is None and cache.images() == []  # issue #22.6: not kept
    with pytest.raises(UnsupportedSource, match="64 hex digits"):
        await cache.ensure(url, sha256="ab" * 16)
    image = await cache.ensure(url, sha256=sha256(data).upper())
    assert image.sha256 == sha256(data)
    # An image another holder pins is kept though one request names another checksum.
    cache.pin(image.sha256, "rollout:1")
    with pytest.raises(ChecksumMismatch):
        await cache.ensure(url, sha256="cd" * 32)
    assert cache.image(image.sha256) is not None


async def test_corrupted_file_is_detected_evicted_and_fetched_again(origin, make_cache) -> None:
    data = image_bytes(MB, seed=7)
    url = origin.add("fw.bin", data)
    cache = make_cache()
    image = await cache.ensure(url)
    with open(image.path, "r+b") as f:  # one flipped byte in the middle
        f.seek(500_000)
        f.write(bytes([data[500_000] ^ 0xFF]))
    assert cache.lookup(url) is None  # changed on disk: checked in the background
    await wait_for(lambda: len(origin.seen()) == 2, message="fetched again")
    await wait_for(lambda: cache.lookup(url) is not None, message="cached again")
    assert cache.lookup(url).path.read_bytes() == data


async def test_corruption_with_the_same_mtime_is_found_at_start(origin, make_cache, caplog) -> None:
    data = image_bytes(MB, seed=8)
    url = origin.add("fw.bin", data)
    image = await make_cache().ensure(url)
    st = os.stat(image.path)
    with open(image.path, "r+b") as f:
        f.write(b"\0" * 16)
    os.utime(image.path, ns=(st.st_atime_ns, st.st_mtime_ns))  # a silent corruption
    restarted = make_cache()
    task = asyncio.create_task(restarted.run())
    try:
        await wait_for(lambda: restarted.lookup(url) is not None, message="re-fetched")
    finally:
        task.cancel()
    assert restarted.lookup(url).path.read_bytes() == data
    assert len(origin.seen()) == 2
    assert any("corrupt" in r.message and r.levelno == logging.ERROR for r in caplog.records)


async def test_cache_full_evicts_the_least_recently_used_unpinned_image(origin, make_cache) -> None:
    cache = make_cache()
    cache.max_bytes = 5 * MB  # the config's minimum is 16 MB; the logic is the same
    urls = [origin.add(f"fw-{i}.bin", image_bytes(2 * MB, seed=10 + i)) for i in range(4)]
    first = await cache.ensure(urls[0], pin="rollout:1")
    await cache.ensure(urls[1])
    assert cache.used_bytes == 4 * MB
    await cache.ensure(urls[2])  # 6 MB > 5: the oldest unpinned (fw-1) goes
    assert cache.lookup(urls[1]) is None and cache.lookup(urls[0]) == first
    assert not (cache.images_dir / sha256(image_bytes(2 * MB, seed=11))).exists()
    cache.pin(cache.lookup(urls[2]).sha256, "rollout:2")
    with pytest.raises(CacheFull, match="pinned by rollouts"):
        await cache.ensure(urls[3])  # everything else is pinned
    assert list(cache.partial_dir.iterdir()) == []  # refused before storing any of the body
    cache.unpin(first.sha256, "rollout:1")
    await cache.ensure(urls[3])
    assert cache.lookup(urls[0]) is None and cache.used_bytes == 4 * MB
    big = origin.add("big.bin", image_bytes(6 * MB, seed=20))
    with pytest.raises(CacheFull, match="larger than the whole cache"):
        await cache.ensure(big)


@pytest.mark.parametrize(
    ("url", "error", "text"),
    [
        ("sftp://example.com/fw.bin", UnsupportedSource, "scheme 'sftp'"),
        ("http://[::1/fw.bin", UnsupportedSource, "not a usable URL"),
        ("http:///fw.bin", UnsupportedSource, "no host"),
        ("not a url", UnsupportedSource, "not a usable URL"),
    ],
)
async def test_broken_urls(make_cache, url: str, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        await make_cache().ensure(url)


async def test_origin_errors(origin: Origin, make_cache) -> None:
    cache = make_cache()
    with pytest.raises(DownloadError, match="HTTP 404"):
        await cache.ensure(origin.url("missing.bin"))
    origin.add("busy.bin", image_bytes(1000))
    origin.status["busy.bin"] = [503, 503, 503]
    with pytest.raises(DownloadError, match=r"HTTP 503.*gave up after 3 attempts"):
        await cache.ensure(origin.url("busy.bin"))
    origin.status["busy.bin"] = [503]
    assert (await cache.ensure(origin.url("busy.bin"))).size == 1000  # transient, retried
    origin.add("gz.bin", image_bytes(1000))
    origin.gzip.add("gz.bin")
    with pytest.raises(DownloadError, match="Content-Encoding"):
        await cache.ensure(origin.url("gz.bin"))
    with pytest.raises(DownloadError, match="Connect"):
        await cache.ensure(f"http://127.0.0.1:{free_port()}/fw.bin")


async def test_prefetch_logs_failures_and_backs_off(origin: Origin, make_cache, caplog) -> None:
    cache = make_cache()
    url = origin.url("missing.bin")
    assert cache.prefetch(url)
    await wait_for(lambda: not cache.downloading(url))
    await wait_for(lambda: any("not cached" in r.message for r in caplog.records))
    assert not cache.prefetch(url)  # failed a moment ago: not again yet
    assert cache.prefetch(url, force=True)
    assert not cache.prefetch("gopher://example.com/x")


async def test_ftp_origin_with_resume(make_cache) -> None:
    data = image_bytes(2 * MB, seed=30)
    ftp = await FtpOrigin({"pub/fw.bin": data}).start()
    try:
        ftp.cut_after = [600_000]
        image = await make_cache().ensure(ftp.url("pub/fw.bin"))
        assert image.sha256 == sha256(data)
        assert "REST 600000" in ftp.commands and ftp.commands.count("RETR pub/fw.bin") == 2
        # PASV only (no EPSV): the advertised private address is ignored.
        pasv = FtpOrigin({"fw.bin": data}, epsv=False)
        await pasv.start()
        try:
            other = make_cache()
            assert (await other.ensure(pasv.url("fw.bin"))).sha256 == sha256(data)
            assert "PASV" in pasv.commands
            with pytest.raises(DownloadError, match="550"):
                await other.ensure(pasv.url("missing.bin"))
        finally:
            await pasv.stop()
    finally:
        await ftp.stop()


async def test_import_file(tmp_path, make_cache) -> None:
    data = image_bytes(MB, seed=40)
    source = tmp_path / "local.bin"
    source.write_bytes(data)
    cache: FirmwareCache = make_cache()
    image = await cache.import_file(source, "http://vendor.example/fw.bin")
    assert cache.lookup("http://vendor.example/fw.bin") == image
    assert image.path.read_bytes() == data and source.exists()


async def test_an_https_origin_redirecting_to_http_is_refused(
    origin: Origin, make_cache, tmp_path
) -> None:
    # Issue #22.6: the redirect was followed, so an image asked for over TLS came in clear.
    import ssl

    from aiohttp import web

    from tests.ocpp.certs import Pki

    plain = origin.add("fw.bin", image_bytes(50_000, seed=61))
    pki = Pki(tmp_path)
    issued = pki.issue("127.0.0.1", server=True)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(issued.cert, issued.key)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(plain)

    app = web.Application()
    app.router.add_get("/fw.bin", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context).start()
    try:
        client = ssl.create_default_context(cafile=str(pki.ca.cert))
        cache = make_cache(ssl_context=client)
        events: list[tuple[str, str]] = []
        cache.security_event = lambda type_, text: events.append((type_, text))
        with pytest.raises(DownloadError, match="redirected from https to http"):
            await cache.ensure(f"https://127.0.0.1:{port}/fw.bin")
        assert [kind for kind, _ in events] == ["InsecureFirmwareUrlRefused"]
        assert cache.image(sha256(origin.files["fw.bin"])) is None  # nothing kept
    finally:
        await runner.cleanup()
