"""A fake charger and a fake CSMS around one `Router`, without sockets (h11's ConnectionPair).

Frames are written as JSON text exactly as they would be on the wire; the clock and message ids
are injected so that every assertion can name exact frames.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from sitectl.ocpp.router import Event, Router, Side


class Harness:
    """Drives a Router: ``h.charger(frame)``, ``h.csms(frame)``, then read what came out."""

    def __init__(self, version: str = "1.6", **kwargs: Any) -> None:
        counter = itertools.count(1)
        self.now = 0.0
        self.router = Router("CP1", version, new_id=lambda: f"L{next(counter)}", **kwargs)
        self.sent: dict[Side, list[str]] = {Side.CHARGER: [], Side.CSMS: []}
        self.events: list[Event] = []
        self.agent: Any = None  # an OfflineAgent, driven like the link drives it

    def _drain(self) -> None:
        while True:
            frames = self.router.frames_to_send()
            events = self.router.events_received()
            if not frames and not events:
                return
            for out in frames:
                self.sent[out.side].append(out.text)
            self.events += events
            if self.agent is not None:
                self.agent.handle(events, self.now)

    def set_online(self, online: bool) -> None:
        """The CSMS connection comes up or goes down."""
        if not online:
            self.router.upstream_lost()
        self.agent.set_online(online, self.now)
        self._drain()

    def charger(self, frame: Any) -> None:
        """The charger sends `frame` (a list is serialised, a str sent as is)."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        self.router.receive_frame(Side.CHARGER, text, self.now)
        self._drain()

    def csms(self, frame: Any) -> None:
        """The CSMS sends `frame`."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        self.router.receive_frame(Side.CSMS, text, self.now)
        self._drain()

    def local(self, action: str, payload: dict) -> str:
        """sitectl sends one of its own calls to the charger."""
        message_id = self.router.send_call(action, payload, self.now)
        self._drain()
        return message_id

    def advance(self, seconds: float) -> None:
        """Move the clock and run what is due."""
        self.now += seconds
        self.router.tick(self.now)
        if self.agent is not None:
            self.agent.pump(self.now)
        self._drain()

    def to_csms(self) -> list[str]:
        """Frames written to the CSMS since the last call."""
        frames, self.sent[Side.CSMS] = self.sent[Side.CSMS], []
        return frames

    def to_charger(self) -> list[str]:
        """Frames written to the charger since the last call."""
        frames, self.sent[Side.CHARGER] = self.sent[Side.CHARGER], []
        return frames

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events
