"""The read token and the dashboard's session login, on real sockets (issue #22.1).

With ``open_reads: false`` the dashboard signs in with either token and gets a session cookie
that reads, never writes and never raw frames; a monitoring system reads with the read token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from sitectl.config import Config
from sitectl.http.auth import SESSION_COOKIE, SessionStore
from sitectl.http.server import HttpServer
from tests.http.test_api import TOKEN, config, populated
from tests.http.test_tls import tls_config

READ_TOKEN = "monitoring-read-token-4711"
OVERRIDE = {"node": "grid", "limit_a": 100}


def closed_config(
    read_token: str | None = READ_TOKEN, token: str | None = TOKEN, open_reads: bool = False
) -> Config:
    cfg = config(open_reads=open_reads, token=token)
    http = {
        "listen_host": "127.0.0.1",
        "read_token": SecretStr(read_token) if read_token else None,
        "session_idle_s": 600.0,
        "session_lifetime_s": 3600.0,
    }
    return cfg.model_copy(update={"http": cfg.http.model_copy(update=http)})


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def serving(cfg: Config, **kwargs) -> AsyncIterator[HttpServer]:
    """The HTTP server on a free port of 127.0.0.1 (raw frames of CP1 for the raw-frame tests)."""
    raw = {"CP1": [(populated(cfg).clock(), "charger", "in", '[2,"1","Authorize",{}]')]}
    commands = kwargs.pop("commands", lambda name, payload: {"ok": True, "command": name})
    server = HttpServer(cfg, populated(cfg), port=0, raw_frames=raw, commands=commands, **kwargs)
    task = asyncio.create_task(server.run())
    try:
        await asyncio.wait_for(server.ready.wait(), 10)
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def start() -> AsyncIterator[Callable]:
    """Starts a server and a browser-like client (its own cookie jar) for it."""
    stack = contextlib.AsyncExitStack()

    async def make(cfg: Config | None = None, **kwargs) -> tuple[HttpServer, Browser]:
        server = await stack.enter_async_context(serving(cfg or closed_config(), **kwargs))
        return server, await stack.enter_async_context(Browser(server.port))

    async with stack:
        yield make


class Browser:
    """An HTTP client that keeps cookies like a browser does (IP hosts included)."""

    def __init__(self, port: int, scheme: str = "http", ssl_context: ssl.SSLContext | None = None):
        self.base = f"{scheme}://127.0.0.1:{port}"
        self.ssl = ssl_context
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def request(
        self, method: str, path: str, **kwargs
    ) -> tuple[int, dict | str, aiohttp.ClientResponse]:
        async with self.http.request(method, self.base + path, ssl=self.ssl, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body, r

    async def login(self, token: str) -> tuple[int, dict | str, aiohttp.ClientResponse]:
        return await self.request("POST", "/api/login", json={"token": token})

    async def status(self, path: str = "/api/site", **kwargs) -> int:
        return (await self.request("GET", path, **kwargs))[0]

    def cookie(self) -> str | None:
        found = [c.value for c in self.http.cookie_jar if c.key == SESSION_COOKIE]
        return found[0] if found else None


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_signing_in_with_the_write_token_gives_reads_but_no_writes_no_raw_frames(
    start,
) -> None:
    _, browser = await start()
    assert await browser.status() == 401  # closed reads, not signed in: the login form
    status, view, _ = await browser.request("GET", "/api/login")
    assert status == 200 and view["signed_in"] is False and view["reads"] is False
    assert view["login_available"] is True
    status, view, _ = await browser.login(TOKEN)
    assert status == 200 and view["signed_in"] is True and view["via"] == "token"
    assert view["reads"] is True and view["writes"] is False and view["raw_frames"] is False
    assert view["idle_timeout_s"] == 600.0 and view["expires_at"]
    for path in ("/api/site", "/api/chargers", "/api/chargers/CP1", "/api/alarms", "/metrics"):
        assert await browser.status(path) == 200, path
    # Signed in with the write token, and still the cookie never writes.
    status, body, _ = await browser.request("POST", "/api/overrides", json=OVERRIDE)
    assert status == 401 and body["error"].startswith("a valid bearer token is required")
    assert await browser.status("/api/chargers/CP1?raw=true") == 401
    status, view, _ = await browser.request("GET", "/api/login")
    assert view["signed_in"] is True and view["via"] == "token"
    # The bearer token itself still does everything.
    assert await browser.status("/api/chargers/CP1?raw=true", headers=bearer(TOKEN)) == 200
    status, _, _ = await browser.request(
        "POST", "/api/overrides", json=OVERRIDE, headers=bearer(TOKEN)
    )
    assert status == 200


async def test_the_read_token_reads_and_signs_in_but_never_writes(start) -> None:
    _, browser = await start()
    assert await browser.status("/api/site", headers=bearer(READ_TOKEN)) == 200
    assert await browser.status("/metrics", headers=bearer(READ_TOKEN)) == 200
    status, body, _ = await browser.request(
        "POST", "/api/overrides", json=OVERRIDE, headers=bearer(READ_TOKEN)
    )
    assert status == 403 and "reads only" in body["error"]
    assert await browser.status("/api/chargers/CP1?raw=true", headers=bearer(READ_TOKEN)) == 403
    status, view, _ = await browser.login(READ_TOKEN)
    assert status == 200 and view["via"] == "read_token"
    assert await browser.status() == 200
    assert await browser.status("/api/chargers/CP1?raw=true") == 401


async def test_a_read_token_alone_opens_reads_and_keeps_writes_disabled(start) -> None:
    _, browser = await start(closed_config(token=None))
    assert await browser.status("/api/site", headers=bearer(READ_TOKEN)) == 200
    status, body, _ = await browser.request(
        "POST", "/api/overrides", json=OVERRIDE, headers=bearer(READ_TOKEN)
    )
    assert status == 403 and "no http.token is configured" in body["error"]
    assert (await browser.login(READ_TOKEN))[0] == 200 and await browser.status() == 200


async def test_without_any_token_signing_in_is_disabled(start) -> None:
    _, browser = await start(closed_config(token=None, read_token=None))
    status, body, _ = await browser.login("anything-at-all-0000")
    assert status == 403 and "signing in is disabled" in body["error"]
    assert (await browser.request("GET", "/api/login"))[1]["login_available"] is False
    assert await browser.status() == 403


async def test_the_cookie_is_http_only_strict_for_the_whole_site_and_not_secure_on_http(
    start,
) -> None:
    _, browser = await start()
    _, _, response = await browser.login(TOKEN)
    [header] = response.headers.getall("Set-Cookie")
    parts = [p.strip().lower() for p in header.split(";")]
    name, value = header.split(";")[0].split("=", 1)
    assert name == SESSION_COOKIE and len(value) >= 40  # 256 random bits
    assert TOKEN not in header and READ_TOKEN not in header
    assert "httponly" in parts and "samesite=strict" in parts and "path=/" in parts
    assert "max-age=3600" in parts and "secure" not in parts
    assert response.headers["Cache-Control"] == "no-store"


async def test_the_cookie_is_secure_under_tls(tmp_path: Path) -> None:
    cfg, ca = tls_config(tmp_path)
    cfg = cfg.model_copy(
        update={
            "http": cfg.http.model_copy(update={"open_reads": False, "token": SecretStr(TOKEN)})
        }
    )
    async with serving(cfg) as server:
        trusting = ssl.create_default_context(cafile=str(ca))
        async with Browser(server.port, "https", trusting) as browser:
            status, view, response = await browser.login(TOKEN)
            assert status == 200 and view["signed_in"] is True
            parts = [p.strip().lower() for p in response.headers["Set-Cookie"].split(";")]
            assert "secure" in parts and "httponly" in parts and "samesite=strict" in parts
            assert await browser.status() == 200


async def test_a_wrong_token_is_refused_counted_with_bearer_failures_and_locks_out(
    start, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="sitectl")
    server, browser = await start()
    statuses = []
    for k in range(5):  # five wrong bearer tokens and five wrong sign-ins: one count
        statuses.append(await browser.status("/api/site", headers=bearer(f"guess-{k}")))
        statuses.append((await browser.login(f"guess-{k}-{k}"))[0])
    assert statuses == [401] * 10
    status, _, response = await browser.login(TOKEN)  # locked: not even checked
    assert status == 429 and int(response.headers["Retry-After"]) > 0
    assert browser.cookie() is None
    assert await browser.status("/api/site", headers=bearer(TOKEN)) == 429
    assert ("http_login_failures", "127.0.0.1") in server.state.alarms
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "guess-" not in text and TOKEN not in text
    assert "security event FailedLoginAttempts: HTTP: " in text
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) <= 6


async def test_malformed_sign_ins_are_refused_and_not_counted(start) -> None:
    server, browser = await start()
    form = await browser.request("POST", "/api/login", data={"token": TOKEN})
    assert form[0] == 415  # a plain HTML form (another site's, too) cannot sign in
    bodies = ["not json", "[1]", '{"token": 5}', '{"token": ""}', '{"token": "x", "more": 1}']
    for body in [*bodies, "[" * 20_000 + "]" * 20_000]:
        status, reply, _ = await browser.request(
            "POST", "/api/login", data=body, headers={"Content-Type": "application/json"}
        )
        assert status == 422 and reply["field"] == "token", body[:20]
    assert server.logins.locked("127.0.0.1", "http") == 0
    assert (await browser.login(TOKEN))[0] == 200


async def test_a_session_ends_when_idle_and_at_its_lifetime(start) -> None:
    clock = Clock()
    server, browser = await start(session_clock=clock)
    await browser.login(TOKEN)
    clock.now += 599.0
    assert await browser.status() == 200  # used: idle again from now
    clock.now += 599.0
    assert await browser.status() == 200
    clock.now += 600.0
    assert await browser.status() == 401  # ten minutes without a request
    assert (await browser.request("GET", "/api/login"))[1]["signed_in"] is False
    assert len(server.auth.sessions) == 0
    # In use all the time, it still ends an hour after its sign-in.
    await browser.login(READ_TOKEN)
    for _ in range(7):  # a request every 500 s: never idle for long
        clock.now += 500.0
        assert await browser.status() == 200
    clock.now += 99.0  # 3,599 s after the second sign-in
    assert await browser.status() == 200
    clock.now += 1.0
    assert await browser.status() == 401


async def test_signing_out_ends_the_session_for_the_copied_cookie_too(start) -> None:
    server, browser = await start()
    await browser.login(TOKEN)
    session_id = browser.cookie()
    assert session_id is not None
    status, view, response = await browser.request("POST", "/api/logout")
    assert status == 200 and view["signed_in"] is False and view["reads"] is False
    assert "max-age=0" in response.headers["Set-Cookie"].lower()
    assert browser.cookie() in (None, "")
    assert await browser.status() == 401
    async with Browser(server.port) as other:  # someone who copied the cookie before
        other.http.cookie_jar.update_cookies({SESSION_COOKIE: session_id})
        assert await other.status() == 401
    assert (await browser.request("POST", "/api/logout"))[0] == 200  # twice is harmless


async def test_a_new_sign_in_replaces_the_session_the_browser_had(start) -> None:
    server, browser = await start()
    await browser.login(READ_TOKEN)
    first = browser.cookie()
    await browser.login(TOKEN)
    assert browser.cookie() != first and len(server.auth.sessions) == 1
    async with Browser(server.port) as other:
        other.http.cookie_jar.update_cookies({SESSION_COOKIE: first})
        assert await other.status() == 401


async def test_sessions_are_bounded_the_least_recently_used_goes() -> None:
    clock = Clock()
    store = SessionStore(idle_s=600, lifetime_s=3600, max_sessions=3, clock=clock)
    ids = [store.create("token") for _ in range(3)]
    clock.now += 1
    assert store.get(ids[0]) is not None  # used: the oldest unused is now ids[1]
    ids.append(store.create("read_token"))
    assert len(store) == 3
    assert store.get(ids[1]) is None
    assert all(store.get(i) is not None for i in (ids[0], ids[2], ids[3]))
    assert store.get("") is None and store.get("x" * 10_000) is None
    # Expired sessions make room before anyone is pushed out.
    clock.now += 600
    store.create("token")
    assert len(store) == 1


async def test_sign_ins_and_cookies_answer_only_to_known_host_names(start) -> None:
    server, browser = await start()
    rebound = {"Host": f"attacker.example:{server.port}"}
    status, body, _ = await browser.request(
        "POST", "/api/login", json={"token": TOKEN}, headers=rebound
    )
    assert status == 403 and "allowed_hosts" in body["error"]
    assert browser.cookie() is None
    await browser.login(TOKEN)
    status, body, _ = await browser.request("GET", "/api/site", headers=rebound)
    assert status == 403 and "allowed_hosts" in body["error"]
    assert await browser.status("/api/site", headers={"Host": "localhost"}) == 200


async def test_with_open_reads_the_page_needs_no_sign_in(start) -> None:
    _, browser = await start(closed_config(open_reads=True))
    status, view, _ = await browser.request("GET", "/api/login")
    assert status == 200 and view == {
        "signed_in": False,
        "reads": True,
        "writes": False,
        "raw_frames": False,
        "via": None,
        "expires_at": None,
        "idle_timeout_s": None,
        "login_available": True,
    }
    assert await browser.status() == 200
    # Raw frames still need the write token, signed in or not.
    await browser.login(TOKEN)
    assert await browser.status("/api/chargers/CP1?raw=true") == 401
    assert await browser.status("/api/chargers/CP1?raw=true", headers=bearer(READ_TOKEN)) == 403


def test_the_openapi_document_names_the_sign_in_and_the_cookie() -> None:
    from sitectl.http.openapi import openapi_document

    doc = openapi_document(closed_config())
    schemes = doc["components"]["securitySchemes"]
    assert schemes["session"] == {**schemes["session"], "in": "cookie", "name": SESSION_COOKIE}
    assert "reads only" in schemes["session"]["description"]
    assert doc["security"] == [{}, {"bearer": []}, {"session": []}]
    assert doc["paths"]["/api/overrides"]["post"]["security"] == [{"bearer": []}]
    login = doc["paths"]["/api/login"]
    assert (
        login["post"]["security"] == [{}]
        and "Set-Cookie" in login["post"]["responses"]["200"]["headers"]
    )
    assert {"401", "415", "422", "429"} <= set(login["post"]["responses"])
    assert "get" in login and "post" in doc["paths"]["/api/logout"]
