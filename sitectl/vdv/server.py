"""The VDV 463 WebSocket server: the depot system (the "presystem") connects here.

Its own listener (``fleet.vdv463.listen_host:listen_port``, path ``fleet.vdv463.path``), not a
route of the local HTTP server: the presystem authenticates with HTTP Basic (the API with a
bearer token), gets its own port to open in the firewall, and works with ``http.enabled:
false``. The handshake must offer the subprotocol `SUBPROTOCOL` and carry the configured
credentials (wrong ones: 401, counted by the same login guard as the OCPP server's). Each
connection gets its own `VdvProtocol`; a bad frame is answered with an error frame there and
never affects another connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from sitectl.config import Config
from sitectl.control.fleet import Fleet
from sitectl.ocpp.budget import LoginGuard
from sitectl.state import SiteState
from sitectl.vdv.protocol import MAX_FRAME_BYTES, SUBPROTOCOL, VdvProtocol

__all__ = ["VdvServer"]

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class VdvServer:
    """The VDV 463 endpoint component.

    Args:
        config: the validated configuration (``fleet.vdv463``).
        state: the site state.
        fleet: the fleet the charging requests go to.
        port: override the configured port (tests; 0 picks a free one).
        clock: UTC now (injected for tests).
    """

    name = "vdv463"

    def __init__(
        self,
        config: Config,
        state: SiteState,
        fleet: Fleet,
        port: int | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.config = config
        self.vdv = config.fleet.vdv463
        self.state = state
        self.fleet = fleet
        self.clock = clock
        self._port = self.vdv.listen_port if port is None else port
        self._server: Server | None = None
        self.ready = asyncio.Event()
        self.protocols: set[VdvProtocol] = set()
        self.logins = LoginGuard(max_failures=10, window_s=60.0, lockout_s=60.0)

    @property
    def port(self) -> int:
        """The port actually listened on (after `ready`)."""
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def _tls(self) -> ssl.SSLContext | None:
        ocpp = self.config.ocpp
        if not self.vdv.tls or ocpp.tls_cert_file is None or ocpp.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(ocpp.tls_cert_file, ocpp.tls_key_file)
        return context

    # Handshake.

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        address = str(connection.remote_address[0]) if connection.remote_address else "?"
        if request.path.split("?")[0] != self.vdv.path:
            return connection.respond(HTTPStatus.NOT_FOUND, "not a VDV 463 endpoint\n")
        offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
        if SUBPROTOCOL not in [p.strip() for p in offered.split(",")]:
            return connection.respond(
                HTTPStatus.BAD_REQUEST, f"the subprotocol {SUBPROTOCOL} is required\n"
            )
        if self.logins.locked(address, "vdv463"):
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many failed logins\n")
        if not self._authorized(request.headers.get("Authorization", "")):
            log.warning(
                "VDV 463: refused a handshake from %s: missing or wrong credentials", address
            )
            self.logins.failed(address, "vdv463")
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "credentials required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="sitectl VDV 463"'
            return response
        self.logins.succeeded(address, "vdv463")
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or self.vdv.username is None or self.vdv.password is None:
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.vdv.username}:{self.vdv.password.get_secret_value()}".encode()
        return hmac.compare_digest(given, expected)

    @staticmethod
    def _select_subprotocol(
        connection: ServerConnection, subprotocols: list[Subprotocol]
    ) -> Subprotocol | None:
        return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in subprotocols else None

    # Connections.

    async def _handle(self, connection: ServerConnection) -> None:
        protocol = VdvProtocol(self.config, self.state, self.fleet)
        self.protocols.add(protocol)
        peer = connection.remote_address
        log.info("VDV 463: depot system connected from %s", peer)
        sender = asyncio.create_task(self._inform(connection, protocol))
        try:
            async for text in connection:
                for reply in protocol.receive(text, self.clock()):
                    await connection.send(reply)
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
            self.protocols.discard(protocol)
            log.info("VDV 463: depot system %s disconnected", peer)

    async def _inform(self, connection: ServerConnection, protocol: VdvProtocol) -> None:
        """ProvideChargingInformation every ``info_period_s``, the first at once."""
        while True:
            try:
                frame = protocol.information(self.clock())
            except Exception:  # a bug of ours must not end the connection
                log.exception("VDV 463: charging information failed")
            else:
                await connection.send(frame)
            await asyncio.sleep(self.vdv.info_period_s)

    async def run(self) -> None:
        """Serve until cancelled."""
        async with serve(
            self._handle,
            self.vdv.listen_host,
            self._port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            ssl=self._tls(),
            max_size=MAX_FRAME_BYTES,
            close_timeout=2,
            server_header="sitectl",
        ) as server:
            self._server = server
            log.info(
                "VDV 463 server on %s://%s:%d%s",
                "wss" if self._tls() else "ws",
                self.vdv.listen_host,
                self.port,
                self.vdv.path,
            )
            self.ready.set()
            await asyncio.Future()
