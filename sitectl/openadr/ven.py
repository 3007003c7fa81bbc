"""The OpenADR 3 VEN component: reads the VTN, publishes limits and prices, sends reports.

Every ``poll_interval_s`` (and at once on a webhook notification) it reads the VTN in a worker
thread (`VtnClient`, synchronous like the library): register (find or create the VEN by
name), the programs followed, their events, the subscriptions. A good read publishes each
program's windows on `SiteState.limits` as source ``openadr:<program>`` with the heartbeat
``valid_until = read + unreachable_after_s`` (for a ``heartbeat`` program no later than its
events cover the present) and the configured fail-safe window, and its prices on
`SiteState.prices`. A failed read publishes nothing: the last windows stand until the heartbeat
lapses, then the board answers the fail-safe (`sitectl.limits`), and the warning
``openadr_unreachable`` is raised per program until a good read clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import openadr3
from openadr3.entities.models import Event

from sitectl.config import Config
from sitectl.limits import GridLimit
from sitectl.openadr.client import VtnAuthError, VtnBadAnswer, VtnClient, VtnError
from sitectl.openadr.mapping import EventSignals, coverage_end, map_event
from sitectl.openadr.reports import MeterHistory, build_report, due_reports
from sitectl.openadr.webhook import NotificationEndpoint
from sitectl.state import Change, Severity, SiteState

__all__ = ["ALARM", "OpenAdrVen"]

log = logging.getLogger(__name__)

ALARM = "openadr_unreachable"
#: A read of the VTN (every request of it) gets this many request timeouts.
READ_TIMEOUTS = 10
#: Notifications coming fast are coalesced: at most one read per this many seconds.
MIN_REREAD_S = 1.0


@dataclass
class _Read:
    programs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> raw program
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # name -> raw events


class OpenAdrVen:
    """The site as a VEN of the grid operator's VTN (``grid_signals.openadr``).

    Args:
        config: the whole configuration (``grid_signals.openadr`` enabled).
        state: where limits, prices and alarms go and meter readings come from.
        client: the VTN client (tests); default one from the configuration.
    """

    name = "openadr"

    def __init__(self, config: Config, state: SiteState, client: VtnClient | None = None) -> None:
        self.config = config
        self.oadr = config.grid_signals.openadr
        self.state = state
        self.ven_name = self.oadr.ven_name or config.site.id
        self.client = client or VtnClient(self.oadr, self.ven_name)
        self.programs = {p.name: p for p in self.oadr.programs}
        self.sources = {name: f"openadr:{name}" for name in self.programs}
        self.meter = config.site.meter
        self.history = MeterHistory()
        self.webhook = (
            NotificationEndpoint(self.oadr.webhook, self._notified)
            if self.oadr.webhook.enabled
            else None
        )
        self.reads = 0  # good reads so far
        self.failed_reads = 0
        self.reports_sent = 0
        self.last_ok: datetime | None = None
        self.failure: str | None = None  # why the latest read failed; None after a good one
        self._missing: set[str] = set()  # programs the VTN does not show
        self._short: dict[str, datetime] = {}  # heartbeat programs: how far their events reach
        self._good: dict[str, EventSignals] = {}  # event id -> its last mapping without problems
        self._said: set[tuple[str, str]] = set()  # problems already logged
        self._events: dict[str, list[Event]] = {}
        self._reported: set[tuple[str, int, int]] = set()
        self._subscribed: set[str] = set()
        self._wake = asyncio.Event()
        self._begun = False
        self._lock = threading.Lock()  # one thread at a time uses the client
        state.subscribe(self._on_change)

    # The component.

    def begin(self, now: datetime) -> None:
        """Until the first read: as if just read, nothing announced (the heartbeat runs)."""
        if self._begun:
            return
        self._begun = True
        for program in self.programs:
            self._publish(program, [], now)

    async def run(self) -> None:
        self.begin(self.state.clock())
        if self.webhook is not None:
            try:
                await self.webhook.start()
            except OSError as exc:
                log.error("OpenADR: cannot listen for notifications (%s): polling only", exc)
                self.webhook = None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._poll_loop())
                group.create_task(self._watch_loop())
        finally:
            if self.webhook is not None:
                await self.webhook.stop()
            # Not under a worker thread's feet: one still reading closes nothing it uses.
            if self._lock.acquire(blocking=False):
                try:
                    self.client.close()
                finally:
                    self._lock.release()

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.read_once()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.oadr.poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            rest = MIN_REREAD_S - (loop.time() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    async def _watch_loop(self) -> None:
        tick = min(1.0, self.oadr.unreachable_after_s / 4)
        while True:
            self.check(self.state.clock())
            await asyncio.sleep(tick)

    def _notified(self, kind: str) -> None:
        self._wake.set()

    def _on_change(self, change: Change) -> None:
        if change.kind == "reading" and change.subject == self.meter:
            self.history.add(self.state.readings.get(change.subject))

    # One read.

    async def read_once(self) -> bool:
        """Read the VTN and publish what it says; returns whether the read was good."""
        self.begin(self.state.clock())
        timeout = self.oadr.request_timeout_s * READ_TIMEOUTS
        try:
            async with asyncio.timeout(timeout):
                read = await asyncio.to_thread(self._read)
        except VtnError as exc:
            self._failed(str(exc))
            return False
        except TimeoutError:
            self._failed(f"no complete answer within {timeout:g} s")
            return False
        except Exception as exc:  # a library bug must not end the component
            log.exception("OpenADR: reading the VTN failed unexpectedly")
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        now = self.state.clock()
        self._apply(read, now)
        self.check(now)
        await self._send_reports(now)
        return True

    def _read(self) -> _Read:
        """The worker thread's part: every request of one read."""
        with self._lock:
            client = self.client
            if client.ven_id is None:
                try:
                    client.register()
                except (VtnBadAnswer, VtnAuthError) as exc:
                    self._say("register", f"VEN registration refused ({exc}): reading on without")
            read = _Read()
            for raw in client.programs():
                name = raw.get("programName")
                if name in self.programs and isinstance(raw.get("id"), str):
                    read.programs[name] = raw
            for name, raw in read.programs.items():
                read.events[name] = client.events(raw["id"])
            if self.webhook is not None and self.webhook.port is not None:
                for name, raw in read.programs.items():
                    if raw["id"] in self._subscribed:
                        continue
                    try:
                        client.subscribe(
                            raw["id"], self.webhook.callback_url, self.webhook.bearer_token
                        )
                        self._subscribed.add(raw["id"])
                    except (VtnBadAnswer, VtnAuthError) as exc:
                        self._say(f"subscribe {name}", f"no subscription ({exc}): polling only")
            return read

    def _failed(self, reason: str) -> None:
        self.failed_reads += 1
        if reason != self.failure:
            lapse = self.last_ok + self._tolerance if self.last_ok else None
            log.warning(
                "OpenADR: the VTN could not be read: %s (the limits stand until %s, then the "
                "fail-safe)",
                reason,
                lapse.isoformat(timespec="seconds") if lapse else "the heartbeat lapses",
            )
        self.failure = reason
        self.check(self.state.clock())

    @property
    def _tolerance(self) -> timedelta:
        return timedelta(seconds=self.oadr.unreachable_after_s)

    def _apply(self, read: _Read, now: datetime) -> None:
        if self.failure is not None:
            log.info("OpenADR: the VTN answers again")
        self.failure = None
        self.last_ok = now
        self.reads += 1
        listed: set[str] = set()
        for program, source in self.sources.items():
            raw_program = read.programs.get(program)
            if raw_program is None:
                if program not in self._missing:
                    log.warning(
                        "OpenADR: program '%s' is not on the VTN (or not shown to this VEN): "
                        "its fail-safe applies once its heartbeat lapses",
                        program,
                    )
                self._missing.add(program)
                continue  # nothing published: unknown means the fail-safe
            self._missing.discard(program)
            limits, prices, events = self._program(program, raw_program, read, now, listed)
            self._publish(program, limits, now)
            self.state.prices.publish(source, prices)
            self._events[program] = events
        # Events the VTN no longer lists were withdrawn: their last good limits go with them.
        self._good = {k: v for k, v in self._good.items() if k in listed}
        self._reported = {key for key in self._reported if key[0] in listed}

    def _program(
        self, program: str, raw_program: dict[str, Any], read: _Read, now: datetime, listed: set
    ) -> tuple[list[GridLimit], list[Any], list[Event]]:
        try:
            descriptors = openadr3.coerce(raw_program).payload_descriptors
        except Exception as exc:  # the program's own descriptors are only a default
            self._say(f"program {program}", f"program '{program}' unreadable ({exc})")
            descriptors = None
        limits: list[GridLimit] = []
        prices: list[Any] = []
        events: list[Event] = []
        for index, raw in enumerate(read.events.get(program, [])):
            if raw.get("programID") != raw_program["id"]:
                continue  # a VTN that ignored the programID filter
            try:
                signals = map_event(
                    raw,
                    program=program,
                    program_descriptors=descriptors,
                    config=self.oadr,
                    source=self.sources[program],
                    now=now,
                )
            except Exception as exc:  # a mapping bug must not lift the event's limits either
                log.exception(
                    "OpenADR: event %r of '%s' could not be mapped", raw.get("id"), program
                )
                event_id = raw["id"] if isinstance(raw.get("id"), str) else "?"
                signals = EventSignals(event_id, event_id, limit_problem=True)
                signals.problems.append(f"not mapped ({type(exc).__name__})")
            key = signals.event_id if signals.event_id != "?" else f"?{index}"
            listed.add(key)
            for problem in signals.problems:
                self._say(
                    (key, f"{raw.get('modificationDateTime')}:{problem}"),
                    f"event '{signals.name}' ({key}) of '{program}': {problem}",
                )
            good = self._good.get(key)
            if signals.limit_problem and good is not None:
                # Bad input never lifts a limit: the event's last good windows stay.
                limits += good.limits
            elif not signals.limit_problem:
                self._good[key] = signals
            limits += signals.limits
            prices += signals.prices
            if signals.event is not None:
                events.append(signals.event)
        return limits, prices, events

    def _publish(self, program: str, limits: list[GridLimit], now: datetime) -> None:
        source = self.sources[program]
        valid_until = now + self._tolerance
        if self.programs[program].heartbeat:
            reach = coverage_end(limits, now)
            if reach < valid_until:
                valid_until = reach
                self._short[program] = reach
            else:
                self._short.pop(program, None)
        self.state.limits.publish(
            source,
            limits,
            now,
            valid_until=valid_until,
            fail_safe=[self._failsafe(program, now)],
            fail_safe_s=self.oadr.failsafe_duration_s,
        )

    def _failsafe_text(self) -> str:
        oadr = self.oadr
        parts = []
        if oadr.failsafe_kw is not None:
            parts.append(f"{oadr.failsafe_kw:g} kW")
        if oadr.failsafe_a is not None:
            parts.append(f"{'/'.join(f'{a:g}' for a in oadr.failsafe_a)} A")
        return " and ".join(parts)

    def _failsafe(self, program: str, now: datetime) -> GridLimit:
        oadr = self.oadr
        return GridLimit(
            oadr.node,
            self.sources[program],
            now,
            limit_kw=oadr.failsafe_kw,
            limit_a=oadr.failsafe_a,
            reason=f"OpenADR {program}: no confirmed limits: fail-safe {self._failsafe_text()}",
            ref="failsafe",
        )

    def _say(self, key: Any, text: str) -> None:
        """Log a problem of the VTN's once (it comes back with every read)."""
        marker = (str(key), text)
        if marker not in self._said:
            self._said.add(marker)
            log.warning("OpenADR: %s", text)

    # Alarms.

    def why_silent(self, program: str) -> str:
        """Why a program's source went silent, in words."""
        if self.failure is not None:
            return f"the VTN cannot be read: {self.failure}"
        if program in self._missing:
            return f"program '{program}' is not on the VTN"
        reach = self._short.get(program)
        if reach is not None:
            return f"event heartbeat: its events cover only until {reach:%H:%M} UTC"
        return "no confirmed limits"

    def check(self, now: datetime) -> None:
        """Raise or clear ``openadr_unreachable`` per program from the board's heartbeat."""
        for program, source in self.sources.items():
            if self.state.limits.silent(source, now):
                self.state.raise_alarm(
                    ALARM,
                    source,
                    Severity.WARNING,
                    f"OpenADR program '{program}': fail-safe {self._failsafe_text()} on "
                    f"'{self.oadr.node}' ({self.why_silent(program)})",
                )
            else:
                self.state.clear_alarm(ALARM, source)

    # Reports.

    async def _send_reports(self, now: datetime) -> None:
        if not self.oadr.reports or self.meter is None:
            return
        timeout = self.oadr.request_timeout_s * 2
        for events in list(self._events.values()):
            for event in events:
                for due in due_reports(event, now, self._reported):
                    if due.intervals[-1][2] <= self.state.started_at:
                        self._reported.add(due.key)  # before sitectl ran: no readings of it
                        continue
                    report = build_report(due, self.history, self.ven_name, self.config.site.id)
                    if report is None:
                        self._reported.add(due.key)
                        continue
                    try:
                        async with asyncio.timeout(timeout):
                            await asyncio.to_thread(self._post, report)
                    except VtnBadAnswer as exc:
                        log.warning("OpenADR: report for event %s refused: %s", due.event_id, exc)
                        self._reported.add(due.key)  # the same report would be refused again
                        continue
                    except (VtnError, TimeoutError) as exc:
                        log.info("OpenADR: report for event %s not sent yet: %s", due.event_id, exc)
                        return  # tried again after the next good read
                    self._reported.add(due.key)
                    self.reports_sent += 1
                    log.info("OpenADR: %s report sent for event %s", due.payload_type, due.event_id)

    def _post(self, report: dict[str, Any]) -> str | None:
        with self._lock:
            return self.client.report(report)
