"""Who may do what on the local HTTP API: bearer tokens, the dashboard's session, open reads.

Three ways in, in this order of power:

- ``Authorization: Bearer <http.token>`` (the write token): everything, raw frames included.
- ``Authorization: Bearer <http.read_token>`` (a monitoring system): reads only, never a write,
  never ``?raw=true`` (raw frames carry charger passwords and RFIDs).
- The dashboard's session cookie, from ``POST /api/login`` with either token: reads only, never
  a write, never raw frames, whichever token signed it in.

and, with ``http.open_reads`` (the default), reads without any of them.

Why the cookie never writes: a browser attaches a cookie to requests other pages make (a form
posted from elsewhere, a link), so a cookie that could write would need CSRF tokens on every
write. A bearer token is never attached by the browser on its own, so writes that take only the
bearer token cannot be forged from another page. The cookie is also ``SameSite=Strict`` (not
sent on requests another site starts), ``HttpOnly`` (no script reads it) and ``Secure`` under
``http.tls``; ``POST /api/login`` takes only ``application/json``, which a plain HTML form cannot
send, so another site cannot sign a browser in either.

DNS rebinding: a page of another site whose name was made to resolve to sitectl reads the API
as "same origin". Open reads, cookie reads and sign-ins therefore answer only to known host names
(IP addresses, localhost, this machine's names, ``http.allowed_hosts``). The browser sends the
cookie only to the name it was set under, so a rebound name never carries it; the check on the
sign-in keeps a rebound page from making a session of its own with a token it learnt. A bearer
token's holder may use any name: the browser never sends that token by itself.

Failed sign-ins and wrong bearer tokens count together, per client address (`LoginGuard`):
after 10 in a minute that address is refused unchecked for a minute and the warning alarm
``http_login_failures`` is raised. No log line carries a token or a session id.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from sitectl.config import Config
from sitectl.http.views import ErrorView
from sitectl.ocpp.budget import LogBudget, LoginGuard
from sitectl.security_events import INVALID_LOGIN
from sitectl.state import Severity, SiteState

__all__ = [
    "MAX_SESSIONS",
    "SESSION_COOKIE",
    "HttpAuth",
    "LoginRequest",
    "LoginView",
    "SessionStore",
    "wants_raw",
]

log = logging.getLogger(__name__)

#: The dashboard session's cookie.
SESSION_COOKIE = "sitectl_session"
#: Sessions kept at once; a new one beyond pushes out the one unused the longest.
MAX_SESSIONS = 64

Via = Literal["token", "read_token"]

# Handlers outside the rules: the page and its scripts (no data), the chargers' firmware files
# (their own per-URL tokens) and the sign-in endpoints (their own checks).
_PUBLIC_PREFIXES = ("/static/", "/firmware/")
_LOGIN_PATHS = ("/api/login", "/api/logout")


def wants_raw(request: web.Request) -> bool:
    """Whether the request asks for unredacted frames (``?raw=true``)."""
    return request.query.get("raw", "false").lower() not in ("false", "0", "")


def host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8080" -> "::1")."""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _refuse(status: int, message: str, field: str | None = None) -> web.Response:
    body = ErrorView(error=message, field=field).model_dump_json(exclude_none=True)
    response = web.Response(status=status, text=body, content_type="application/json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="sitectl"'
    return response


@dataclass
class Session:
    """One signed-in dashboard: which token signed it in, and when (monotonic seconds)."""

    via: Via
    created: float
    last_used: float


class SessionStore:
    """The dashboard sessions, in memory (a restart signs every dashboard out).

    Keyed by the SHA-256 of the session id, so the id itself is nowhere but in the cookie. A
    session ends ``idle_s`` after its last request or ``lifetime_s`` after its sign-in,
    whichever comes first; at most ``max_sessions`` are kept (the least recently used goes).
    """

    def __init__(
        self,
        idle_s: float,
        lifetime_s: float,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode()).digest()

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used >= self.idle_s or now - session.created >= self.lifetime_s

    def create(self, via: Via) -> str:
        """A new session; returns its id (256 random bits, URL-safe)."""
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        self._sessions[self._key(session_id)] = Session(via, now, now)
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id, marked as used now; None if unknown or expired."""
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.last_used = now
        self._sessions.move_to_end(key)
        return session

    def drop(self, session_id: str | None) -> bool:
        """End a session (sign-out); whether there was one."""
        if not session_id:
            return False
        return self._sessions.pop(self._key(session_id), None) is not None

    def remaining_s(self, session: Session) -> float:
        """Seconds until the session ends unless it is used again."""
        now = self.clock()
        return max(
            0.0,
            min(session.last_used + self.idle_s, session.created + self.lifetime_s) - now,
        )


class LoginRequest(BaseModel):
    """``POST /api/login``: either token of ``http``."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=1024, description="http.token or http.read_token.")


class LoginView(BaseModel):
    """What this browser may do: ``GET``/``POST /api/login``, ``POST /api/logout``."""

    signed_in: bool = Field(description="The request carried a live session cookie.")
    reads: bool = Field(
        description="Reads are served to this browser now (open reads under this name, or "
        "its session)."
    )
    writes: Literal[False] = Field(
        False, description="Never through the session: writes need the bearer token."
    )
    raw_frames: Literal[False] = Field(
        False, description="Never through the session: raw frames need the bearer token."
    )
    via: Via | None = Field(None, description="The token the session was signed in with.")
    expires_at: datetime | None = Field(
        None, description="When the session ends unless it is used again (UTC)."
    )
    idle_timeout_s: float | None = Field(None, description="http.session_idle_s.")
    login_available: bool = Field(description="A token is configured, so signing in is possible.")


class HttpAuth:
    """The access rules of the local HTTP server: one aiohttp middleware and the sign-in
    endpoints (``GET``/``POST /api/login``, ``POST /api/logout``).

    Args:
        config: the validated configuration (``http`` section).
        state: for the ``http_login_failures`` alarm.
        secure: the server speaks HTTPS (the cookie is then ``Secure``).
        clock: monotonic seconds for session expiry (injected by tests).
    """

    def __init__(
        self,
        config: Config,
        state: SiteState,
        secure: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        http = config.http
        self.config = config
        self.state = state
        self.secure = secure
        self.open_reads = http.open_reads
        self._write = http.token.get_secret_value() if http.token else None
        self._read = http.read_token.get_secret_value() if http.read_token else None
        machine = socket.gethostname().lower()
        self.hosts = {"localhost", machine, machine.split(".")[0], f"{machine}.local"}
        self.hosts |= {h.lower().rstrip(".") for h in http.allowed_hosts}
        if not is_ip(http.listen_host):
            self.hosts.add(http.listen_host.lower())
        # Token guessing: a few lines a minute per address, and a pause after 10 failures.
        self._refusals = LogBudget(lines=5, window_s=60.0)
        self.logins = LoginGuard(max_failures=10, window_s=60.0, lockout_s=60.0)
        self.sessions = SessionStore(http.session_idle_s, http.session_lifetime_s, clock=clock)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/login", self._status)
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/logout", self._logout)

    # Checks.

    def known_host(self, request: web.Request) -> bool:
        """The request names sitectl by an address or a name it knows (no DNS rebinding)."""
        name = host_name(request.headers.get("Host", ""))
        return is_ip(name) or name in self.hosts

    def _host_refusal(self, request: web.Request, what: str) -> web.Response:
        name = host_name(request.headers.get("Host", ""))
        return _refuse(
            403,
            f"{what} are not served under the name {name[:64]!r} (add it to http.allowed_hosts)",
        )

    def _grant(self, secret: str) -> Via | None:
        """Which token `secret` is (both compared in constant time), or None."""
        given = secret.encode()
        write = self._write is not None and hmac.compare_digest(given, self._write.encode())
        read = self._read is not None and hmac.compare_digest(given, self._read.encode())
        return "token" if write else "read_token" if read else None

    def _locked(self, address: str) -> web.Response | None:
        locked = self.logins.locked(address, "http")
        if not locked:
            return None
        response = _refuse(429, "too many failed logins: try again later")
        response.headers["Retry-After"] = str(max(1, round(locked)))
        return response

    def _failed(self, request: web.Request, address: str, what: str, counted: bool) -> None:
        """Log a refusal sparingly (never the token); count it toward the lockout and alarm."""
        note = self._refusals.allow(address)
        if note is not None:
            log.warning(
                "HTTP %s %s refused: %s (from %s)%s",
                request.method,
                request.path[:100],
                what,
                address,
                note,
            )
        if counted and self.logins.failed(address, "http") is not None:
            text = f"{self.logins.max_failures} wrong HTTP tokens from {address} in 60 s"
            self.state.security_events.record(INVALID_LOGIN, f"HTTP: {text}")
            self.state.raise_alarm("http_login_failures", address, Severity.WARNING, text)

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path == "/" or path.startswith(_PUBLIC_PREFIXES) or path in _LOGIN_PATHS:
            return await handler(request)
        # Raw frames carry passwords and RFIDs: the write token's, even when reads are open.
        write = request.method not in ("GET", "HEAD") or wants_raw(request)
        given = request.headers.get("Authorization")
        if not write:
            known = self.known_host(request)
            if known and self.open_reads:
                return await handler(request)
            if given is None:
                cookie = SESSION_COOKIE in request.cookies
                if known and cookie and self._session(request) is not None:
                    return await handler(request)
                if not known and (self.open_reads or cookie):
                    return self._host_refusal(request, "reads without the token")
        if self._write is None and (write or self._read is None):
            return _refuse(403, "no http.token is configured: this endpoint is disabled")
        address = str(request.remote)
        locked = self._locked(address)
        if locked is not None:
            return locked
        scheme, _, secret = (given or "").partition(" ")
        grant = self._grant(secret) if scheme == "Bearer" else None
        if grant is None:
            self._failed(request, address, "missing or wrong token", counted=bool(given))
            hint = "" if write else " (or sign in: POST /api/login)"
            return _refuse(401, f"a valid bearer token is required{hint}")
        self.logins.succeeded(address, "http")
        if write and grant != "token":
            return _refuse(403, "the read token allows reads only: this needs http.token")
        return await handler(request)

    # The sign-in endpoints.

    def _view(self, request: web.Request, session: Session | None) -> LoginView:
        remaining = self.sessions.remaining_s(session) if session is not None else None
        return LoginView(
            signed_in=session is not None,
            reads=self.known_host(request) and (self.open_reads or session is not None),
            via=session.via if session is not None else None,
            expires_at=(
                datetime.now(UTC) + timedelta(seconds=remaining) if remaining is not None else None
            ),
            idle_timeout_s=self.sessions.idle_s if session is not None else None,
            login_available=self._write is not None or self._read is not None,
        )

    def _reply(self, view: LoginView) -> web.Response:
        response = web.Response(text=view.model_dump_json(), content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response

    def _set_cookie(self, response: web.Response, value: str, max_age: int) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.secure or None,
        )

    async def _status(self, request: web.Request) -> web.Response:
        return self._reply(self._view(request, self._session(request)))

    async def _login(self, request: web.Request) -> web.Response:
        if not self.known_host(request):
            return self._host_refusal(request, "sign-ins")
        if self._write is None and self._read is None:
            return _refuse(
                403, "no http.token or http.read_token is configured: signing in is disabled"
            )
        # A plain HTML form cannot send JSON: no other site can post a sign-in.
        if request.content_type != "application/json":
            return _refuse(415, "the body must be JSON (Content-Type: application/json)")
        address = str(request.remote)
        locked = self._locked(address)
        if locked is not None:
            return locked
        try:
            body = LoginRequest.model_validate(json.loads(await request.read()))
        except (ValueError, RecursionError):  # bad JSON or UTF-8, a bad shape, too deep
            return _refuse(422, 'the body must be {"token": "..."}', "token")
        via = self._grant(body.token)
        if via is None:
            self._failed(request, address, "wrong token", counted=True)
            return _refuse(401, "wrong token")
        self.logins.succeeded(address, "http")
        # Always a new id (an id someone planted before the sign-in is worth nothing after).
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))
        session_id = self.sessions.create(via)
        session = self.sessions.get(session_id)
        log.info(
            "dashboard signed in from %s with http.%s: reads only, for at most %.0f s",
            address,
            via,
            self.sessions.lifetime_s,
        )
        response = self._reply(self._view(request, session))
        self._set_cookie(response, session_id, int(self.sessions.lifetime_s))
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        if self.sessions.drop(request.cookies.get(SESSION_COOKIE)):
            log.info("dashboard signed out from %s", request.remote)
        response = self._reply(self._view(request, None))
        self._set_cookie(response, "", 0)
        return response
