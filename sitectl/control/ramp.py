"""A ramp-down in progress is not a reason to pause anyone (issue #17, bench level_zero_only).

A charger that was just lowered still draws above its new limit for a few seconds; the problem
builder budgets that excess (`ProblemBuilder._ramping`), so the headroom it frees is not given
to another vehicle before it is free ("decreases first" by currents). But when a building peak
arrives, the excess of every charger still coming down can make the *minimum* currents look
infeasible for a cycle: the LP then pauses a vehicle — which frees nothing sooner (its current
falls at the same rate towards 0 as towards its minimum) and costs a pause and a resume, which
some vehicles do not survive.

So where the minimum currents (plus every other load) exceed a node's limit only because of
ramp excess under it, that excess is lifted off the node to its parent, just enough to fit:
the node then has no headroom left (nothing can be increased under it), and every node above
still budgets the whole excess (nothing elsewhere is increased into it either). At the grid
connection it is dropped: the steady state fits; the transient is the ramp itself.

Only ramp excess is lifted (a charger lowered within its hold time, `ProblemBuilder.
ramp_hold_s`): a charger that keeps drawing above its limit is non-compliant after the grace and
budgeted at its maximum; a real overload still pauses what it must.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from optimizer.problem import Load, Session

__all__ = ["relieve_ramps"]

Phases = tuple[float, float, float]

#: Amps below which a deficit or a placement counts as nothing.
EPSILON_A = 1e-6


def relieve_ramps(
    loads: list[Load],
    sessions: Iterable[Session],
    limits: Mapping[str, Phases],
    parent: Mapping[str, str | None],
    transient: set[str],
    floored: set[str] = frozenset(),  # type: ignore[assignment]
    kw_limits: Mapping[str, float] | None = None,
    voltage_v: float = 230.0,
) -> list[Load]:
    """`loads` with the ramp excess (loads named in `transient`) lifted where it alone
    would pause vehicles.

    Args:
        loads: this cycle's loads (constant over the horizon, as the builder makes them).
        sessions: this cycle's sessions; those that will charge now count with their minimum.
        limits: per-phase limits of the circuit nodes (grid included; charger nodes absent).
        parent: each node's parent (charger nodes included; the grid's is None).
        transient: ids of the loads that are ramp excess.
        floored: session ids already held at a minimum by a load of their own.
        kw_limits: the nodes' kW limits on step 0 (``U · Σ I`` over their phases, like the
            optimizer's kW rows), where they have one.
        voltage_v: the voltage the optimizer turns currents into power with.

    `limits` and `kw_limits` are what holds on step 0: the ratings lowered by the hard limit
    windows in force (a grid operator's limit, a connection's fail-safe, §14a dimming). A
    window is exactly when every charger is lowered at once: left out, the excess of all of
    them would pause every vehicle (each then stops and starts again).
    """
    if not transient or not loads:
        return loads
    paths: dict[str, list[str]] = {}

    def path(node: str) -> list[str]:
        found = paths.get(node)
        if found is None:
            found, seen = [], node
            while seen is not None and seen not in found:
                found.append(seen)
                seen = parent.get(seen)
            paths[node] = found
        return found

    demand = {node: [0.0, 0.0, 0.0] for node in limits}

    def add(node: str, k: int, amps: float) -> None:
        for above in path(node):
            if above in demand:
                demand[above][k] += amps

    placed: dict[str, dict[str, list[float]]] = {}
    home: dict[str, str] = {}
    for load in loads:
        now = [load.current_a[k][0] for k in range(3)]
        if load.id in transient:
            placed[load.id] = {load.node: list(now)}
            home[load.id] = load.node
        for k in range(3):
            add(load.node, k, now[k])
    for session in sessions:
        if (
            session.arrival_step == 0
            and session.departure_step > 0
            and session.energy_kwh > 0
            and session.id not in floored
        ):
            for k in session.phases:
                add(session.node, k, session.min_a)
    lifted = False

    def lift(node: str, k: int, deficit: float) -> float:
        """Lift up to `deficit` A of ramp excess on phase k off `node`; return what is left."""
        nonlocal lifted
        up = parent.get(node)
        for by_node in sorted(placed.values(), key=lambda b: -sum(a[k] for a in b.values())):
            for at, amps in list(by_node.items()):
                if deficit <= EPSILON_A:
                    return deficit
                if amps[k] <= EPSILON_A or node not in path(at):
                    continue
                take = min(amps[k], deficit)
                amps[k] -= take
                deficit -= take
                lifted = True
                for below in path(at):  # from where it was up to this node
                    if below in demand:
                        demand[below][k] -= take
                    if below == node:
                        break
                if up is not None:
                    by_node.setdefault(up, [0.0, 0.0, 0.0])[k] += take
        return deficit

    kw_limits = kw_limits or {}
    for node in sorted(limits, key=lambda n: -len(path(n))):  # deepest first
        for k in range(3):
            deficit = demand[node][k] - limits[node][k]
            if deficit > EPSILON_A:
                lift(node, k, deficit)
        if kw_limits.get(node) is not None:
            # Its kW row: Σ over phases, so any phase's excess counts; the largest first.
            deficit = sum(demand[node]) - kw_limits[node] * 1000.0 / voltage_v
            for k in sorted(range(3), key=lambda k: -demand[node][k]):
                if deficit <= EPSILON_A:
                    break
                deficit = lift(node, k, deficit)
    if not lifted:
        return loads
    steps = len(loads[0].current_a[0])
    out = [load for load in loads if load.id not in placed]
    for load_id, by_node in placed.items():
        for at, amps in by_node.items():
            if any(a > EPSILON_A for a in amps):
                name = load_id if at == home[load_id] else f"{load_id}@{at}"
                out.append(
                    Load(name, at, (((amps[0],) * steps), (amps[1],) * steps, (amps[2],) * steps))
                )
    return out
