"""The HTTP side against a LAN prober: token guessing, slow clients, headers (issue #22)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sitectl.http.server import HttpServer
from tests.helpers import wait_for
from tests.http.test_api import TOKEN, config, populated


async def test_token_guessing_is_limited_logged_sparingly_and_alarmed(caplog) -> None:
    cfg = config(open_reads=False)
    state = populated(cfg)
    server = HttpServer(cfg, state)
    caplog.set_level(logging.WARNING, logger="sitectl")
    async with TestClient(TestServer(server.app)) as client:
        statuses = []
        for k in range(40):
            response = await client.get("/api/site", headers={"Authorization": f"Bearer x{k}"})
            statuses.append(response.status)
        assert statuses == [401] * 10 + [429] * 30
        good = await client.get("/api/site", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status == 429 and int(good.headers["Retry-After"]) > 0
    assert ("http_login_failures", "127.0.0.1") in state.alarms
    # And a security event of sitectl's own (to the CSMS and MQTT), once.
    [event] = state.security_events.events()
    assert event.type == "FailedLoginAttempts" and event.tech_info.startswith("HTTP: ")
    lines = [r for r in caplog.records if r.name.startswith("sitectl.http")]
    assert len(lines) <= 7


@pytest.fixture
async def running():
    """An HttpServer on a real socket (127.0.0.1, a free port); yields a starter."""
    tasks: list[asyncio.Task] = []

    async def start(allowed_hosts: list[str] | None = None, **kwargs) -> HttpServer:
        cfg = config()
        http = {"listen_host": "127.0.0.1", "allowed_hosts": allowed_hosts or []}
        cfg = cfg.model_copy(update={"http": cfg.http.model_copy(update=http)})
        server = HttpServer(cfg, populated(cfg), port=0, **kwargs)
        tasks.append(asyncio.create_task(server.run()))
        await asyncio.wait_for(server.ready.wait(), 10)
        return server

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(65536), within_s) == b""
    except (TimeoutError, ConnectionResetError):
        return False


async def _get(port: int, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET /api/site HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_a_request_head_that_never_ends_is_closed_at_the_deadline(running) -> None:
    server = await running(head_timeout_s=1.0, max_connections_per_client=100)
    clients = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(30)]
    for _, writer in clients:
        writer.write(b"GET /api/site HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    started = asyncio.get_running_loop().time()
    closed = await asyncio.gather(*(_closed_by_server(r, 10) for r, _ in clients))
    assert all(closed) and asyncio.get_running_loop().time() - started < 5
    for _, writer in clients:
        writer.close()
    assert (await _get(server.port)).startswith(b"HTTP/1.1 200")


async def test_connections_are_capped_per_client_and_in_all(running) -> None:
    server = await running(max_connections=6, max_connections_per_client=4)
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
    await wait_for(lambda: len(server.connections.open) == 4, message="four connections")
    assert await _get(server.port) == b""  # a fifth from the same address: refused
    # Another address still has room, up to the global cap.
    assert (await _get(server.port, "127.0.0.2")).startswith(b"HTTP/1.1 200")
    more = [
        await asyncio.open_connection("127.0.0.1", server.port, local_addr=("127.0.0.3", 0))
        for _ in range(2)
    ]
    await wait_for(lambda: len(server.connections.open) == 6, message="six connections")
    assert await _get(server.port, "127.0.0.4") == b""  # the global cap
    for _, writer in held + more:
        writer.close()
    await wait_for(lambda: not server.connections.open, message="the connections to go")
    assert (await _get(server.port)).startswith(b"HTTP/1.1 200")


async def test_accept_errors_are_logged_once_a_window(running, caplog) -> None:
    await running()
    caplog.set_level(logging.ERROR)
    loop = asyncio.get_running_loop()
    for _ in range(1000):
        loop.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": OSError(24, "Too many open files"),
            }
        )
    assert len([r for r in caplog.records if "accept" in r.getMessage()]) == 1


async def test_every_response_has_security_headers_and_no_version(running) -> None:
    server = await running()
    for path in ("/", "/static/dashboard.js", "/api/site", "/api/nope", "/metrics"):
        response = await _get_path(server.port, path)
        head = response.split(b"\r\n\r\n", 1)[0].decode().lower()
        assert "\r\nserver: sitectl\r\n" in head, (path, head)
        assert "x-frame-options: deny" in head and "x-content-type-options: nosniff" in head
        assert "content-security-policy: default-src 'self'" in head
        assert "frame-ancestors 'none'" in head
        assert "aiohttp" not in head and "python" not in head


async def test_open_reads_answer_only_to_known_host_names(running) -> None:
    server = await running()
    ok = [
        "127.0.0.1",
        f"127.0.0.1:{server.port}",
        "[::1]:8080",
        "localhost:8080",
        socket.gethostname(),
    ]
    for host in ok:
        assert (await _get_path(server.port, "/api/site", host)).startswith(b"HTTP/1.1 200"), host
    rebound = await _get_path(server.port, "/api/site", "attacker.example:8080")
    assert rebound.startswith(b"HTTP/1.1 403") and b"allowed_hosts" in rebound
    assert (await _get_path(server.port, "/metrics", "attacker.example")).startswith(
        b"HTTP/1.1 403"
    )
    # The token's holder may use any name; the page itself is no secret.
    token = {"Authorization": f"Bearer {TOKEN}"}
    assert (await _get_path(server.port, "/api/site", "depot.example", token)).startswith(
        b"HTTP/1.1 200"
    )
    assert (await _get_path(server.port, "/", "depot.example")).startswith(b"HTTP/1.1 200")


async def test_a_configured_name_is_allowed(running) -> None:
    server = await running(allowed_hosts=["depot-7.fleet.example"])
    response = await _get_path(server.port, "/api/site", "Depot-7.fleet.example:8080")
    assert response.startswith(b"HTTP/1.1 200")


async def _get_path(
    port: int, path: str, host: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()
    )
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
