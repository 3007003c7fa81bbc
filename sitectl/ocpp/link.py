"""ChargerLink: one charger's two sockets, with its Router (and offline agent) in between.

The link only moves frames: each received message goes into the router, whatever the router
wants written goes into a per-side queue that one writer task drains in order, and a timer task
wakes the router and the agent at their next deadlines. Routing decisions are the router's;
local answers, journaling and replay are the agent's.

When the charger's socket closes, the upstream socket is closed too (2.0.1 Part 4 §6.3), and
sitectl's own pending calls fail with `ChargerOffline`. When the upstream socket is lost:

- ``offline.mode: hold`` (default): the charger stays connected, the agent answers it, and the
  link reconnects upstream with exponential backoff and jitter;
- ``offline.mode: close`` (the spec): the charger's socket is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from sitectl.ocpp.budget import LogBudget
from sitectl.ocpp.offline import OfflineAgent
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
from sitectl.ocpp.upstream import UpstreamRejected, UpstreamUnavailable, backoff_delays

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

    def link_frame(self, link: ChargerLink, side: Side, inbound: bool, text: str) -> None: ...


Reconnect = Callable[[], Awaitable[Connection]]


class ChargerLink:
    """Moves one charger's frames between its socket, its Router and its upstream socket.

    Args:
        identity: the charge point identity.
        router: the charger's router (owns every routing decision).
        charger_ws: the charger's accepted WebSocket.
        upstream_ws: the CSMS WebSocket, or ``None`` (not connected yet, or standalone).
        listener: receives router events and upstream state changes.
        agent: the charger's offline agent (local answers, journal, replay), if any.
        reconnect: opens a new upstream socket; ``None`` when there is no CSMS.
        hold: keep the charger connected when the upstream is lost (``offline.mode: hold``).
        clock: monotonic seconds (the event loop's clock by default).
    """

    def __init__(
        self,
        identity: str,
        router: Router,
        charger_ws: Connection,
        upstream_ws: Connection | None,
        listener: LinkListener,
        agent: OfflineAgent | None = None,
        reconnect: Reconnect | None = None,
        hold: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.identity = identity
        self.router = router
        self.version = router.version
        self.charger_ws = charger_ws
        self.upstream_ws = upstream_ws
        self.agent = agent
        self._listener = listener
        self._reconnect = reconnect
        self._hold = hold
        self.reconnect_max_s = 60.0
        self._clock = clock or asyncio.get_running_loop().time
        self._queues: dict[Side, asyncio.Queue[str]] = {
            Side.CHARGER: asyncio.Queue(),
            Side.CSMS: asyncio.Queue(),
        }
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._wake = asyncio.Event()
        self._closing_reason: str | None = None
        self._stopping = False
        # A flood of bad frames is a few lines and a count, not a line each (issue #22.5).
        self._bad_frames = LogBudget(lines=5, window_s=60.0)
        self.online = False
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
            # Timed out or cancelled while still queued: never deliver it late (a no-op once
            # it has been written).
            self.router.withdraw_local(message_id)

    async def run(self) -> None:
        """Move frames until the charger's socket closes (or, in close mode, the upstream's)."""
        charger_reader = asyncio.create_task(
            self._read(Side.CHARGER), name=f"{self.identity} charger rx"
        )
        upstream = asyncio.create_task(self._upstream(), name=f"{self.identity} upstream")
        tasks = {
            charger_reader,
            upstream,
            asyncio.create_task(self._write(Side.CHARGER), name=f"{self.identity} charger tx"),
            asyncio.create_task(self._timer(), name=f"{self.identity} timer"),
        }
        try:
            done, _ = await asyncio.wait(
                {charger_reader, upstream}, return_when=asyncio.FIRST_COMPLETED
            )
            if upstream in done and charger_reader not in done:
                log.warning(
                    "%s: CSMS connection lost; closing the charger's connection (close mode)",
                    self.identity,
                )
                await self._close_ws(self.charger_ws, 1001, "CSMS connection lost")
        finally:
            self._stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._shutdown()

    async def close(self, reason: str, code: int = 1000) -> None:
        """Close both sockets (e.g. the charger reconnected on a new socket)."""
        self._closing_reason = reason
        await self._close_ws(self.charger_ws, code, reason)

    # The upstream connection.

    async def _upstream(self) -> None:
        """Keep the upstream connected while the charger is (hold mode), or until it drops."""
        while True:
            if self.upstream_ws is None:
                if self._reconnect is None:
                    await asyncio.Future()  # standalone: there is no CSMS to wait for
                self.upstream_ws = await self._connect_with_backoff()
            self._queues[Side.CSMS] = asyncio.Queue()
            writer = asyncio.create_task(self._write(Side.CSMS), name=f"{self.identity} csms tx")
            self._set_online(True)
            try:
                await self._read(Side.CSMS)
            finally:
                writer.cancel()
                old, self.upstream_ws = self.upstream_ws, None
                self._set_online(False)
                if old is not None:
                    await self._close_ws(old, 1000, "")
            if not self._hold:
                return

    async def _connect_with_backoff(self) -> Connection:
        assert self._reconnect is not None
        delays = backoff_delays(base_s=1.0, cap_s=self.reconnect_max_s)
        while True:
            try:
                ws = await self._reconnect()
            except UpstreamRejected as exc:
                log.error(
                    "%s: the CSMS refused this charger (HTTP %d); still answering it locally "
                    "and retrying",
                    self.identity,
                    exc.status,
                )
            except UpstreamUnavailable as exc:
                log.warning("%s: CSMS still unreachable (%s): %s", self.identity, exc.cause, exc)
            else:
                log.info("%s: CSMS connection restored", self.identity)
                return ws
            await asyncio.sleep(next(delays))

    def _set_online(self, online: bool) -> None:
        self.online = online
        # When the charger is gone, its unanswered calls are its own to retry, not ours to
        # journal (that would only duplicate them).
        if not self._stopping:
            if not online:
                self.router.upstream_lost()
            if self.agent is not None:
                self.agent.set_online(online, self._clock())
        try:
            self._listener.link_upstream(self, online)
        except Exception:
            log.exception("%s: upstream listener failed", self.identity)
        if not self._stopping:
            self._flush()

    # Frame movement.

    async def _read(self, side: Side) -> Side:
        ws = self.charger_ws if side is Side.CHARGER else self.upstream_ws
        assert ws is not None
        try:
            async for message in ws:
                self._listener.link_frame(self, side, True, message)
                self.router.receive_frame(side, message, self._clock())
                self._flush()
        except ConnectionClosed:
            pass
        log.info(
            "%s: %s connection closed (code %s%s)",
            self.identity,
            side.value,
            ws.close_code,
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
            self._listener.link_frame(self, side, False, text)

    async def _timer(self) -> None:
        while True:
            deadlines = [self.router.next_deadline()]
            if self.agent is not None:
                deadlines.append(self.agent.next_deadline())
            due = [d for d in deadlines if d is not None]
            delay = None if not due else max(0.0, min(due) - self._clock())
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and this task then outlives its link (seen as a
            # hung shutdown in tests).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
                continue
            now = self._clock()
            self.router.tick(now)
            if self.agent is not None:
                self.agent.pump(now)
            self._flush()

    def _flush(self) -> None:
        # Events can make the agent answer or send more; drain until the router is quiet.
        while True:
            frames = self.router.frames_to_send()
            events = self.router.events_received()
            if not frames and not events:
                break
            for out in frames:
                if out.side is Side.CSMS and not self.online:
                    log.debug("%s: CSMS offline, not sending %s", self.identity, out.text[:60])
                    continue
                self._queues[out.side].put_nowait(out.text)
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
                note = self._bad_frames.allow(event.side)
                if note is not None:
                    log.warning(
                        "%s: bad frame from the %s: %s: %s%s",
                        self.identity,
                        event.side.value,
                        event.description,
                        event.excerpt[:200],
                        note,
                    )
            elif isinstance(event, ForwardTimeout):
                log.warning(
                    "%s: the %s did not answer %s %s in time",
                    self.identity,
                    event.toward.value,
                    event.action,
                    event.message_id,
                )
        if self.agent is not None:
            try:
                self.agent.handle(events, self._clock())
            except Exception:
                # A store failure must not take the charger down; the CALL stays unanswered
                # and the charger retries it.
                log.exception("%s: offline agent failed", self.identity)
        try:
            self._listener.link_events(self, events)
        except Exception:
            log.exception("%s: handling OCPP events failed", self.identity)

    def _resolve(
        self,
        message_id: str,
        result: dict[str, Any] | None = None,
        error: Exception | None = None,
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
        for side in Side:
            dropped = self._bad_frames.pending(side)
            if dropped:
                log.warning(
                    "%s: %d more bad frames from the %s were not logged",
                    self.identity,
                    dropped,
                    side.value,
                )
        self.router.abort_local(self._closing_reason or "charger disconnected")
        self._flush()
        await self._close_ws(self.charger_ws, 1000, self._closing_reason or "")
        if self.upstream_ws is not None:
            await self._close_ws(self.upstream_ws, 1000, "charger disconnected")
            self.upstream_ws = None
            self.online = False
            self._listener.link_upstream(self, False)

    @staticmethod
    async def _close_ws(ws: Connection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code, reason[:120]), 5)
