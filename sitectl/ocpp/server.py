"""The charger-facing OCPP server.

Chargers connect to ``ws[s]://HOST:PORT/<path>/<identity>``. Before the WebSocket upgrade sitectl
decides, in this order (each a plain HTTP answer the charger's log will show):

1. the path is ours and the identity is a configured charger, else 404;
2. the credentials match the security profile (Basic password for 1 and 2, a client
   certificate whose CN is the identity for 3), else 401;
3. the CSMS accepts the same identity: sitectl opens the upstream socket now, offering what the
   charger offered, and mirrors a 401/404 from the CSMS to the charger (2.0.1 Part 4 §3.2); if
   the CSMS cannot be reached the charger gets 503 and retries;
4. the charger is answered with the subprotocol the CSMS chose; if there is none, the handshake
   completes without the header and the connection is closed (2.0.1 Part 4 §3.1.2).

A second connection for an identity replaces the first, whose sockets are closed cleanly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import http
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from sitectl.config import Config, OcppConfig
from sitectl.ocpp.auth import AuthCache
from sitectl.ocpp.budget import (
    ConnectionCaps,
    LogBudget,
    LoginGuard,
    quiet_accept_errors,
    shorten,
)
from sitectl.ocpp.journal import Journal
from sitectl.ocpp.link import ChargerLink, ChargerOffline, LinkListener
from sitectl.ocpp.offline import CsmsRewriter, OfflineAgent
from sitectl.ocpp.router import Event, Router
from sitectl.ocpp.upstream import (
    UpstreamRejected,
    UpstreamSettings,
    UpstreamUnavailable,
    client_tls_context,
    connect_upstream,
)
from sitectl.security_events import INVALID_LOGIN
from sitectl.store import Store

__all__ = ["SUBPROTOCOL_VERSIONS", "OcppServer", "server_tls_context"]

log = logging.getLogger(__name__)

#: Subprotocols sitectl speaks, and the OCPP version each means.
SUBPROTOCOL_VERSIONS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1", "ocpp2.1": "2.1"}


def server_tls_context(cfg: OcppConfig) -> ssl.SSLContext | None:
    """TLS 1.2+ server context for security profiles 2 and 3 (1.6 WP A00.FR.312, 2.0.1 A00)."""
    if cfg.security_profile < 2:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
    if cfg.security_profile == 3:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(cfg.tls_ca_file))
    return context


@dataclass
class _Pending:
    """What process_request decided for a connection, until the handler takes it over."""

    identity: str
    version: str | None
    upstream: ClientConnection | None
    segment: str  # the identity as the charger percent-encoded it


def _reject(status: http.HTTPStatus, text: str, headers: dict[str, str] | None = None) -> Response:
    response_headers = Headers({"Content-Type": "text/plain; charset=utf-8", **(headers or {})})
    body = f"{text}\n".encode()
    response_headers["Content-Length"] = str(len(body))
    return Response(status.value, status.phrase, response_headers, body)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _peer_common_name(connection: ServerConnection) -> str | None:
    ssl_object = connection.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class OcppServer:
    """Accepts chargers, opens their upstream sockets, and runs one ChargerLink each.

    Args:
        config: the validated configuration.
        listener: receives every link's router events (the state observer).
        store: where the journal and the authorization cache live; without one sitectl is a
            plain proxy (no local answers, upstream loss closes the charger).
        alarm: raises an alarm: ``alarm(code, charger id, text)``.
        port: override the configured port (tests; 0 picks a free one).
        upstream_tls: override the TLS context toward the CSMS.
        max_connections: sockets on the OCPP port at once, handshakes included (default:
            twice the configured chargers and 16 more).
        max_connections_per_client: of those, from one address (default: the configured
            chargers and 4 more, as they may all be behind one gateway).
    """

    name = "ocpp-server"

    def __init__(
        self,
        config: Config,
        listener: LinkListener | None = None,
        store: Store | None = None,
        alarm: Callable[[str, str, str], None] | None = None,
        port: int | None = None,
        upstream_tls: ssl.SSLContext | None = None,
        max_connections: int | None = None,
        max_connections_per_client: int | None = None,
    ) -> None:
        self.config = config
        chargers = len(config.chargers)
        self.connections = ConnectionCaps(
            max_connections or 2 * chargers + 16, max_connections_per_client or chargers + 4
        )
        self.ocpp = config.ocpp
        self._listener = listener or _NullListener()
        self._alarm = alarm or (lambda code, subject, text: None)
        #: Told of repeated failed logins (app wires it to `SiteState.security_events`).
        self.security_event: Callable[[str, str], None] = lambda type_, text: log.warning(
            "security event %s: %s", type_, text
        )
        #: Told of a journal write that failed (app wires it to the ``store_failed`` alarm).
        self.store_failed: Callable[[Exception], None] = lambda exc: log.critical(
            "the OCPP journal cannot write: %s", exc
        )
        offline = self.ocpp.offline
        self.journal: Journal | None = None
        self.auth: AuthCache | None = None
        if store is not None:
            self.auth = AuthCache(store, offline.local_id_tags, offline.unknown_id_policy)
            if self.ocpp.upstream_url:
                self.journal = Journal(store, offline.journal_max_messages)
        #: Rewriters of CSMS calls (e.g. the firmware cache's UpdateFirmware location).
        self.csms_rewriters: list[CsmsRewriter] = []
        #: Rewriters of the chargers' calls to the CSMS (not transactional ones).
        self.charger_rewriters: list[CsmsRewriter] = []
        # Hold mode needs somewhere to journal; without a store sitectl is a plain proxy.
        self.hold = offline.mode == "hold" and store is not None
        self._port = self.ocpp.listen_port if port is None else port
        self.links: dict[str, ChargerLink] = {}
        self._pending: dict[ServerConnection, _Pending] = {}
        # Refusals logged a few a minute per address; failed logins limited per (address,
        # identity) with an alarm (issue #22.5).
        self._refusals = LogBudget(lines=5, window_s=60.0)
        self.logins = LoginGuard(max_failures=5, window_s=60.0, lockout_s=60.0)
        self._server: Server | None = None
        self.ready = asyncio.Event()
        self._upstream = None
        if self.ocpp.upstream_url:
            context = upstream_tls
            if context is None and self.ocpp.upstream_url.startswith("wss:"):
                context = client_tls_context(
                    _opt(self.ocpp.upstream_ca_file),
                    _opt(self.ocpp.upstream_cert_file),
                    _opt(self.ocpp.upstream_key_file),
                )
            self._upstream = UpstreamSettings(
                self.ocpp.upstream_url,
                context,
                open_timeout_s=10.0,
                ping_interval_s=self.ocpp.ping_interval_s,
                ping_timeout_s=self.ocpp.ping_timeout_s,
                max_size=self.ocpp.max_frame_bytes,
            )

    @property
    def port(self) -> int:
        """The port actually listened on (after `ready`)."""
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def run(self) -> None:
        """Serve until cancelled; on cancel close every charger and upstream socket."""
        quiet_accept_errors(asyncio.get_running_loop())
        async with serve(
            self._handle,
            self.ocpp.listen_host,
            self._port,
            process_request=self._process_request,
            process_response=self._process_response,
            select_subprotocol=self._select_subprotocol,
            ssl=server_tls_context(self.ocpp),
            compression="deflate",
            ping_interval=self.ocpp.ping_interval_s,
            ping_timeout=self.ocpp.ping_timeout_s,
            max_size=self.ocpp.max_frame_bytes,
            # A dead charger never completes a closing handshake; don't wait long for it.
            close_timeout=2,
            server_header="sitectl",
            create_connection=_capped(self.connections),
        ) as server:
            self._server = server
            scheme = "wss" if self.ocpp.security_profile >= 2 else "ws"
            log.info(
                "OCPP server listening on %s://%s:%d%s/<identity>",
                scheme,
                self.ocpp.listen_host,
                self.port,
                self.ocpp.path,
            )
            self.ready.set()
            try:
                await asyncio.Future()
            finally:
                links = list(self.links.values())
                await asyncio.gather(
                    *(link.close("sitectl shutting down", 1001) for link in links),
                    return_exceptions=True,
                )

    async def call(
        self, identity: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one of sitectl's own calls to a connected charger (see `ChargerLink.call`)."""
        link = self.links.get(identity)
        if link is None:
            raise ChargerOffline(f"{identity} is not connected")
        return await link.call(action, payload, timeout)

    # Handshake.

    def _identity_from_path(self, path: str) -> tuple[str, str] | None:
        path = path.split("?", 1)[0]
        prefix = self.ocpp.path.rstrip("/") + "/"
        if not path.startswith(prefix):
            return None
        segment = path[len(prefix) :]
        if not segment or "/" in segment:
            return None
        return unquote(segment), segment

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        address = _address(connection)
        found = self._identity_from_path(request.path)
        if found is None:
            self._refused(
                address,
                "connection to unknown path %s from %s refused",
                shorten(request.path),
                address,
            )
            return _reject(http.HTTPStatus.NOT_FOUND, "unknown path")
        identity, segment = found
        charger = self.config.charger(identity)
        if charger is None:
            # An identity is whatever a peer put in the path: at most a short excerpt logged.
            self._refused(
                address,
                "unknown charger %s from %s refused (404): not in the configuration",
                shorten(identity),
                address,
            )
            return _reject(http.HTTPStatus.NOT_FOUND, "unknown charge point")
        locked = self.logins.locked(address, identity)
        if locked:
            self._refused(
                address,
                "charger %s from %s refused (429): too many failed logins, %.0f s to wait",
                identity,
                address,
                locked,
            )
            return _reject(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                "too many failed logins",
                {"Retry-After": str(max(1, round(locked)))},
            )
        problem = self._authenticate(connection, request, identity)
        if problem is not None:
            self._refused(address, "charger %s refused (401): %s", identity, problem)
            failures = self.logins.failed(address, identity)
            if failures is not None:
                text = (
                    f"{failures} failed logins as {identity} from {address} in "
                    f"{self.logins.window_s:.0f} s (last: {problem}): further attempts from "
                    f"there are refused for {self.logins.lockout_s:.0f} s"
                )
                # A security event (one line, to the CSMS and MQTT) and an alarm, whatever the
                # rate.
                self.security_event(INVALID_LOGIN, f"OCPP: {text}")
                self._alarm("ocpp_login_failures", identity, text)
            return _reject(
                http.HTTPStatus.UNAUTHORIZED,
                "authentication failed",
                {"WWW-Authenticate": 'Basic realm="sitectl", charset="UTF-8"'},
            )
        self.logins.succeeded(address, identity)

        offered = [
            p.strip()
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",")
            if p.strip()
        ]
        upstream: ClientConnection | None = None
        version: str | None
        if self._upstream is not None:
            password = (
                charger.upstream_password.get_secret_value()
                if charger.upstream_password is not None
                else None
            )
            try:
                upstream = await connect_upstream(
                    self._upstream, identity, segment, offered, password
                )
            except UpstreamRejected as exc:
                log.warning(
                    "charger %s refused (%d): the CSMS refused this identity", identity, exc.status
                )
                status = (
                    http.HTTPStatus(exc.status)
                    if exc.status in (401, 403, 404)
                    else http.HTTPStatus.BAD_GATEWAY
                )
                return _reject(status, "refused by the CSMS")
            except UpstreamUnavailable as exc:
                if not self.hold:
                    log.warning("charger %s refused (503): %s", identity, exc)
                    return _reject(http.HTTPStatus.SERVICE_UNAVAILABLE, "CSMS unreachable")
                # Hold mode: the depot keeps charging; sitectl answers until the CSMS is back.
                version = _preferred_version(offered, charger.ocpp_version)
                log.warning(
                    "charger %s accepted without the CSMS (%s); answering it locally", identity, exc
                )
                self._pending[connection] = _Pending(identity, version, None, segment)
                return None
            version = SUBPROTOCOL_VERSIONS.get(upstream.subprotocol or "")
        else:
            version = next(
                (SUBPROTOCOL_VERSIONS[p] for p in offered if p in SUBPROTOCOL_VERSIONS), None
            )
        if version is not None and version != charger.ocpp_version:
            log.warning(
                "charger %s speaks OCPP %s, configured as %s; using %s",
                identity,
                version,
                charger.ocpp_version,
                version,
            )
        self._pending[connection] = _Pending(identity, version, upstream, segment)
        return None

    def _authenticate(
        self, connection: ServerConnection, request: Request, identity: str
    ) -> str | None:
        profile = self.ocpp.security_profile
        if profile == 3:
            name = _peer_common_name(connection)
            if name != identity:
                return f"client certificate CN {shorten(name)} does not match the identity"
            return None
        if profile == 0:
            return None
        credentials = _basic_credentials(request.headers.get("Authorization"))
        if credentials is None:
            return "no Basic credentials"
        user, password = credentials
        charger = self.config.charger(identity)
        expected = charger.password.get_secret_value() if charger and charger.password else None
        if user != identity:
            return f"Basic user {shorten(user)} is not the identity"
        if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
            return "wrong password"
        return None

    def _refused(self, address: str, message: str, *args: Any) -> None:
        """A refusal's warning, within the address's log budget."""
        note = self._refusals.allow(address)
        if note is not None:
            log.warning(message + "%s", *args, note)

    def _select_subprotocol(
        self, connection: ServerConnection, subprotocols: list[Subprotocol]
    ) -> Subprotocol | None:
        pending = self._pending.get(connection)
        if pending is None or pending.version is None:
            return None
        chosen = {v: k for k, v in SUBPROTOCOL_VERSIONS.items()}[pending.version]
        return Subprotocol(chosen) if chosen in subprotocols else None

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            self._discard(connection)
        else:
            # If the charger vanishes right after the handshake the handler never runs:
            # don't leave its upstream socket open.
            asyncio.get_running_loop().call_later(30, self._discard, connection)

    def _discard(self, connection: ServerConnection) -> None:
        pending = self._pending.pop(connection, None)
        if pending is not None and pending.upstream is not None:
            asyncio.get_running_loop().create_task(pending.upstream.close())

    # Connections.

    def _reconnector(self, pending: _Pending) -> Callable[[], Awaitable[Connection]] | None:
        """How a link re-opens its upstream socket, offering only the subprotocol in use."""
        if self._upstream is None or pending.version is None:
            return None
        settings = self._upstream
        charger = self.config.charger(pending.identity)
        password = (
            charger.upstream_password.get_secret_value()
            if charger is not None and charger.upstream_password is not None
            else None
        )
        subprotocol = {v: k for k, v in SUBPROTOCOL_VERSIONS.items()}[pending.version]

        async def reconnect() -> Connection:
            ws = await connect_upstream(
                settings, pending.identity, pending.segment, [subprotocol], password
            )
            if ws.subprotocol != subprotocol:
                await ws.close()
                raise UpstreamUnavailable(
                    "network", f"the CSMS no longer accepts {subprotocol} for {pending.identity}"
                )
            return ws

        return reconnect

    async def _handle(self, connection: ServerConnection) -> None:
        pending = self._pending.pop(connection, None)
        if pending is None:  # pragma: no cover - reaped after 30 s without a handler
            await connection.close(1011, "handshake state lost")
            return
        if pending.version is None:
            log.warning(
                "charger %s: no common OCPP subprotocol with the CSMS; closing", pending.identity
            )
            await connection.close(1002, "no common OCPP subprotocol")
            if pending.upstream is not None:
                await pending.upstream.close()
            return
        old = self.links.get(pending.identity)
        if old is not None:
            log.info("charger %s reconnected; closing its previous connection", pending.identity)
            await old.close("replaced by a new connection")
        router = Router(
            pending.identity,
            pending.version,
            charger_timeout_s=self.ocpp.call_timeout_s,
            csms_timeout_s=self.ocpp.upstream_call_timeout_s,
        )
        agent = None
        if self.auth is not None:
            identity = pending.identity
            agent = OfflineAgent(
                identity,
                pending.version,
                router,
                self.journal,
                self.auth,
                self.ocpp.offline,
                alarm=lambda code, text: self._alarm(code, identity, text),
                rewriters=self.csms_rewriters,
                charger_rewriters=self.charger_rewriters,
                store_failed=lambda exc: self.store_failed(exc),
            )
        link = ChargerLink(
            pending.identity,
            router,
            connection,
            pending.upstream,
            self._listener,
            agent=agent,
            reconnect=self._reconnector(pending),
            hold=self.hold,
        )
        link.reconnect_max_s = self.ocpp.upstream_reconnect_max_s
        self.links[pending.identity] = link
        self._listener.link_charger(link, True)
        log.info(
            "charger %s connected (OCPP %s)%s",
            pending.identity,
            pending.version,
            "" if pending.upstream else ", no upstream",
        )
        try:
            await link.run()
        finally:
            if self.links.get(pending.identity) is link:
                del self.links[pending.identity]
                self._listener.link_charger(link, False)
            log.info("charger %s disconnected", pending.identity)


def _preferred_version(offered: list[str], configured: str) -> str | None:
    """Without a CSMS to choose: the configured version if offered, else the first we speak."""
    versions = [SUBPROTOCOL_VERSIONS[p] for p in offered if p in SUBPROTOCOL_VERSIONS]
    if configured in versions:
        return configured
    return versions[0] if versions else None


class _NullListener:
    def link_events(self, link: ChargerLink, events: list[Event]) -> None:
        pass

    def link_upstream(self, link: ChargerLink, connected: bool) -> None:
        pass

    def link_charger(self, link: ChargerLink, connected: bool) -> None:
        pass

    def link_frame(self, link: ChargerLink, side: Any, inbound: bool, text: str) -> None:
        pass


def _capped(caps: ConnectionCaps) -> type[ServerConnection]:
    """A ServerConnection that counts itself in `caps`, and is aborted at once when over."""

    class CappedConnection(ServerConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if caps.admit(self, address, "OCPP"):
                super().connection_made(transport)
                return
            # Set up as a connection (its close path needs it) but without a handler task.
            Connection.connection_made(self, transport)
            transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            caps.release(self)
            super().connection_lost(exc)

    return CappedConnection


def _address(connection: ServerConnection) -> str:
    """The remote host (no port: a prober opens each connection from a new one)."""
    remote = connection.remote_address
    return str(remote[0]) if isinstance(remote, tuple) and remote else str(remote)


def _opt(path: Any) -> str | None:
    return None if path is None else str(path)
