"""ChargerLink: one charger's two sockets, with its Router in between.

The link only moves frames: each received message goes into the router, whatever the router
wants written goes into a per-side queue that one writer task drains in order, and a timer task
wakes the router at its next deadline. All routing decisions are the router's.

When the charger's socket closes, the upstream socket is closed too (2.0.1 Part 4 §6.3), and
sitectl's own pending calls fail with `ChargerOffline`. When the upstream socket is lost, the
charger's socket is closed (the spec's behaviour, ``offline.mode: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from sitectl.ocpp.router import (
    Event,
    ForwardTimeout,
    LocalCallAborted,
    LocalCallError,
    LocalCallResult,
    LocalCallTimeout,
    PeerProtocolError,
    Router,
    Side,
)

__all__ = [
    "CallErrorResponse",
    "CallFailed",
    "CallTimeout",
    "ChargerLink",
    "ChargerOffline",
    "LinkListener",
]

log = logging.getLogger(__name__)


class CallFailed(Exception):
    """sitectl's own call did not get a CALLRESULT."""


class CallErrorResponse(CallFailed):
    """The charger answered with a CALLERROR."""

    def __init__(self, code: str, description: str, details: dict[str, Any]) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details


class CallTimeout(CallFailed):
    """The charger did not answer in time."""


class ChargerOffline(CallFailed):
    """The charger is not connected (or went away before answering)."""


class LinkListener(Protocol):
    """What the server wants to hear from a link."""

    def link_events(self, link: ChargerLink, events: list[Event]) -> None: ...

    def link_upstream(self, link: ChargerLink, connected: bool) -> None: ...

    def link_charger(self, link: ChargerLink, connected: bool) -> None: ...


class ChargerLink:
    """Moves one charger's frames between its socket, its Router and its upstream socket.

    Args:
        identity: the charge point identity.
        router: the charger's router (owns every routing decision).
        charger_ws: the charger's accepted WebSocket.
        upstream_ws: the CSMS WebSocket, or ``None`` when there is no upstream.
        listener: receives router events and upstream state changes.
        clock: monotonic seconds (the event loop's clock by default).
    """

    def __init__(
        self,
        identity: str,
        router: Router,
        charger_ws: Connection,
        upstream_ws: Connection | None,
        listener: LinkListener,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.identity = identity
        self.router = router
        self.version = router.version
        self.charger_ws = charger_ws
        self.upstream_ws = upstream_ws
        self._listener = listener
        self._clock = clock or asyncio.get_running_loop().time
        self._queues: dict[Side, asyncio.Queue[str]] = {
            Side.CHARGER: asyncio.Queue(),
            Side.CSMS: asyncio.Queue(),
        }
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._wake = asyncio.Event()
        self._closing_reason: str | None = None
        self.closed = asyncio.Event()

    # Public API.

    async def call(
        self, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one of sitectl's own calls to the charger and wait for its answer.

        Args:
            action: the OCPP action, e.g. ``SetChargingProfile``.
            payload: the request payload (validated against the schema before sending).
            timeout: give up waiting after this many seconds (the lane's own timeout frees
                the charger's slot regardless).

        Returns:
            The CALLRESULT payload.

        Raises:
            CallErrorResponse: the charger answered with a CALLERROR.
            CallTimeout: no answer in time.
            ChargerOffline: the charger is not connected or went away.
            LocalProtocolError: the payload is not valid for the action.
        """
        if self.closed.is_set():
            raise ChargerOffline(f"{self.identity} is not connected")
        message_id = self.router.send_call(action, payload, self._clock())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._futures[message_id] = future
        self._flush()
        try:
            if timeout is None:
                return await future
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise CallTimeout(f"{self.identity} did not answer {action} in {timeout:g} s") from None
        finally:
            self._futures.pop(message_id, None)

    async def run(self) -> None:
        """Move frames until either socket closes; then close the other one."""
        charger_reader = asyncio.create_task(
            self._read(Side.CHARGER), name=f"{self.identity} charger rx"
        )
        tasks = {
            charger_reader,
            asyncio.create_task(self._write(Side.CHARGER), name=f"{self.identity} charger tx"),
            asyncio.create_task(self._timer(), name=f"{self.identity} timer"),
        }
        readers = {charger_reader}
        if self.upstream_ws is not None:
            upstream_reader = asyncio.create_task(
                self._read(Side.CSMS), name=f"{self.identity} csms rx"
            )
            tasks |= {
                upstream_reader,
                asyncio.create_task(self._write(Side.CSMS), name=f"{self.identity} csms tx"),
            }
            readers.add(upstream_reader)
            self._listener.link_upstream(self, True)
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
            ended = {side for task in done if (side := task.result()) is not None}
            if Side.CSMS in ended and Side.CHARGER not in ended:
                log.warning(
                    "%s: CSMS connection lost; closing the charger's connection", self.identity
                )
                await self._close_ws(self.charger_ws, 1001, "CSMS connection lost")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._shutdown()

    async def close(self, reason: str, code: int = 1000) -> None:
        """Close both sockets (e.g. the charger reconnected on a new socket)."""
        self._closing_reason = reason
        await self._close_ws(self.charger_ws, code, reason)

    # Frame movement.

    async def _read(self, side: Side) -> Side:
        ws = self.charger_ws if side is Side.CHARGER else self.upstream_ws
        assert ws is not None
        try:
            async for message in ws:
                self.router.receive_frame(side, message, self._clock())
                self._flush()
        except ConnectionClosed:
            pass
        code = ws.close_code
        log.info(
            "%s: %s connection closed (code %s%s)",
            self.identity,
            side.value,
            code,
            f", {ws.close_reason}" if ws.close_reason else "",
        )
        return side

    async def _write(self, side: Side) -> None:
        ws = self.charger_ws if side is Side.CHARGER else self.upstream_ws
        assert ws is not None
        queue = self._queues[side]
        while True:
            text = await queue.get()
            try:
                await ws.send(text)
            except ConnectionClosed:
                return

    async def _timer(self) -> None:
        while True:
            deadline = self.router.next_deadline()
            delay = None if deadline is None else max(0.0, deadline - self._clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
                continue
            self.router.tick(self._clock())
            self._flush()

    def _flush(self) -> None:
        for out in self.router.frames_to_send():
            self._queues[out.side].put_nowait(out.text)
        events = self.router.events_received()
        if events:
            self._handle(events)
        self._wake.set()

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, LocalCallResult):
                self._resolve(event.message_id, result=event.payload)
            elif isinstance(event, LocalCallError):
                self._resolve(
                    event.message_id,
                    error=CallErrorResponse(event.code, event.description, event.details),
                )
            elif isinstance(event, LocalCallTimeout):
                self._resolve(
                    event.message_id,
                    error=CallTimeout(f"{self.identity} did not answer {event.action}"),
                )
            elif isinstance(event, LocalCallAborted):
                self._resolve(
                    event.message_id, error=ChargerOffline(f"{self.identity}: {event.reason}")
                )
            elif isinstance(event, PeerProtocolError):
                log.warning(
                    "%s: bad frame from the %s: %s: %s",
                    self.identity,
                    event.side.value,
                    event.description,
                    event.excerpt,
                )
            elif isinstance(event, ForwardTimeout):
                log.warning(
                    "%s: the %s did not answer %s %s in time",
                    self.identity,
                    event.toward.value,
                    event.action,
                    event.message_id,
                )
        try:
            self._listener.link_events(self, events)
        except Exception:
            log.exception("%s: handling OCPP events failed", self.identity)

    def _resolve(
        self, message_id: str, result: dict[str, Any] | None = None, error: Exception | None = None
    ) -> None:
        future = self._futures.get(message_id)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or {})

    async def _shutdown(self) -> None:
        self.closed.set()
        self.router.abort_local(self._closing_reason or "charger disconnected")
        self._handle(self.router.events_received())
        await self._close_ws(self.charger_ws, 1000, self._closing_reason or "")
        if self.upstream_ws is not None:
            await self._close_ws(self.upstream_ws, 1000, "charger disconnected")
            self._listener.link_upstream(self, False)

    @staticmethod
    async def _close_ws(ws: Connection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code, reason[:120]), 5)
