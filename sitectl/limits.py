"""Limit sources, one model (issue #20): every limit on a node of the circuit tree is a window.

A configured rating, an operator override (HTTP/MQTT), an OpenADR 3 event, a §14a dimming input,
a future EEBus LPC or OCPP 2.1 external limit: each is a `GridLimit` — a lower bound on one node
("grid" or a circuit id), in A per phase and/or kW, over a time window, from a named source.
A source owns its whole set of windows and replaces it at once (`LimitBoard.publish`), so a
source never has to diff, and a withdrawn event is simply absent from the next set.

Silence is part of the model (the conditional-connection rule): a source that must keep
confirming its limits publishes with `valid_until` and `fail_safe` windows. Once `valid_until`
has passed without a new publish, the board answers the fail-safe windows too (starting at
the moment the source went silent) besides the windows it announced (a lower announced limit is
not lifted by silence), and says so (`LimitBoard.silent`), so the caller can raise an alarm.
Unknown means the worst case for the breaker: the fail-safe is never lifted by time alone
(unless `fail_safe_s` says for how long), only by the source publishing again.

Plain data, no I/O: the control loop reads `LimitBoard.windows(start, end)` for its horizon and
the uplink/HTTP read `LimitBoard.in_force(now)`.

Operator overrides (HTTP ``POST /api/overrides``, the MQTT ``override`` command) are a source
like any other: `OperatorOverrides` keeps one `LimitOverride` per node, as before, and
publishes them as the sources ``operator:http`` and ``operator:mqtt`` (windows from when they
were set to when they expire), so the control loop reads every limit from one board.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

Phases = tuple[float, float, float]

#: The start of an override's window when it does not say when it was set: before anything.
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
#: The board's source name of operator overrides, by the transport that set them.
OPERATOR_PREFIX = "operator"


@dataclass(frozen=True, slots=True)
class GridLimit:
    """One limit on one node over a time window, from one source.

    Attributes:
        node: "grid" or a circuit id.
        source: who set it, e.g. "operator:mqtt", "openadr:<program>", "14a:<input>".
        start: when it begins (UTC, aware).
        end: when it ends (UTC, aware), or None while the source keeps it.
        limit_a: per-phase current limit (A), or None when only a kW limit is given.
        limit_kw: active-power limit (kW), or None when only a current limit is given.
        hard: a hard limit is never exceeded (the LP's constraint); a soft one may be exceeded
            at a price (a penalty in the LP).
        reason: words for the operator ("OpenADR event 17:00-19:00: import capacity 400 kW").
        ref: the source's own id for it (event id, override id), for audit and de-duplication.
    """

    node: str
    source: str
    start: datetime
    end: datetime | None = None
    limit_a: Phases | None = None
    limit_kw: float | None = None
    hard: bool = True
    reason: str = ""
    ref: str = ""

    def __post_init__(self) -> None:
        if self.limit_a is None and self.limit_kw is None:
            raise ValueError(f"limit on {self.node} from {self.source}: no limit_a or limit_kw")
        if self.limit_a is not None:
            if len(self.limit_a) != 3 or any(not (a >= 0) for a in self.limit_a):
                raise ValueError(f"limit_a: three values >= 0, got {self.limit_a!r}")
            object.__setattr__(self, "limit_a", tuple(float(a) for a in self.limit_a))
        if self.limit_kw is not None and not (self.limit_kw >= 0):
            raise ValueError(f"limit_kw: must be >= 0, got {self.limit_kw!r}")
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValueError("start/end: timezone-aware datetimes required")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} not after start {self.start.isoformat()}")

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Whether any part of [self.start, self.end) falls in [start, end)."""
        return self.start < end and (self.end is None or self.end > start)

    def active(self, now: datetime) -> bool:
        """Whether it is in force at `now`."""
        return self.start <= now and (self.end is None or now < self.end)


@dataclass(slots=True)
class _Entry:
    limits: tuple[GridLimit, ...]
    published_at: datetime
    valid_until: datetime | None
    fail_safe: tuple[GridLimit, ...]
    fail_safe_s: float | None


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """What the board knows of one source (for /api/site, MQTT and alarms)."""

    source: str
    published_at: datetime
    valid_until: datetime | None
    silent: bool
    limits: tuple[GridLimit, ...] = field(default=())
    #: The fail-safe windows it gave (as published: their start is moved to the lapse).
    fail_safe: tuple[GridLimit, ...] = field(default=())


class LimitBoard:
    """Every limit source's current windows; sources publish, the loop and the API read.

    Not thread-safe: used from the event loop only, like `SiteState`.

    Args:
        nodes: the nodes a limit may be on ("grid" and the circuit ids); ``None`` accepts any.
        on_change: told the source's name after a publish that changes its windows (or its
            fail-safe), and after a withdraw: the site state announces it (``limits``), so the
            control loop runs a cycle at once.
    """

    def __init__(
        self,
        nodes: Iterable[str] | None = None,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self.nodes = frozenset(nodes) if nodes is not None else None
        self.on_change = on_change

    def publish(
        self,
        source: str,
        limits: Iterable[GridLimit],
        now: datetime,
        *,
        valid_until: datetime | None = None,
        fail_safe: Iterable[GridLimit] = (),
        fail_safe_s: float | None = None,
    ) -> None:
        """Replace `source`'s windows.

        Args:
            source: the source's name; every limit in `limits` and `fail_safe` must carry it.
            limits: its windows now (an empty set withdraws every limit of the source).
            now: the time of publishing.
            valid_until: when the source must publish again (its heartbeat); None = no
                heartbeat (the windows stand until replaced).
            fail_safe: the windows to apply once `valid_until` passes without a publish; their
                start is moved to the moment the source went silent.
            fail_safe_s: how long the fail-safe holds once applied (the conditional-connection
                rule's duration); None = until the source publishes again.
        """
        limits = tuple(limits)
        fail_safe = tuple(fail_safe)
        try:
            for limit in (*limits, *fail_safe):
                if not isinstance(limit, GridLimit):
                    raise ValueError(f"need GridLimit windows, got {type(limit).__name__}")
                if limit.source != source:
                    raise ValueError(f"limit from {limit.source!r} published as {source!r}")
                if self.nodes is not None and limit.node not in self.nodes:
                    raise ValueError(
                        f"node: limit from {source!r} on unknown node {limit.node!r} "
                        f"(known: {', '.join(sorted(self.nodes))})"
                    )
            if fail_safe_s is not None and not (fail_safe_s > 0):
                raise ValueError(f"fail_safe_s: must be > 0, got {fail_safe_s!r}")
            if valid_until is not None and valid_until.tzinfo is None:
                raise ValueError("valid_until: timezone-aware datetime required")
        except ValueError as exc:
            log.warning("limits from %s refused (the last set stands): %s", source, exc)
            raise
        old = self._entries.get(source)
        self._entries[source] = _Entry(limits, now, valid_until, fail_safe, fail_safe_s)
        # Told only of a change: a source confirming the same set every second (a heartbeat,
        # a polled contact) must not run a control cycle each time. A fail-safe's start is
        # set at the lapse, so it does not count.
        if (
            old is None
            or old.limits != limits
            or _undated(old.fail_safe) != _undated(fail_safe)
            or old.fail_safe_s != fail_safe_s
        ):
            self._changed(source)

    def _changed(self, source: str) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(source)
        except Exception:  # a listener must not undo a publish
            log.exception("limit board listener failed on %s", source)

    def withdraw(self, source: str) -> bool:
        """Forget a source (its windows and its heartbeat); returns whether it was known."""
        known = self._entries.pop(source, None) is not None
        if known:
            self._changed(source)
        return known

    def sources(self) -> list[str]:
        """Every source that has published, sorted."""
        return sorted(self._entries)

    def silent(self, source: str, now: datetime) -> bool:
        """Whether `source` missed its heartbeat (its fail-safe windows are answered instead)."""
        entry = self._entries.get(source)
        return entry is not None and entry.valid_until is not None and now >= entry.valid_until

    def _current(self, entry: _Entry, now: datetime) -> tuple[GridLimit, ...]:
        if entry.valid_until is None or now < entry.valid_until:
            return entry.limits
        # Silent: the fail-safe from the moment the heartbeat lapsed, for its duration, on top
        # of what the source announced (a lower announced limit is never lifted by silence:
        # the worst case for the breaker; the LP takes the lowest of all hard windows).
        since = entry.valid_until
        until = since + timedelta(seconds=entry.fail_safe_s) if entry.fail_safe_s else None
        return entry.limits + tuple(
            replace(limit, start=since, end=until, reason=limit.reason or "source silent")
            for limit in entry.fail_safe
        )

    def windows(self, start: datetime, end: datetime, now: datetime) -> list[GridLimit]:
        """Every window (hard and soft) overlapping [start, end), as the board stands at `now`."""
        out: list[GridLimit] = []
        for name in sorted(self._entries):
            out += [
                limit
                for limit in self._current(self._entries[name], now)
                if limit.overlaps(start, end)
            ]
        return out

    def in_force(self, now: datetime) -> list[GridLimit]:
        """Every window in force at `now`."""
        return [
            limit
            for name in sorted(self._entries)
            for limit in self._current(self._entries[name], now)
            if limit.active(now)
        ]

    def status(self, now: datetime) -> list[SourceStatus]:
        """Each source's heartbeat state and current windows, sorted by source."""
        return [
            SourceStatus(
                name,
                entry.published_at,
                entry.valid_until,
                self.silent(name, now),
                self._current(entry, now),
                entry.fail_safe,
            )
            for name, entry in sorted(self._entries.items())
        ]

    def expire(self, now: datetime) -> None:
        """Drop windows that ended before `now` (keeps the board small; heartbeats stay)."""
        for entry in self._entries.values():
            entry.limits = tuple(
                limit for limit in entry.limits if limit.end is None or limit.end > now
            )


def _undated(limits: tuple[GridLimit, ...]) -> tuple[GridLimit, ...]:
    return tuple(replace(limit, start=EPOCH) for limit in limits)


def tightest(
    limits: Iterable[GridLimit], node: str, at: datetime
) -> tuple[Phases | None, float | None]:
    """The lowest hard current and power limits on `node` in force at `at` (None where none)."""
    amps: Phases | None = None
    kw: float | None = None
    for limit in limits:
        if limit.node != node or not limit.hard or not limit.active(at):
            continue
        if limit.limit_a is not None:
            amps = (
                limit.limit_a
                if amps is None
                else (
                    min(amps[0], limit.limit_a[0]),
                    min(amps[1], limit.limit_a[1]),
                    min(amps[2], limit.limit_a[2]),
                )
            )
        if limit.limit_kw is not None:
            kw = limit.limit_kw if kw is None else min(kw, limit.limit_kw)
    return amps, kw


# Operator overrides.


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """A temporary lower limit on the site or a circuit (from an operator command).

    Attributes:
        node: "grid" or a circuit id.
        limit_a: per-phase limit (A).
        expires_at: when it ends (UTC, aware).
        source: the transport that set it: "http", "mqtt" (or "operator" when unknown).
        set_at: when it was set; ``None``: in force from before anything (its window starts
            at `EPOCH`).
    """

    node: str
    limit_a: tuple[float, float, float]
    expires_at: datetime
    source: str = "operator"
    set_at: datetime | None = None

    @property
    def board_source(self) -> str:
        """Its source on the board: ``operator:<transport>``."""
        if self.source.startswith(OPERATOR_PREFIX):
            return self.source
        return f"{OPERATOR_PREFIX}:{self.source}"

    def window(self) -> GridLimit:
        """The board's window for it (raises ValueError for a bad value, naming the field)."""
        start = self.set_at if self.set_at is not None else EPOCH
        if self.expires_at <= start:
            start = EPOCH  # set with a clock ahead of its expiry: in force until it expires
        return GridLimit(
            node=self.node,
            source=self.board_source,
            start=start,
            end=self.expires_at,
            limit_a=self.limit_a,
            reason=f"operator override ({self.source})",
            ref=f"override:{self.node}",
        )


class OperatorOverrides(MutableMapping[str, LimitOverride]):
    """The operator overrides by node, published to the board as ``operator:<transport>``.

    A mapping like the plain dict it replaces (``state.overrides[node] = LimitOverride(...)``,
    ``del``, ``pop``, ``in``): every change republishes every operator source's whole set, so
    the board always holds exactly these. One override per node, whichever transport set it
    last. Expired ones are dropped by `expire` (the control loop calls it every cycle).

    Args:
        board: the limit board.
        clock: UTC now, for the publish time.
    """

    def __init__(self, board: LimitBoard, clock: Callable[[], datetime]) -> None:
        self._board = board
        self._clock = clock
        self._by_node: dict[str, LimitOverride] = {}
        self._published: set[str] = set()

    def __getitem__(self, node: str) -> LimitOverride:
        return self._by_node[node]

    def __setitem__(self, node: str, override: LimitOverride) -> None:
        if override.node != node:
            raise ValueError(f"node: override for {override.node!r} filed under {node!r}")
        nodes = self._board.nodes
        if nodes is not None and node not in nodes:
            raise ValueError(f"node: unknown node {node!r} (known: {', '.join(sorted(nodes))})")
        override.window()  # refuse a bad one before it replaces a good one
        self._by_node[node] = override
        self._publish()

    def __delitem__(self, node: str) -> None:
        del self._by_node[node]
        self._publish()

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._by_node))

    def __len__(self) -> int:
        return len(self._by_node)

    def __repr__(self) -> str:
        return f"OperatorOverrides({self._by_node!r})"

    def clear(self) -> None:
        self._by_node.clear()
        self._publish()

    def expire(self, now: datetime) -> list[LimitOverride]:
        """Drop the overrides that have expired by `now`; returns them."""
        gone = [o for o in self._by_node.values() if o.expires_at <= now]
        for override in gone:
            del self._by_node[override.node]
        if gone:
            self._publish()
        return gone

    def _publish(self) -> None:
        by_source: dict[str, list[GridLimit]] = {}
        for override in self._by_node.values():
            by_source.setdefault(override.board_source, []).append(override.window())
        now = self._clock()
        for source, windows in sorted(by_source.items()):
            self._board.publish(source, windows, now)
        for source in sorted(self._published - set(by_source)):
            self._board.withdraw(source)
        self._published = set(by_source)


# Interventions (audit).

#: What happened to a window in force.
STARTED, CHANGED, ENDED = "started", "changed", "ended"


@dataclass(frozen=True, slots=True)
class LimitEvent:
    """A window in force starting, changing (value, end, reason) or ending (issue #20.4).

    Attributes:
        at: when sitectl saw it (UTC).
        action: `STARTED`, `CHANGED` or `ENDED`.
        limit: the window (for ENDED: as it was).
        previous: CHANGED: the window before the change.
        seq: its number in the store (0 when not stored).
    """

    at: datetime
    action: str
    limit: GridLimit
    previous: GridLimit | None = None
    seq: int = 0

    def text(self) -> str:
        """In words, for logs and the alarms stream."""
        limit = self.limit
        value = describe(limit)
        until = f" until {limit.end.isoformat()}" if limit.end is not None else ""
        kind = "hard" if limit.hard else "soft"
        why = f" ({limit.reason})" if limit.reason else ""
        if self.action == CHANGED and self.previous is not None:
            return (
                f"{kind} limit on {limit.node} from {limit.source} changed from "
                f"{describe(self.previous)} to {value}{until}{why}"
            )
        head = f"{kind} limit on {limit.node} from {limit.source} {self.action}"
        return f"{head}: {value}{until}{why}"


def describe(limit: GridLimit) -> str:
    """A window's value in words: ``"[16, 16, 16] A"``, ``"400 kW"`` or both."""
    parts = []
    if limit.limit_a is not None:
        parts.append("[" + ", ".join(f"{a:g}" for a in limit.limit_a) + "] A")
    if limit.limit_kw is not None:
        parts.append(f"{limit.limit_kw:g} kW")
    return " and ".join(parts)


def window_key(limit: GridLimit) -> tuple[str, str, str]:
    """A window's identity across publishes: source, node and its ref (else its start)."""
    return (limit.source, limit.node, limit.ref or limit.start.isoformat())


def window_dict(limit: GridLimit) -> dict[str, object]:
    """A window as JSON-ready data (API, MQTT, store)."""
    return {
        "node": limit.node,
        "source": limit.source,
        "ref": limit.ref or None,
        "hard": limit.hard,
        "limit_a": list(limit.limit_a) if limit.limit_a is not None else None,
        "limit_kw": limit.limit_kw,
        "start": limit.start.isoformat(),
        "end": limit.end.isoformat() if limit.end is not None else None,
        "reason": limit.reason,
    }
