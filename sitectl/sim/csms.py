"""A stub CSMS on the ``ocpp`` library: accepts chargers, answers them, records every frame.

Used by the tests, the benchmarks and the demo. It can be stopped and started again on the same
port (an outage), refuse identities with an HTTP status, require Basic passwords, and send
CSMS-initiated calls to any connected charger.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import itertools
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

__all__ = ["RecordingConnection", "StubCsms"]

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class RecordingConnection:
    """Wraps a WebSocket for the ``ocpp`` library and records every frame, in order."""

    def __init__(self, ws: Any, frames: list[tuple[str, str]], delay: Any = None) -> None:
        self.ws = ws
        self.frames = frames
        self._delay = delay  # callable returning seconds to wait before sending

    async def recv(self) -> str:
        message = await self.ws.recv()
        self.frames.append(("in", message))
        return message

    async def send(self, message: str) -> None:
        if self._delay is not None and self._delay():
            await asyncio.sleep(self._delay())
        self.frames.append(("out", message))
        await self.ws.send(message)


class _Csms16(ChargePoint16):
    """CSMS side for one OCPP 1.6 charger."""

    def __init__(self, identity: str, connection: Any, csms: StubCsms) -> None:
        super().__init__(identity, connection)
        self.csms = csms

    @on("BootNotification")
    def boot(self, **kwargs: Any) -> Any:
        return result16.BootNotification(
            current_time=_now(), interval=300, status=self.csms.boot_status
        )

    @on("Heartbeat")
    def heartbeat(self, **kwargs: Any) -> Any:
        return result16.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **kwargs: Any) -> Any:
        return result16.StatusNotification()

    @on("Authorize")
    def authorize(self, id_tag: str, **kwargs: Any) -> Any:
        return result16.Authorize(id_tag_info={"status": self.csms.tag_status(id_tag)})

    @on("StartTransaction")
    def start_transaction(self, id_tag: str, **kwargs: Any) -> Any:
        return result16.StartTransaction(
            transaction_id=next(self.csms.transaction_ids),
            id_tag_info={"status": self.csms.tag_status(id_tag)},
        )

    @on("StopTransaction")
    def stop_transaction(self, **kwargs: Any) -> Any:
        return result16.StopTransaction()

    @on("MeterValues")
    def meter_values(self, **kwargs: Any) -> Any:
        self.csms.maybe_fail("MeterValues")
        return result16.MeterValues()

    @on("DataTransfer")
    def data_transfer(self, **kwargs: Any) -> Any:
        return result16.DataTransfer(status="Accepted")

    @on("FirmwareStatusNotification")
    def firmware_status(self, **kwargs: Any) -> Any:
        return result16.FirmwareStatusNotification()

    @on("DiagnosticsStatusNotification")
    def diagnostics_status(self, **kwargs: Any) -> Any:
        return result16.DiagnosticsStatusNotification()

    @on("SecurityEventNotification")
    def security_event(self, **kwargs: Any) -> Any:
        return result16.SecurityEventNotification()

    @on("SignedFirmwareStatusNotification")
    def signed_firmware_status(self, **kwargs: Any) -> Any:
        return result16.SignedFirmwareStatusNotification()


class _Csms201(ChargePoint201):
    """CSMS side for one OCPP 2.0.1 charger."""

    def __init__(self, identity: str, connection: Any, csms: StubCsms) -> None:
        super().__init__(identity, connection)
        self.csms = csms

    @on("BootNotification")
    def boot(self, **kwargs: Any) -> Any:
        return result201.BootNotification(
            current_time=_now(), interval=300, status=self.csms.boot_status
        )

    @on("Heartbeat")
    def heartbeat(self, **kwargs: Any) -> Any:
        return result201.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **kwargs: Any) -> Any:
        return result201.StatusNotification()

    @on("Authorize")
    def authorize(self, id_token: dict, **kwargs: Any) -> Any:
        return result201.Authorize(
            id_token_info={"status": self.csms.tag_status(id_token.get("id_token", ""))}
        )

    @on("TransactionEvent")
    def transaction_event(self, **kwargs: Any) -> Any:
        token = kwargs.get("id_token")
        if token:
            status = self.csms.tag_status(token.get("id_token", ""))
            return result201.TransactionEvent(id_token_info={"status": status})
        return result201.TransactionEvent()

    @on("MeterValues")
    def meter_values(self, **kwargs: Any) -> Any:
        return result201.MeterValues()

    @on("NotifyEvent")
    def notify_event(self, **kwargs: Any) -> Any:
        return result201.NotifyEvent()

    @on("NotifyReport")
    def notify_report(self, **kwargs: Any) -> Any:
        return result201.NotifyReport()

    @on("ReportChargingProfiles")
    def report_profiles(self, **kwargs: Any) -> Any:
        return result201.ReportChargingProfiles()

    @on("NotifyEVChargingNeeds")
    def charging_needs(self, **kwargs: Any) -> Any:
        return result201.NotifyEVChargingNeeds(status="Accepted")

    @on("DataTransfer")
    def data_transfer(self, **kwargs: Any) -> Any:
        return result201.DataTransfer(status="Accepted")

    @on("FirmwareStatusNotification")
    def firmware_status(self, **kwargs: Any) -> Any:
        return result201.FirmwareStatusNotification()

    @on("SecurityEventNotification")
    def security_event(self, **kwargs: Any) -> Any:
        return result201.SecurityEventNotification()


_HANDLERS = {"ocpp1.6": _Csms16, "ocpp2.0.1": _Csms201, "ocpp2.1": _Csms201}


@dataclass
class _Session:
    """One charger's connection to the stub."""

    identity: str
    subprotocol: str | None
    path: str
    headers: Headers
    frames: list[tuple[str, str]] = field(default_factory=list)
    point: Any = None
    task: asyncio.Task | None = None


class StubCsms:
    """A CSMS stand-in on loopback.

    Args:
        host: listen address.
        port: listen port (0: any free port; kept across `stop`/`start`).
        subprotocols: what the stub accepts, in its order of preference.
        passwords: if given, Basic passwords by identity (anything else: 401).
        reject: identities refused with an HTTP status (e.g. ``{"CP9": 404}``).
        path: URL path prefix chargers are served under.
        ssl_context: serve wss:// with this server context.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        subprotocols: Iterable[str] = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6"),
        passwords: dict[str, str] | None = None,
        reject: dict[str, int] | None = None,
        path: str = "/csms",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.subprotocols = list(subprotocols)
        self.passwords = passwords
        self.reject = dict(reject or {})
        self.path = path.rstrip("/")
        self.ssl_context = ssl_context
        self.boot_status = "Accepted"
        self.reply_delay_s = 0.0  # a slow CSMS
        self.fail_actions: dict[str, int] = {}  # answer this action with a CALLERROR n times
        self.tags: dict[str, str] = {}
        self.transaction_ids = itertools.count(1000)
        self.sessions: dict[str, _Session] = {}
        self.history: list[_Session] = []
        self.connected = asyncio.Event()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The base URL chargers' identities are appended to."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}{self.path}"

    def maybe_fail(self, action: str) -> None:
        """Raise (the ``ocpp`` library answers a CALLERROR) while `fail_actions` says so."""
        left = self.fail_actions.get(action, 0)
        if left > 0:
            self.fail_actions[action] = left - 1
            raise RuntimeError(f"stub CSMS told to fail {action}")

    def tag_status(self, tag: str) -> str:
        """How the stub answers an id tag (default Accepted)."""
        return self.tags.get(tag, "Accepted")

    async def start(self) -> None:
        """Start listening (again, on the same port after `stop`)."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            compression="deflate",
            ssl=self.ssl_context,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every charger connection (an outage)."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        for session in list(self.sessions.values()):
            if session.task is not None:
                session.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await session.task
        self.sessions.clear()

    async def __aenter__(self) -> StubCsms:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def frames(self, identity: str, direction: str = "in") -> list[str]:
        """Frames of every connection of `identity` so far, ``in`` (received) or ``out``."""
        out: list[str] = []
        for session in self.history:
            if session.identity == identity:
                out += [text for d, text in session.frames if d == direction]
        return out

    async def call(self, identity: str, payload: Any) -> Any:
        """Send a CSMS-initiated call (an ``ocpp`` call dataclass) and return the result."""
        return await self.sessions[identity].point.call(payload)

    def _select_subprotocol(
        self, connection: ServerConnection, offered: list[Subprotocol]
    ) -> Subprotocol | None:
        # The CSMS's preference wins; with no match, complete the handshake without the header
        # and close (2.0.1 Part 4 §3.2), which `_handle` does.
        return next((Subprotocol(p) for p in self.subprotocols if p in offered), None)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        identity = unquote(request.path.rsplit("/", 1)[-1])
        if identity in self.reject:
            status = http.HTTPStatus(self.reject[identity])
            return connection.respond(status, f"{status.phrase}\n")
        if self.passwords is not None:
            expected = self.passwords.get(identity)
            header = request.headers.get("Authorization", "")
            wanted = "Basic " + base64.b64encode(f"{identity}:{expected}".encode()).decode()
            if expected is None or header != wanted:
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        identity = unquote(connection.request.path.rsplit("/", 1)[-1])
        session = _Session(
            identity, connection.subprotocol, connection.request.path, connection.request.headers
        )
        self.history.append(session)
        if connection.subprotocol is None:
            await connection.close(1002, "no subprotocol")
            return
        handler = _HANDLERS[connection.subprotocol]
        session.point = handler(
            identity,
            RecordingConnection(connection, session.frames, lambda: self.reply_delay_s),
            self,
        )
        self.sessions[identity] = session
        self.connected.set()
        session.task = asyncio.current_task()
        try:
            await session.point.start()
        except Exception:  # connection closed: normal end of a session
            pass
        finally:
            if self.sessions.get(identity) is session:
                del self.sessions[identity]
