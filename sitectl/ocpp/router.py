"""The per-charger OCPP router: which frame goes where. Sans-I/O.

Rule 1: this module never touches a socket, a clock or a task. Frames come in through
`Router.receive_frame`, sitectl's own calls through `Router.send_call`, time through the ``now``
argument; what to send comes out of `Router.frames_to_send`, what happened out of
`Router.events_received`, and `Router.next_deadline` tells the I/O layer when to call
`Router.tick`. Call ``frames_to_send()`` and ``events_received()`` after every input.

Theory of operation. A charger's traffic flows in two directions, each modelled as a `Lane`:

- toward the CSMS: the charger's CALLs (and, later, sitectl's replays) travel up; the CSMS's
  answers come back down and are matched to the call in flight;
- toward the charger: the CSMS's CALLs and sitectl's own CALLs share this lane.

OCPP-J forbids a second CALL on a connection while one is unanswered (2.0.1 Part 4 §4.1.1 SHALL
NOT; 1.6 §4.1.1 SHOULD NOT). sitectl and the CSMS share the lane toward the charger, so each lane
is a FIFO with one call in flight: calls are queued in arrival order (except that a CSMS call
goes ahead of sitectl's queued ones), never dropped, and a timeout frees the slot. The slot's
states and transitions are the table `_TRANSITIONS`.

Forwarded frames keep their original text byte for byte (T1 in the reference: the CSMS cannot
tell sitectl is there), unless a `Divert` policy rewrites one (1.6 transaction ids issued while
offline) or holds it for a local answer (`CallHeld`, answered with `Router.answer_held`).
Answers to sitectl's own calls are consumed here and never forwarded
(2.0.1 Part 4 §6.4). A frame that is not valid OCPP-J is answered with a CALLERROR when its
message id can be read, otherwise dropped; either way a `PeerProtocolError` event reports it.
"""

from __future__ import annotations

import enum
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sitectl.ocpp.frames import (
    Call,
    CallError,
    CallResult,
    CallResultError,
    FrameError,
    Send,
    error_code,
    parse_frame,
)
from sitectl.ocpp.schemas import validate_call

__all__ = [
    "FORWARD",
    "HOLD",
    "CallHeld",
    "Decision",
    "Divert",
    "Event",
    "ForwardTimeout",
    "LocalCallAborted",
    "LocalCallError",
    "LocalCallResult",
    "LocalCallTimeout",
    "LocalProtocolError",
    "Origin",
    "Outgoing",
    "PeerProtocolError",
    "RequestSeen",
    "ResponseSeen",
    "Route",
    "Router",
    "Side",
    "SlotState",
]


class Side(enum.Enum):
    """One end of a charger's two connections."""

    CHARGER = "charger"
    CSMS = "csms"

    @property
    def other(self) -> Side:
        return Side.CSMS if self is Side.CHARGER else Side.CHARGER


class Origin(enum.Enum):
    """Who made a CALL."""

    CHARGER = "charger"
    CSMS = "csms"
    LOCAL = "sitectl"


class LocalProtocolError(Exception):
    """sitectl's own code misused the router (a bug on our side, raised at once)."""


class Route(enum.Enum):
    """What to do with a peer's CALL."""

    FORWARD = "forward"
    HOLD = "hold"  # answer locally: a `CallHeld` event, then `answer_held`/`error_held`


@dataclass(frozen=True, slots=True)
class Decision:
    """A `Divert` policy's verdict; ``text`` replaces the frame when forwarding."""

    route: Route
    text: str | None = None


FORWARD = Decision(Route.FORWARD)
HOLD = Decision(Route.HOLD)


class Divert(Protocol):
    """Decides, without I/O, whether a peer's CALL is forwarded (maybe rewritten) or held."""

    def charger_call(self, call: PendingCall) -> Decision: ...

    def csms_call(self, call: PendingCall) -> Decision: ...


# ------------------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A frame to write to one side."""

    side: Side
    text: str


@dataclass(frozen=True, slots=True)
class LocalCallResult:
    """The charger (or CSMS) answered one of sitectl's own calls."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LocalCallError:
    """The peer answered one of sitectl's own calls with a CALLERROR."""

    message_id: str
    action: str
    code: str
    description: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LocalCallTimeout:
    """No answer to one of sitectl's own calls in time; the slot is free again."""

    message_id: str
    action: str


@dataclass(frozen=True, slots=True)
class LocalCallAborted:
    """One of sitectl's own calls was dropped because its connection is gone."""

    message_id: str
    action: str
    reason: str


@dataclass(frozen=True, slots=True)
class CallHeld:
    """A peer's CALL that sitectl must answer itself (`Router.answer_held`)."""

    origin: Origin
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ForwardTimeout:
    """A forwarded call was not answered in time (the caller times out on its own)."""

    toward: Side
    message_id: str
    action: str


@dataclass(frozen=True, slots=True)
class RequestSeen:
    """A CALL of an observed action passed through (payload as sent)."""

    origin: Origin
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResponseSeen:
    """An observed CALL was answered: ``response`` on success, ``error_code`` on CALLERROR."""

    origin: Origin
    message_id: str
    action: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    error_code: str | None = None
    answered_locally: bool = False  # sitectl answered (offline), not the peer


@dataclass(frozen=True, slots=True)
class PeerProtocolError:
    """A peer sent something that breaks OCPP-J; logged, answered where possible."""

    side: Side
    description: str
    excerpt: str


Event = (
    CallHeld
    | LocalCallResult
    | LocalCallError
    | LocalCallTimeout
    | LocalCallAborted
    | ForwardTimeout
    | RequestSeen
    | ResponseSeen
    | PeerProtocolError
)

# ------------------------------------------------------------------------------------------------
# Lanes


class SlotState(enum.Enum):
    """The in-flight slot of a lane."""

    IDLE = "idle"
    AWAITING_REPLY = "awaiting_reply"


# (state, event) -> new state. A missing entry is a bug in this module.
_TRANSITIONS: dict[tuple[SlotState, str], SlotState] = {
    (SlotState.IDLE, "send"): SlotState.AWAITING_REPLY,
    (SlotState.AWAITING_REPLY, "answer"): SlotState.IDLE,
    (SlotState.AWAITING_REPLY, "timeout"): SlotState.IDLE,
    (SlotState.AWAITING_REPLY, "abort"): SlotState.IDLE,
}


@dataclass(slots=True)
class PendingCall:
    """A CALL queued on, or in flight on, a lane."""

    origin: Origin
    message_id: str
    action: str
    payload: dict[str, Any]
    text: str
    deadline: float | None = None
    orphaned: bool = False  # its caller's connection is gone: drop the answer


@dataclass
class Lane:
    """Calls travelling toward one side: a FIFO with at most one call in flight."""

    toward: Side
    timeout_s: float
    state: SlotState = SlotState.IDLE
    queue: deque[PendingCall] = field(default_factory=deque)
    inflight: PendingCall | None = None

    def transition(self, event: str) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"can't handle {event!r} when the lane toward {self.toward.value} is "
                f"{self.state.value}"
            ) from None

    def __len__(self) -> int:
        return len(self.queue) + (self.inflight is not None)


# ------------------------------------------------------------------------------------------------
# The router

#: Actions whose requests and answers sitectl reads to keep SiteState current.
OBSERVED_ACTIONS = frozenset(
    {
        "BootNotification",
        "StatusNotification",
        "Authorize",
        "StartTransaction",
        "StopTransaction",
        "MeterValues",
        "TransactionEvent",
        "FirmwareStatusNotification",
        "SignedFirmwareStatusNotification",
        "SecurityEventNotification",
        "NotifyEVChargingNeeds",
        "SetChargingProfile",
        "ClearChargingProfile",
        "RemoteStartTransaction",
        "RequestStartTransaction",
        "SendLocalList",
        "UpdateFirmware",
        "SignedUpdateFirmware",
    }
)

_EXCERPT = 120


def _excerpt(text: str) -> str:
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "…"


class Router:
    """Routes one charger's OCPP traffic between the charger, the CSMS and sitectl.

    Args:
        charger_id: the charge point identity (for messages only).
        version: the negotiated OCPP version: ``1.6``, ``2.0.1`` or ``2.1``.
        charger_timeout_s: how long a call toward the charger may stay unanswered.
        csms_timeout_s: how long a call toward the CSMS may stay unanswered.
        new_id: message ids for sitectl's own calls (UUIDs; injectable for tests).
        observed: actions reported as `RequestSeen`/`ResponseSeen` events.
        validate: check sitectl's own calls against the OCPP JSON schemas before sending.
    """

    def __init__(
        self,
        charger_id: str,
        version: str,
        *,
        charger_timeout_s: float = 30.0,
        csms_timeout_s: float = 60.0,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        observed: Iterable[str] = OBSERVED_ACTIONS,
        validate: bool = True,
    ) -> None:
        self.charger_id = charger_id
        self.version = version
        self._new_id = new_id
        self._observed = frozenset(observed)
        self._validate = validate
        self.lanes = {
            Side.CHARGER: Lane(Side.CHARGER, charger_timeout_s),
            Side.CSMS: Lane(Side.CSMS, csms_timeout_s),
        }
        self._outgoing: list[Outgoing] = []
        self._events: list[Event] = []
        self._held: dict[tuple[Side, str], PendingCall] = {}
        #: The policy consulted for every peer CALL (`None`: forward everything).
        self.divert: Divert | None = None

    # Public methods for receiving data.

    def receive_frame(self, side: Side, text: str | bytes, now: float) -> None:
        """Take one WebSocket message received from `side`."""
        try:
            frame = parse_frame(text)
        except FrameError as exc:
            self._peer_error(side, exc, text)
            return
        if isinstance(frame, Call):
            self._peer_call(side, frame, now)
        elif isinstance(frame, CallResult | CallError):
            self._answer(side, frame, now)
        elif isinstance(frame, Send | CallResultError):
            # OCPP 2.1 frames outside the request/answer pairing: pass through unchanged.
            self._outgoing.append(Outgoing(side.other, frame.text))

    def answer_held(self, side: Side, message_id: str, payload: dict[str, Any]) -> None:
        """Answer a held CALL from `side` with a CALLRESULT."""
        call = self._take_held(side, message_id)
        self._outgoing.append(Outgoing(side, CallResult(message_id, payload).serialize()))
        if call.action in self._observed:
            self._events.append(
                ResponseSeen(
                    call.origin,
                    message_id,
                    call.action,
                    call.payload,
                    payload,
                    answered_locally=True,
                )
            )

    def error_held(self, side: Side, message_id: str, code: str, description: str) -> None:
        """Answer a held CALL from `side` with a CALLERROR."""
        call = self._take_held(side, message_id)
        error = CallError(message_id, code, description[:255])
        self._outgoing.append(Outgoing(side, error.serialize()))
        if call.action in self._observed:
            self._events.append(
                ResponseSeen(
                    call.origin,
                    message_id,
                    call.action,
                    call.payload,
                    None,
                    code,
                    answered_locally=True,
                )
            )

    def held(self) -> list[PendingCall]:
        """Peer CALLs waiting for a local answer."""
        return list(self._held.values())

    def upstream_lost(self) -> None:
        """The CSMS connection is gone.

        Charger calls queued or in flight toward the CSMS become `CallHeld` (the offline agent
        answers them); sitectl's own calls toward the CSMS are aborted; CSMS calls toward the
        charger are dropped from the queue, and the answer of one in flight is not forwarded.
        """
        lane = self.lanes[Side.CSMS]
        calls = ([lane.inflight] if lane.inflight is not None else []) + list(lane.queue)
        if lane.inflight is not None:
            lane.transition("abort")
            lane.inflight = None
        lane.queue = deque()
        for call in calls:
            if call.origin is Origin.LOCAL:
                self._events.append(
                    LocalCallAborted(call.message_id, call.action, "CSMS connection lost")
                )
            else:
                self._hold(Side.CHARGER, call)
        toward_charger = self.lanes[Side.CHARGER]
        toward_charger.queue = deque(c for c in toward_charger.queue if c.origin is not Origin.CSMS)
        if toward_charger.inflight is not None and toward_charger.inflight.origin is Origin.CSMS:
            toward_charger.inflight.orphaned = True

    def send_call(
        self, action: str, payload: dict[str, Any], now: float, toward: Side = Side.CHARGER
    ) -> str:
        """Queue one of sitectl's own calls; returns its message id.

        The answer arrives as a `LocalCallResult`, `LocalCallError`, `LocalCallTimeout` or
        `LocalCallAborted` event with that id; it is never forwarded.

        Raises:
            LocalProtocolError: the payload does not match the OCPP schema for `action`.
        """
        if self._validate:
            problem = validate_call(self.version, action, payload)
            if problem is not None:
                raise LocalProtocolError(
                    f"{action} payload is not valid OCPP {self.version}: {problem}"
                )
        message_id = self._new_id()
        text = Call(message_id, action, payload).serialize()
        self._enqueue(toward, PendingCall(Origin.LOCAL, message_id, action, payload, text), now)
        return message_id

    def tick(self, now: float) -> None:
        """Expire calls whose deadline has passed. Call it at `next_deadline()`."""
        for lane in self.lanes.values():
            call = lane.inflight
            if call is None or call.deadline is None or call.deadline > now:
                continue
            lane.transition("timeout")
            lane.inflight = None
            if call.origin is Origin.LOCAL:
                self._events.append(LocalCallTimeout(call.message_id, call.action))
            else:
                self._events.append(ForwardTimeout(lane.toward, call.message_id, call.action))
            self._pump(lane, now)

    def abort_local(self, reason: str, toward: Side = Side.CHARGER) -> None:
        """Drop sitectl's own calls toward `toward` (its connection is gone)."""
        lane = self.lanes[toward]
        if lane.inflight is not None and lane.inflight.origin is Origin.LOCAL:
            call = lane.inflight
            lane.transition("abort")
            lane.inflight = None
            self._events.append(LocalCallAborted(call.message_id, call.action, reason))
        kept: deque[PendingCall] = deque()
        for call in lane.queue:
            if call.origin is Origin.LOCAL:
                self._events.append(LocalCallAborted(call.message_id, call.action, reason))
            else:
                kept.append(call)
        lane.queue = kept

    def withdraw_local(self, message_id: str, toward: Side = Side.CHARGER) -> bool:
        """Drop one of sitectl's own calls that is still queued (its caller gave up).

        A call that is in flight stays (it has been written). Without this a call whose
        caller timed out while it waited behind a slow one would still reach the charger
        later, e.g. a stale limit after a newer one. Returns whether it was dropped.
        """
        lane = self.lanes[toward]
        for call in lane.queue:
            if call.origin is Origin.LOCAL and call.message_id == message_id:
                lane.queue.remove(call)
                return True
        return False

    # Public methods for sending data.

    def frames_to_send(self) -> list[Outgoing]:
        """Return and forget the frames to write, in order."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def events_received(self) -> list[Event]:
        """Return and forget what happened since the last call."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """The earliest time `tick` has work to do, or ``None``."""
        deadlines = [
            lane.inflight.deadline
            for lane in self.lanes.values()
            if lane.inflight is not None and lane.inflight.deadline is not None
        ]
        return min(deadlines) if deadlines else None

    def queued(self, toward: Side) -> int:
        """Calls queued or in flight toward `toward`."""
        return len(self.lanes[toward])

    # Private methods.

    def _peer_call(self, side: Side, frame: Call, now: float) -> None:
        origin = Origin.CHARGER if side is Side.CHARGER else Origin.CSMS
        call = PendingCall(origin, frame.message_id, frame.action, frame.payload, frame.text)
        if call.action in self._observed:
            self._events.append(RequestSeen(origin, call.message_id, call.action, call.payload))
        decision = FORWARD
        if self.divert is not None:
            decision = (
                self.divert.charger_call(call)
                if side is Side.CHARGER
                else self.divert.csms_call(call)
            )
        if decision.route is Route.HOLD:
            self._hold(side, call)
            return
        if decision.text is not None:
            call.text = decision.text
        self._enqueue(side.other, call, now)

    def _hold(self, side: Side, call: PendingCall) -> None:
        self._held[(side, call.message_id)] = call
        self._events.append(CallHeld(call.origin, call.message_id, call.action, call.payload))

    def _take_held(self, side: Side, message_id: str) -> PendingCall:
        try:
            return self._held.pop((side, message_id))
        except KeyError:
            raise LocalProtocolError(f"no held call {message_id!r} from the {side.value}") from None

    def _enqueue(self, toward: Side, call: PendingCall, now: float) -> None:
        lane = self.lanes[toward]
        if call.origin is Origin.CSMS:
            # The CSMS's calls go ahead of sitectl's queued ones (never of one in flight): our
            # fail-safes, probes and checks must not delay the operator's (issue #17: a CSMS
            # SetChargingProfile waited 21-24 s behind them on a slow station).
            ahead = next(
                (i for i, queued in enumerate(lane.queue) if queued.origin is Origin.LOCAL),
                len(lane.queue),
            )
            lane.queue.insert(ahead, call)
        else:
            lane.queue.append(call)
        self._pump(lane, now)

    def _pump(self, lane: Lane, now: float) -> None:
        if lane.state is not SlotState.IDLE or not lane.queue:
            return
        call = lane.queue.popleft()
        lane.transition("send")
        call.deadline = now + lane.timeout_s
        lane.inflight = call
        self._outgoing.append(Outgoing(lane.toward, call.text))

    def _answer(self, side: Side, frame: CallResult | CallError, now: float) -> None:
        # An answer from `side` answers the call in flight on the lane toward `side`.
        lane = self.lanes[side]
        call = lane.inflight
        if call is None or call.message_id != frame.message_id:
            self._events.append(
                PeerProtocolError(
                    side,
                    f"answer to unknown or expired call id {frame.message_id!r}",
                    _excerpt(frame.text),
                )
            )
            return
        lane.transition("answer")
        lane.inflight = None
        if call.origin is Origin.LOCAL:
            if isinstance(frame, CallResult):
                self._events.append(LocalCallResult(call.message_id, call.action, frame.payload))
            else:
                self._events.append(
                    LocalCallError(
                        call.message_id,
                        call.action,
                        frame.code,
                        frame.description,
                        frame.details or {},
                    )
                )
        else:
            if not call.orphaned:
                self._outgoing.append(Outgoing(side.other, frame.text))
            if call.action in self._observed:
                if isinstance(frame, CallResult):
                    self._events.append(
                        ResponseSeen(
                            call.origin, call.message_id, call.action, call.payload, frame.payload
                        )
                    )
                else:
                    self._events.append(
                        ResponseSeen(
                            call.origin,
                            call.message_id,
                            call.action,
                            call.payload,
                            None,
                            frame.code,
                        )
                    )
        self._pump(lane, now)

    def _peer_error(self, side: Side, exc: FrameError, text: str | bytes) -> None:
        excerpt = _excerpt(text if isinstance(text, str) else repr(text))
        self._events.append(PeerProtocolError(side, exc.description, excerpt))
        if exc.message_id is None:
            return
        # Answer with a CALLERROR only if this could have been a CALL: an id that answers the
        # call in flight toward that side was meant as an answer, and answering an answer is
        # not allowed; that call will time out instead.
        inflight = self.lanes[side].inflight
        if inflight is not None and inflight.message_id == exc.message_id:
            return
        kind = "type" if exc.unsupported_type else "format"
        reply = CallError(exc.message_id, error_code(self.version, kind), exc.description[:255])
        self._outgoing.append(Outgoing(side, reply.serialize()))
