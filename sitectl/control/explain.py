"""Why a vehicle gets less than it could take, in words and in data (issue #19.2).

The optimizer names the limits that hold each session on step 0 (`optimizer.binding`: tight
nodes with their LP duals, the 6 A rule, a deferral to a later step, ...). This module turns
them into the operator's terms with what only sitectl knows (the cycle's `Built` snapshot, the
overrides, the chargers' memory), as a list of plain dicts, ``limited_by``, per session:

- **Who is "limited".** A session whose dispatched current (its floor included) is below the
  least of its connector's maximum and the vehicle's stated maximum gets at least one reason;
  one at that current gets none, but one at the vehicle's stated maximum below the
  connector's gets ``vehicle_max`` (the answer to "why 16 A on a 32 A charger?"). What
  lowered its maximum below the connector's (a learnt vehicle cap, the CSMS's profile, the
  closed loop's "applies less") is a reason of its own.
- **A tight node** becomes ``circuit`` (a circuit or the grid connection, per phase: its limit,
  measured current where trusted, planned current — non-EV, fixed loads and EV — and
  headroom), ``charger`` (a charger's own maximum shared by its connectors), ``site_kw`` /
  ``kw`` (a kW limit); each names the other sessions drawing through it (``shared_with``),
  and ``priority`` names those of them with a higher priority. When a limit window sets the
  node's limit (`optimizer.binding` Rule 2b), the item carries its ``source``, ``reason`` and
  ``until``. Under it, sitectl adds what made the node full: the window itself — an operator
  ``override`` or a ``grid_limit`` (OpenADR, §14a...: source, reason, until) — a
  ``fixed_load`` (a neighbour
  sitectl cannot steer, budgeted at its maximum or at what it holds, and why), a
  ``meter_failed`` circuit on its fail-safe budget.
- ``soft_limit``: a soft limit window tight on its path, kept to because no departure needs
  more (exceeding it is priced, `optimizer._soft`).
- **Otherwise**: ``min_current`` (paused: less than its minimum left), ``tariff`` (deferred to
  a cheaper later step: "deferred to 01:00, cheaper") or ``deferred`` (the plan charges it
  later at the same price), ``peak`` (demand charge), ``pause_dwell`` (it sits out its minimum
  pause), ``need`` (it wants no more), ``blocked``, ``departed``, ``unexplained`` (not
  expected).
- When the fallback answered, the holds follow its rule (fill in order until a node runs out)
  and the texts say so.

Each item has ``kind``, ``node``, ``text`` and ``short`` (a text without numbers that move
every cycle: the MQTT message carries that, so it is republished only when the reason changes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from optimizer import binding as b
from optimizer.allocation import Allocation
from sitectl.config import GRID
from sitectl.control.memory import ChargerMemory
from sitectl.control.snapshot import Built, ProblemBuilder
from sitectl.limits import OPERATOR_PREFIX, GridLimit
from sitectl.state import SiteState

__all__ = ["Explainer", "explain", "mqtt_brief"]

#: A dispatch this close to what the vehicle and charger could take is not limited (A).
LIMITED_TOL_A = 0.05
#: Fixed loads named per tight node (the largest budgets).
FIXED_MAX = 4
_CHARGER_PREFIX = "charger:"

log = logging.getLogger(__name__)


def _phase_name(phase: int | None) -> str | None:
    return None if phase is None else f"L{phase + 1}"


def _r(value: float | None, digits: int = 1) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits) + 0.0


def _node_words(node: str) -> str:
    if node == GRID:
        return "the grid connection"
    if node.startswith(_CHARGER_PREFIX):
        return f"charger {node.removeprefix(_CHARGER_PREFIX)}"
    return node


class _Context:
    """What the texts need besides the holds, gathered once per cycle."""

    def __init__(
        self,
        built: Built,
        allocation: Allocation,
        state: SiteState,
        memory: Mapping[str, ChargerMemory],
        builder: ProblemBuilder,
        now: datetime,
        now_mono: float,
    ) -> None:
        self.built, self.allocation, self.state = built, allocation, state
        self.memory, self.builder, self.now, self.now_mono = memory, builder, now, now_mono
        problem = built.problem
        self.zone: ZoneInfo = builder.horizon.zone
        self.sessions = {s.id: s for s in problem.sessions}
        self.dispatch = allocation.dispatch_a
        self.prices = problem.prices
        durations = problem.durations_s
        self.step_start = [now]
        for d in durations[:-1].tolist():
            self.step_start.append(self.step_start[-1] + timedelta(seconds=d))
        self.fallback = allocation.method == "fallback"
        self.deferred: dict[int, dict[str, Any]] = {}  # step -> its item (texts made once)
        self.context: dict[tuple, list[dict[str, Any]]] = {}  # tight node -> what is behind it

    def current(self, session_id: str) -> float:
        return self.dispatch.get(session_id, 0.0) + self.built.floors.get(session_id, 0.0)

    def local(self, moment: datetime) -> str:
        return moment.astimezone(self.zone).strftime("%H:%M")

    def charger_of(self, session_id: str) -> str:
        return self.built.sessions[session_id][0]

    def under(self, node: str) -> set[str]:
        """Circuits at or below ``node`` (a charger node: none)."""
        if node.startswith(_CHARGER_PREFIX):
            return set()
        found = {node}
        stack = [node]
        while stack:
            for child in self.builder.children.get(stack.pop(), []):
                found.add(child)
                stack.append(child)
        return found

    def chargers_under(self, node: str) -> list[str]:
        if node.startswith(_CHARGER_PREFIX):
            return [node.removeprefix(_CHARGER_PREFIX)]
        circuits = self.under(node)
        return [c.id for c in self.builder.config.chargers if c.circuit in circuits]


def _why_fixed(ctx: _Context, charger_id: str) -> str:
    mem = ctx.memory.get(charger_id)
    charger = ctx.state.chargers.get(charger_id)
    if mem is None or charger is None:
        return "not steered"
    if mem.noncompliant:
        return "non-compliant (draws above its limit): budgeted at its maximum"
    if mem.uncontrollable:
        return "refuses charging profiles: budgeted at its maximum"
    if mem.applied_above_a is not None:
        return "applies more than its limit (its composite schedule): budgeted at that"
    if mem.unavailable:
        return "installing firmware: budgeted at its draw or the limit it holds"
    if not charger.connected:
        return "offline: budgeted at the limit it may still hold"
    return "not yet holding sitectl's fail-safe: budgeted at what it may hold"


def _window(ctx: _Context, hold: b.Hold) -> GridLimit | None:
    """The limit window that sets the hold's limit (`Hold.cap`), if a window does."""
    caps = ctx.built.caps
    return caps[hold.cap] if hold.cap is not None and 0 <= hold.cap < len(caps) else None


def _window_fields(ctx: _Context, window: GridLimit) -> dict[str, Any]:
    """Whose limit it is: source, reason, until (also on the tight item itself)."""
    return {
        "source": window.source,
        "reason": window.reason or None,
        "until": window.end.isoformat() if window.end is not None else None,
        "hard": window.hard,
    }


def _window_item(ctx: _Context, node: str, phase: int | None, window: GridLimit) -> dict:
    """The window behind a tight node: ``override`` (an operator's) or ``grid_limit``."""
    operator = window.source.startswith(OPERATOR_PREFIX)
    kind = "override" if operator else "grid_limit"
    if phase is None:
        value, unit = window.limit_kw, "kW"
        configured = ctx.builder.kw_limits.get(node)
    else:
        value, unit = (window.limit_a or (math.nan,) * 3)[phase], "A"
        rating = ctx.builder.limits.get(node)
        configured = rating[phase] if rating is not None else None
    until = ctx.local(window.end) if window.end is not None else None
    until_words = f" until {until}" if until else " until withdrawn"
    where = _node_words(node) + ("" if phase is None else f" {_phase_name(phase)}")
    who = window.reason or window.source
    lowers = (
        f"from {configured:g} {unit} to {value:g} {unit}"
        if configured is not None and value is not None
        else f"to {value:g} {unit}"
    )
    if operator:
        text = f"an override ({window.source}) lowers {where} {lowers}{until_words}"
        short = f"override ({window.source}) to {value:g} {unit}{until_words}"
    else:
        text = f"{who} ({window.source}) lowers {where} {lowers}{until_words}"
        short = f"grid limit {window.source} to {value:g} {unit}{until_words}"
    return {
        "kind": kind,
        "node": node,
        "phase": _phase_name(phase),
        "unit": unit,
        "limit": _r(value),
        "configured": _r(configured),
        **_window_fields(ctx, window),
        "text": text,
        "short": short,
    }


def _context_items(
    ctx: _Context, node: str, phase: int | None, window: GridLimit | None
) -> list[dict]:
    """What made a tight node full: a limit window (an override), fixed loads, a failed
    meter."""
    items: list[dict[str, Any]] = []
    if window is not None:
        items.append(_window_item(ctx, node, phase, window))
    found = []
    chargers = ctx.chargers_under(node)
    for table, why in ((ctx.built.fixed, None), (ctx.built.overdraw, "over")):
        for charger_id in chargers:
            phases = table.get(charger_id)
            if not phases:
                continue
            amps = phases[phase] if phase is not None else sum(phases)
            if amps > 0:
                reason = (
                    "draws above its new limit (ramping down): the excess is budgeted"
                    if why
                    else _why_fixed(ctx, charger_id)
                )
                found.append((amps, charger_id, reason))
    for amps, charger_id, reason in sorted(found, reverse=True)[:FIXED_MAX]:
        items.append(
            {
                "kind": "fixed_load",
                "node": node,
                "phase": _phase_name(phase),
                "charger": charger_id,
                "budget_a": _r(amps),
                "text": f"charger {charger_id} takes {amps:.1f} A of it: {reason}",
                "short": f"{charger_id} {reason.split(':')[0]}",
            }
        )
    for circuit in sorted(ctx.under(node)):
        device = ctx.builder.meters.get(circuit)
        if device is None or circuit in ctx.built.measured:
            continue
        budget = ctx.built.non_ev.get(circuit, (0.0, 0.0, 0.0))
        amps = budget[phase] if phase is not None else sum(budget)
        items.append(
            {
                "kind": "meter_failed",
                "node": circuit,
                "phase": _phase_name(phase),
                "budget_a": _r(amps),
                "text": f"the meter of {_node_words(circuit)} is not trusted: its non-EV load "
                f"is budgeted at {amps:.1f} A (fail-safe budget)",
                "short": f"meter of {circuit} not trusted: fail-safe budget",
            }
        )
    return items


def _tight_items(ctx: _Context, session_id: str, hold: b.Hold) -> list[dict]:
    """A tight node (or the node a paused session found too full) and what is behind it."""
    node = hold.node or GRID
    kw = hold.phase is None
    unit = "kW" if kw else "A"
    if hold.kind == b.MIN_CURRENT:
        kind = "min_current"
    elif kw:
        kind = "site_kw" if node == GRID else "kw"
    else:
        kind = "charger" if node.startswith(_CHARGER_PREFIX) else "circuit"
    phases = [_phase_name(p) for p in (hold.phases or (() if kw else (hold.phase,)))]
    where = _node_words(node) + ("" if kw else " " + ", ".join(phases))
    planned = hold.load + hold.ev
    measured = None
    if not kw and node in ctx.built.measured:
        measured = ctx.built.measured[node][hold.phase or 0]
    shared = [{"session": other, "current_a": _r(ctx.current(other))} for other in hold.sharing]
    more = hold.sharing_n - len(shared)
    names = ", ".join(f"{s['session']} ({s['current_a']:g} A)" for s in shared)
    if more > 0:
        names += f" and {more} more"
    if kind == "min_current":
        session = ctx.sessions[session_id]
        text = (
            f"paused: {where} has {max(hold.room, 0.0):.1f} {unit} left, below its minimum "
            f"{session.min_a:g} A (IEC 61851-1)"
        )
        short = f"paused: {where} below its minimum {session.min_a:g} A"
    else:
        what = "the site kW limit" if kind == "site_kw" else f"{where}'s limit"
        text = (
            f"{what} holds it: limit {hold.limit:.1f} {unit}, planned {planned:.1f} {unit} "
            f"(other load {hold.load:.1f}, vehicles {hold.ev:.1f})"
        )
        if measured is not None:
            text += f", measured {measured:.1f} A"
        short = f"{where} at its limit {hold.limit:g} {unit}"
        if ctx.fallback:
            text += "; the fallback (by priority, then least laxity) ran out there"
    if names:
        text += f"; shared with {names}"
        short += f", shared with {hold.sharing_n} other" + ("s" if hold.sharing_n > 1 else "")
    item: dict[str, Any] = {
        "kind": kind,
        "node": node.removeprefix(_CHARGER_PREFIX),
        "phase": _phase_name(hold.phase),
        "phases": phases,
        "unit": unit,
        "limit": _r(hold.limit),
        "measured": _r(measured),
        "planned": _r(planned),
        "headroom": _r(hold.limit - planned),
        "shared_with": shared,
        "dual": _r(hold.dual, 6),
        "text": text,
        "short": short,
    }
    items = [item]
    mine = ctx.sessions[session_id].priority
    above = [other for other in hold.sharing if ctx.sessions[other].priority > mine]
    if above and kind != "min_current":
        items.append(
            {
                "kind": "priority",
                "node": item["node"],
                "phase": item["phase"],
                "sessions": above,
                "text": f"{', '.join(above)} ha{'s' if len(above) == 1 else 've'} a higher "
                f"priority on {where}",
                "short": f"higher priority: {', '.join(above)}",
            }
        )
    window = _window(ctx, hold)
    if window is not None:
        item.update(_window_fields(ctx, window))
        until = f" until {ctx.local(window.end)}" if window.end is not None else ""
        item["text"] += f"; the limit is {window.source}'s{until}"
        if window.reason:
            item["text"] += f" ({window.reason})"
    key = (node, hold.phase, hold.cap)
    context = ctx.context.get(key)
    if context is None:  # the same for every session under the node
        context = ctx.context[key] = _context_items(ctx, node, hold.phase, window)
    return items + context


def _soft_item(ctx: _Context, hold: b.Hold) -> dict[str, Any]:
    """Held at a soft limit: the plan keeps to it rather than pay to exceed it."""
    node = hold.node or GRID
    kw = hold.phase is None
    unit = "kW" if kw else "A"
    where = _node_words(node) + ("" if kw else f" {_phase_name(hold.phase)}")
    window = _window(ctx, hold)
    source = window.source if window is not None else "a soft limit"
    until = f" until {ctx.local(window.end)}" if window is not None and window.end else ""
    item: dict[str, Any] = {
        "kind": "soft_limit",
        "node": node.removeprefix(_CHARGER_PREFIX),
        "phase": _phase_name(hold.phase),
        "unit": unit,
        "limit": _r(hold.limit),
        "planned": _r(hold.load + hold.ev),
        "headroom": _r(hold.room),
        "text": f"{where} is at the soft limit {hold.limit:.1f} {unit} of {source}{until}: "
        "the plan keeps to it, as no departure needs more",
        "short": f"soft limit {source} on {where}{until}",
    }
    if window is not None:
        item.update(_window_fields(ctx, window))
        if window.reason:
            item["text"] += f" ({window.reason})"
    return item


def _deferred_item(ctx: _Context, hold: b.Hold) -> dict[str, Any]:
    step = hold.step or 0
    cached = ctx.deferred.get(step)
    if cached is not None:  # many vehicles wait for the same cheap hour
        return {**cached, "dual": _r(hold.dual, 6)}
    at = ctx.step_start[step] if step < len(ctx.step_start) else ctx.now
    when = ctx.local(at)
    prices = ctx.prices
    now_price = float(prices[0]) if prices.size else 0.0
    then_price = float(prices[step]) if prices.size > step else now_price
    cheaper = then_price < now_price - 1e-9
    item = {
        "kind": "tariff" if cheaper else "deferred",
        "node": None,
        "at": at.isoformat(),
        "step": step,
        "price_now": _r(now_price, 4),
        "price_then": _r(then_price, 4),
        "dual": _r(hold.dual, 6),
    }
    if cheaper:
        item["text"] = (
            f"deferred to {when}, cheaper ({then_price:g} instead of {now_price:g} per kWh)"
        )
        item["short"] = f"deferred to {when}, cheaper"
    else:
        item["text"] = f"deferred to {when}: the plan charges it later at no higher price"
        item["short"] = f"deferred to {when}"
    ctx.deferred[step] = item
    return item


def _simple(kind: str, text: str, short: str | None = None) -> dict[str, Any]:
    return {"kind": kind, "node": None, "text": text, "short": short or text}


def _session_items(
    ctx: _Context, session_id: str, holds: tuple[b.Hold, ...]
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    session = ctx.sessions[session_id]
    for hold in holds:
        if hold.kind in (b.PHASE, b.KW, b.MIN_CURRENT):
            items += _tight_items(ctx, session_id, hold)
        elif hold.kind == b.SOFT:
            items.append(_soft_item(ctx, hold))
        elif hold.kind == b.DEFERRED:
            items.append(_deferred_item(ctx, hold))
        elif hold.kind == b.PEAK:
            tariff = ctx.built.problem.tariff
            items.append(
                {
                    "kind": "peak",
                    "node": hold.node or GRID,
                    "unit": "kW",
                    "limit": _r(hold.limit),
                    "demand_charge": _r(tariff.demand_charge_per_kw, 4),
                    "text": f"held at the peak so far ({hold.limit:g} kW): more would raise the "
                    f"demand charge ({tariff.demand_charge_per_kw:g} per kW)",
                    "short": "held at the peak so far (demand charge)",
                }
            )
        elif hold.kind == b.NEED:
            charger_id, connector = ctx.built.sessions[session_id]
            mem = ctx.memory.get(charger_id)
            paused_at = mem.paused_since.get(connector) if mem is not None else None
            dwell = ctx.builder.control.min_pause_s
            if session.energy_kwh <= 0 and paused_at is not None and dwell > 0:
                until = ctx.now + timedelta(seconds=max(0.0, paused_at + dwell - ctx.now_mono))
                items.append(
                    _simple(
                        "pause_dwell",
                        f"held paused for its minimum pause ({dwell:g} s) until {ctx.local(until)}",
                        "held paused for its minimum pause",
                    )
                )
            else:
                items.append(_simple("need", "its need is met at this current"))
        elif hold.kind == b.BLOCKED:
            items.append(
                _simple("blocked", "cannot charge: its maximum is below its minimum current")
            )
        elif hold.kind == b.DEPARTED:
            items.append(_simple("departed", "its departure has passed: it gets nothing"))
        elif hold.kind == b.NOT_ARRIVED:
            items.append(_simple("not_arrived", "not plugged in yet"))
        else:
            items.append(_simple("unexplained", "no limit found (please report)"))
    return items


_MAX_WORDS = {
    "vehicle": ("vehicle_max", "the vehicle's stated maximum"),
    "ev_cap": ("ev_cap", "what the vehicle was seen to draw (learnt cap)"),
    "csms": ("csms", "the CSMS's charging profile"),
    "applied": ("applied", "the charger applies less than its limit (closed loop)"),
}


def _max_items(ctx: _Context, session_id: str) -> list[dict[str, Any]]:
    """What lowered the session's maximum below its connector's (it is at that maximum)."""
    info = ctx.built.info.get(session_id)
    if info is None or not info.max_by:
        return []
    connector = info.max_by[0][1]
    lowest = min(amps for _, amps in info.max_by)
    items = []
    for source, amps in info.max_by[1:]:
        if amps > lowest + 1e-6 or amps >= connector - 1e-6:
            continue
        kind, words = _MAX_WORDS.get(source, (source, source))
        items.append(
            {
                "kind": kind,
                "node": ctx.charger_of(session_id),
                "limit": _r(amps),
                "connector_max": _r(connector),
                "text": f"{words}: {amps:g} A (the connector takes {connector:g} A)",
                "short": f"{words.split(' (')[0]}: {amps:g} A",
            }
        )
    return items


def _vehicle_max_item(ctx: _Context, session_id: str, info: Any) -> dict[str, Any] | None:
    """``vehicle_max`` for a session held at its vehicle's stated maximum (2.0.1 charging
    needs), when that is below the connector's maximum and the lowest of its maxima."""
    if not info.max_by:
        return None
    connector = info.max_by[0][1]
    stated = [amps for source, amps in info.max_by if source == "vehicle"]
    lowest = min(amps for _, amps in info.max_by)
    if not stated or stated[0] >= connector - LIMITED_TOL_A or stated[0] > lowest + 1e-6:
        return None
    if ctx.current(session_id) < LIMITED_TOL_A:
        return None  # paused or done: not at its maximum
    amps = stated[0]
    kind, words = _MAX_WORDS["vehicle"]
    return {
        "kind": kind,
        "node": ctx.charger_of(session_id),
        "limit": _r(amps),
        "connector_max": _r(connector),
        "text": f"{words}: {amps:g} A (the connector takes {connector:g} A)",
        "short": f"{words}: {amps:g} A",
    }


def explain(
    built: Built,
    allocation: Allocation,
    *,
    state: SiteState,
    memory: Mapping[str, ChargerMemory],
    builder: ProblemBuilder,
    now: datetime,
    now_mono: float,
) -> dict[str, tuple[dict[str, Any], ...]]:
    """``limited_by`` for every session of the cycle that is limited (see the module rules).

    Args:
        built: the cycle's snapshot; allocation: its answer (``binding`` is computed here when
            the answer has none, e.g. the fallback's).
        state, memory, builder: the loop's (overrides, why a charger is a fixed load).
        now, now_mono: the cycle's clocks.

    Returns:
        Session id -> its reasons; sessions that are not limited are absent.
    """
    problem = built.problem
    found = allocation.binding or b.step0_binding(problem, allocation)
    ctx = _Context(built, allocation, state, memory, builder, now, now_mono)
    out: dict[str, tuple[dict[str, Any], ...]] = {}
    for session in problem.sessions:
        sid = session.id
        info = built.info.get(sid)
        could = session.max_a + built.floors.get(sid, 0.0)
        if info is not None and info.max_by:
            connector = info.max_by[0][1]
            vehicle = [a for s, a in info.max_by if s == "vehicle"]
            could = min([connector, *vehicle])
        if ctx.current(sid) >= could - LIMITED_TOL_A:
            # At the vehicle's stated maximum, below the connector's: not limited by sitectl,
            # but "why 16 A on a 32 A charger?" has an answer, the vehicle's own.
            vehicle_max = _vehicle_max_item(ctx, sid, info) if info is not None else None
            if vehicle_max is not None:
                out[sid] = (vehicle_max,)
            continue
        holds = found.holds.get(sid, ())
        items = _session_items(ctx, sid, holds) if holds else []
        if not holds or any(h.kind == b.BLOCKED for h in holds):
            items = _max_items(ctx, sid) + items  # at a maximum lower than the connector's
        if not items:
            items = [_simple("unexplained", "no limit found (please report)")]
        out[sid] = tuple(items)
    return out


def mqtt_brief(limited_by: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """The few fields the MQTT charger message carries per reason."""
    return [
        {"kind": item["kind"], "node": item.get("node"), "text": item["short"]}
        for item in limited_by
    ]


class Explainer:
    """Runs `explain` every cycle and tells the uplink when a session's reasons change.

    Args:
        state: the site state (``notify("plan", key)`` republishes the charger).
    """

    def __init__(self, state: SiteState) -> None:
        self.state = state
        self._briefs: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, built: Built, allocation: Allocation, **kwargs: Any) -> dict:
        """`explain`, never raising (reasons are for people: a failure costs only them)."""
        try:
            found = explain(built, allocation, state=self.state, **kwargs)
        except Exception:
            log.exception("limit explanations failed this cycle")
            return {}
        keys = set(self._briefs) | {s.id for s in built.problem.sessions}
        for key in keys:
            brief = mqtt_brief(found.get(key, ()))
            if self._briefs.get(key, []) != brief:
                if brief:
                    self._briefs[key] = brief
                else:
                    self._briefs.pop(key, None)
                self.state.notify("plan", key)
        return found
