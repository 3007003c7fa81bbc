"""OCPP-J frames: parse and serialize the JSON arrays both OCPP versions put on the wire.

    CALL        [2, "<id>", "<Action>", {payload}]
    CALLRESULT  [3, "<id>", {payload}]
    CALLERROR   [4, "<id>", "<errorCode>", "<errorDescription>", {errorDetails}]

OCPP 2.1 adds CALLRESULTERROR (5) and SEND (6); they are parsed so they can be passed through.
Sources: OCPP-J 1.6 §4; OCPP 2.0.1 Part 4 §4.1–4.3. A frame that cannot be parsed raises
`FrameError`, carrying the message id when one could still be read, so the receiver can answer
with a CALLERROR as the spec asks.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Call",
    "CallError",
    "CallResult",
    "CallResultError",
    "Frame",
    "FrameError",
    "MessageType",
    "Send",
    "error_code",
    "parse_frame",
]


class MessageType(enum.IntEnum):
    """The first element of every OCPP-J frame."""

    CALL = 2
    CALL_RESULT = 3
    CALL_ERROR = 4
    CALL_RESULT_ERROR = 5  # OCPP 2.1
    SEND = 6  # OCPP 2.1


@dataclass(frozen=True, slots=True)
class Call:
    """A request. ``text`` is the frame as received, forwarded byte for byte."""

    message_id: str
    action: str
    payload: dict[str, Any]
    text: str = ""

    def serialize(self) -> str:
        return _dumps([MessageType.CALL, self.message_id, self.action, self.payload])


@dataclass(frozen=True, slots=True)
class CallResult:
    """A successful answer to a CALL."""

    message_id: str
    payload: dict[str, Any]
    text: str = ""

    def serialize(self) -> str:
        return _dumps([MessageType.CALL_RESULT, self.message_id, self.payload])


@dataclass(frozen=True, slots=True)
class CallError:
    """A failed answer to a CALL."""

    message_id: str
    code: str
    description: str = ""
    details: dict[str, Any] | None = None
    text: str = ""

    def serialize(self) -> str:
        return _dumps(
            [
                MessageType.CALL_ERROR,
                self.message_id,
                self.code,
                self.description,
                self.details or {},
            ]
        )


@dataclass(frozen=True, slots=True)
class CallResultError:
    """OCPP 2.1: the receiver of a CALLRESULT could not process it."""

    message_id: str
    code: str
    description: str
    details: dict[str, Any]
    text: str = ""


@dataclass(frozen=True, slots=True)
class Send:
    """OCPP 2.1: an unconfirmed message (no answer expected)."""

    message_id: str
    action: str
    payload: dict[str, Any]
    text: str = ""


Frame = Call | CallResult | CallError | CallResultError | Send


class FrameError(Exception):
    """A frame that is not valid OCPP-J; `message_id` is set when it could still be read."""

    def __init__(
        self, description: str, message_id: str | None = None, unsupported_type: bool = False
    ) -> None:
        super().__init__(description)
        self.description = description
        self.message_id = message_id
        self.unsupported_type = unsupported_type


def _dumps(value: list) -> str:
    # Compact separators: what chargers and CSMSs send; smaller frames on thin depot links.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_ID_PATTERN = re.compile(r'^\s*\[\s*\d+\s*,\s*"((?:[^"\\]|\\.){1,64})"')


def _salvage_id(text: str) -> str | None:
    """Read the message id out of a frame that is not valid JSON, if it is intact."""
    match = _ID_PATTERN.match(text)
    return match.group(1) if match else None


def parse_frame(text: str | bytes) -> Frame:
    """Parse one OCPP-J frame.

    Args:
        text: the WebSocket text message (bytes are decoded as UTF-8).

    Returns:
        A `Call`, `CallResult`, `CallError`, `CallResultError` or `Send`, keeping `text`.

    Raises:
        FrameError: the frame is not valid OCPP-J.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("frame is not valid UTF-8") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise FrameError(f"invalid JSON: {exc}", _salvage_id(text)) from None
    if not isinstance(value, list) or len(value) < 2:
        raise FrameError("a frame must be a JSON array [type, id, ...]")
    kind, message_id = value[0], value[1]
    if not isinstance(message_id, str) or not message_id:
        raise FrameError("the message id must be a non-empty string")
    if len(value) < 3:
        raise FrameError("a frame must have at least 3 elements", message_id)
    if len(message_id) > 36:
        raise FrameError("the message id is longer than 36 characters", message_id)
    if kind == MessageType.CALL and not isinstance(kind, bool):
        if len(value) != 4 or not isinstance(value[2], str) or not isinstance(value[3], dict):
            raise FrameError("a CALL is [2, id, action, {payload}]", message_id)
        return Call(message_id, value[2], value[3], text)
    if kind == MessageType.CALL_RESULT and not isinstance(kind, bool):
        if len(value) != 3 or not isinstance(value[2], dict):
            raise FrameError("a CALLRESULT is [3, id, {payload}]", message_id)
        return CallResult(message_id, value[2], text)
    if kind in (MessageType.CALL_ERROR, MessageType.CALL_RESULT_ERROR) and not isinstance(
        kind, bool
    ):
        if (
            len(value) != 5
            or not isinstance(value[2], str)
            or not isinstance(value[3], str)
            or not isinstance(value[4], dict)
        ):
            raise FrameError("a CALLERROR is [4, id, code, description, {details}]", message_id)
        if kind == MessageType.CALL_ERROR:
            return CallError(message_id, value[2], value[3], value[4], text)
        return CallResultError(message_id, value[2], value[3], value[4], text)
    if kind == MessageType.SEND and not isinstance(kind, bool):
        if len(value) != 4 or not isinstance(value[2], str) or not isinstance(value[3], dict):
            raise FrameError("a SEND is [6, id, action, {payload}]", message_id)
        return Send(message_id, value[2], value[3], text)
    raise FrameError(f"unknown message type {value[0]!r}", message_id, unsupported_type=True)


def error_code(version: str, kind: str) -> str:
    """The CALLERROR code for a generic error kind, spelled as the OCPP version spells it.

    Kinds: ``format`` (a frame that is not valid OCPP-J), ``type`` (unknown message type),
    ``not_implemented``, ``internal``, ``security``, ``generic``.
    OCPP-J 1.6 §4.2.3 and 2.0.1 Part 4 §4.3 (error code tables).
    """
    if version == "1.6":
        return {
            "format": "FormationViolation",  # sic: 1.6 spells it so
            "type": "FormationViolation",
            "not_implemented": "NotImplemented",
            "internal": "InternalError",
            "security": "SecurityError",
            "generic": "GenericError",
        }[kind]
    return {
        "format": "FormatViolation",
        "type": "MessageTypeNotSupported",
        "not_implemented": "NotImplemented",
        "internal": "InternalError",
        "security": "SecurityError",
        "generic": "GenericError",
    }[kind]
