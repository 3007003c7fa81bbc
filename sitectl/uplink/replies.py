"""The command path: a message on ``<prefix>/cmd/<name>`` in, the reply to send out.

`CommandDesk.answer` checks where a command came from and where its reply may go (guard.py),
carries it out (commands.py) and returns the reply to publish as an `OutgoingReply`; the
uplink only puts it on the connection. Rules:

- Commands with a topic outside ``…/cmd/<name>``, retained ones, and those of a disabled
  command channel are refused; one without a ResponseTopic, or with one the guard refuses, is
  not carried out at all (nothing to answer, or no permitted place to answer).
- A reply is MQTT 5 request/response: the command's CorrelationData, JSON content, never
  retained, never through the outbox (it matters only while its requester waits).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sitectl.config import Config
from sitectl.control.phase_test import PhaseTests
from sitectl.state import SiteState
from sitectl.uplink.client import Received
from sitectl.uplink.commands import Rollouts, handle_command
from sitectl.uplink.guard import ReplyTopics
from sitectl.uplink.messages import Topics, iso

__all__ = ["CommandDesk", "OutgoingReply"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingReply:
    """A command's reply, ready for the connection."""

    topic: str
    payload: bytes
    properties: Properties


class CommandDesk:
    """Takes commands and composes their replies.

    Args:
        config: the validated configuration (``mqtt.commands_enabled``, the rest for commands).
        state: the site state the commands act on.
        topics: the topic tree.
        reply_topics: the guard of ResponseTopics.
        republish: the ``republish`` command (`Uplink.republish`).
        rollouts: the firmware rollouts, for the ``firmware`` command (``None``: refused).
        phase_tests: for ``detect_phases`` (``None``: refused).
    """

    def __init__(
        self,
        config: Config,
        state: SiteState,
        topics: Topics,
        reply_topics: ReplyTopics,
        republish: Callable[[], dict[str, Any]],
        rollouts: Rollouts | None = None,
        phase_tests: PhaseTests | None = None,
    ) -> None:
        self.config = config
        self.mqtt = config.mqtt
        self.state = state
        self.topics = topics
        self.reply_topics = reply_topics
        self.republish = republish
        self.rollouts = rollouts
        self.phase_tests = phase_tests

    def answer(self, message: Received) -> OutgoingReply | None:
        """Carry out one command; the reply to send, or ``None`` when none may be sent."""
        if not self.mqtt.commands_enabled:  # not subscribed; a broker should not deliver any
            log.warning("MQTT commands are disabled: ignoring a message on %s", message.topic)
            return None
        name = self.topics.command_name(message.topic)
        if name is None:
            reply = _refusal("", f"topic '{message.topic}' is outside {self.topics.prefix}/cmd/")
        elif message.retain:
            reply = _refusal(name, "retained commands are refused (publish with retain=false)")
        else:
            reply = None
        if not message.response_topic:
            log.warning(
                "MQTT command on %s without a ResponseTopic: ignored (MQTT 5 request/response "
                "needs one)",
                message.topic,
            )
            return None
        refused = self.reply_topics.why_refused(message.response_topic)
        if refused is not None:
            self.reply_topics.refuse(message.topic, message.response_topic, refused)
            return None
        if reply is None:
            assert name is not None
            reply = handle_command(
                self.state,
                self.config,
                name,
                message.payload,
                republish=self.republish,
                rollouts=self.rollouts,
                phase_tests=self.phase_tests,
            )
        reply["ts"] = iso(self.state.clock())
        if reply["ok"]:
            log.info("MQTT command %s: ok", name)
        else:
            log.warning(
                "MQTT command on %s refused: %s%s",
                message.topic,
                reply["error"],
                f" (field {reply['field']})" if reply.get("field") else "",
            )
        properties = Properties(PacketTypes.PUBLISH)
        if message.correlation_data is not None:
            properties.CorrelationData = message.correlation_data
        properties.PayloadFormatIndicator = 1
        properties.ContentType = "application/json"
        payload = json.dumps(reply, separators=(",", ":")).encode()
        return OutgoingReply(message.response_topic, payload, properties)


def _refusal(name: str, error: str) -> dict[str, Any]:
    return {"ok": False, "command": name, "error": error, "field": None}
