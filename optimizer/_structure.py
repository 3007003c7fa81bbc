"""The LP's shape for one site: which circuit limits become rows and which only column bounds.

The circuit tree of a :class:`~optimizer.problem.Problem` is rewritten into *groups* before any
row is made, so the model grows with what can constrain, not with the number of nodes:

* **Chains collapse.** Nodes with the same slots below them (a node whose only content is one
  child, e.g. a grid connection with a single transformer) form one group; its headroom is the
  least of its members' on every phase and step, its kW headroom the least of its kW members'.
  A node with no slot below it constrains no EV current and has no group.
* **One slot: a column bound.** A group with a single slot below it (a one-connector charger
  node, a circuit with one charger) is a bound on that slot's ``i`` columns: ``i[s,t] ≤
  min over its phases of the headroom`` and ``n_phases · i ≤ kW headroom``. No row, no column.
* **Several slots: rows.** One row per phase and step, either *direct* (``Σ i of every slot
  below ≤ headroom``; for groups with few terms, e.g. a twin-connector charger) or *aggregated*
  (a flow column ``f[g,p,t] ≤ headroom`` and the row ``Σ terms − f ≤ 0``, so the terms above
  see one ``f`` instead of every slot again; for groups with ``AGGREGATE_MIN`` terms or more,
  groups with a kW limit — one row ``Σ_p f ≤ kW headroom`` per step — and always the root,
  whose ``f`` also carries the peak rows). A slot's column enters the rows of every direct group
  above it up to and including the first aggregated one; an aggregated group's ``f`` does the
  same from its parent up.
* **Rows that can never bind are left out.** A group is *pruned* when what its children can
  draw at most (a bound group's headroom; a row group's, capped by its children's sum) never
  exceeds its own headroom on any phase and step: its limit follows from theirs. A slot
  attached directly to a group can draw anything (the group is its only bound), so such a group
  is never pruned, nor is one with a kW limit. Headroom moves with the non-EV load, so the
  check runs again every cycle (:func:`unpruned`); a pruned group that could now bind is kept
  from then on (the model is rebuilt with its rows, and the basis carried over).
* **Soft caps need a flow.** A group with a soft-capped member is aggregated whatever its
  size (even with one slot): its soft rows (`optimizer._soft`) are on its ``f``.

Everything structural is decided here from the tree, the slots and the headroom at build time;
per-cycle numbers (bounds, costs, row bounds) are filled by :mod:`optimizer.lp`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AGG", "AGGREGATE_MIN", "BOUND", "DIRECT", "PRUNED", "Structure", "build", "unpruned"]

#: Group kinds.
BOUND, DIRECT, AGG, PRUNED = 0, 1, 2, 3
#: A multi-slot group with this many terms (slots and aggregated groups below it, counted once
#: per phase row) or more gets a flow column: below it, repeating its terms in the rows above
#: costs fewer matrix entries than a column and its coupling.
AGGREGATE_MIN = 8
#: Tolerance (A) of the "can never bind" test.
_TOL_A = 1e-9


@dataclass(frozen=True, slots=True, eq=False)
class Structure:
    """The groups of one site and the rows and columns they own (see the module docstring).

    ``G`` groups, ``S`` slots, ``T`` steps; group 0 is the root group.
    """

    T: int
    group_of_node: np.ndarray  # (M,) group of each node, -1 for a node without slots below
    node_order: np.ndarray  # node positions sorted by group (nodes with a group only)
    group_starts: np.ndarray  # (G,) start of each group's members in node_order
    parent: np.ndarray  # (G,) parent group, -1 for the root group
    kind: np.ndarray  # (G,) BOUND, DIRECT, AGG or PRUNED
    has_kw: np.ndarray  # (G,) bool: a member has a kW limit
    direct_slots: np.ndarray  # (G,) slots attached to a member node
    key: tuple[str, ...]  # (G,) id of the group's top node: its name across rebuilds
    levels: tuple[np.ndarray, ...]  # groups by depth, deepest last
    slot_group: np.ndarray  # (S,) group of the slot's node
    slot_bound: np.ndarray  # (S,) the slot's BOUND group, -1 if none
    slot_rows: tuple[tuple[int, ...], ...]  # (S,) row groups its column enters
    agg_rows: dict[int, tuple[int, ...]]  # aggregated group (not root) -> row groups of its f
    row_groups: np.ndarray  # groups with 3·T rows (DIRECT and AGG), in row order
    row_pos: np.ndarray  # (G,) position in row_groups, -1 if none
    aggs: np.ndarray  # AGG groups, in f-column order (the root first)
    agg_pos: np.ndarray  # (G,) position in aggs, -1 if none
    kw_groups: np.ndarray  # AGG groups with a kW row, in row order
    kw_pos: np.ndarray  # (G,) position in kw_groups, -1 if none
    soft_groups: np.ndarray  # AGG groups with soft rows (`optimizer._soft`), in block order
    soft_pos: np.ndarray  # (G,) position in soft_groups, -1 if none

    @property
    def G(self) -> int:
        return len(self.parent)

    def headroom(self, headroom_a: np.ndarray) -> np.ndarray:
        """Per group the least headroom of its members, shape ``(G, 3, T)``."""
        return np.minimum.reduceat(headroom_a[self.node_order], self.group_starts, axis=0)

    def kw_headroom(self, kw_nodes: np.ndarray, headroom_sum_a: np.ndarray) -> np.ndarray:
        """Per group the least kW headroom (Σ phase A) of its kW members, ``(G, T)``; inf if
        none."""
        per_node = np.full((len(self.group_of_node), self.T), np.inf)
        if len(kw_nodes):
            per_node[kw_nodes] = headroom_sum_a
        return np.minimum.reduceat(per_node[self.node_order], self.group_starts, axis=0)


def _caps(
    parent: np.ndarray,
    levels: tuple[np.ndarray, ...],
    direct_slots: np.ndarray,
    nslots: np.ndarray,
    hr: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Bottom-up: what each group's children can draw at most (``below``), and the group's own
    cap ``min(headroom, below)``; a group with slots attached directly can draw anything."""
    below = np.zeros_like(hr)
    below[direct_slots > 0] = np.inf
    cap = np.empty_like(hr)
    for level in reversed(levels):
        single = nslots[level] == 1
        cap[level] = np.where(single[:, None, None], hr[level], np.minimum(hr[level], below[level]))
        up = parent[level]
        inner = up >= 0
        np.add.at(below, up[inner], cap[level[inner]])
    return below, cap


def build(
    parents: list[int],
    slot_node: np.ndarray,
    kw_node: np.ndarray,
    headroom_a: np.ndarray,
    keep: frozenset[str],
    node_ids: list[str],
    soft_node: np.ndarray | None = None,
) -> Structure:
    """Group the tree and decide every group's kind.

    Args:
        parents: Parent position of every node, -1 for the root.
        slot_node: Node position of every slot (slot order = column-block order).
        kw_node: Per node, whether it has a kW limit.
        headroom_a: EV headroom per node, phase and step, ``(M, 3, T)``, for the pruning test.
        keep: Group keys never to prune (they could bind in an earlier cycle).
        node_ids: Node ids, for the group keys.
        soft_node: Per node, whether it has soft rows (a soft cap, now or before).

    Returns:
        The structure.
    """
    M = len(parents)
    T = headroom_a.shape[2]
    S = len(slot_node)
    children: list[list[int]] = [[] for _ in range(M)]
    root = parents.index(-1)
    for n, p in enumerate(parents):
        if p >= 0:
            children[p].append(n)
    direct = np.bincount(slot_node, minlength=M) if S else np.zeros(M, dtype=np.int64)
    # Top-down order, then slots below each node bottom-up.
    order = [root]
    for n in order:
        order.extend(children[n])
    under = direct.astype(np.int64).copy()
    for n in reversed(order):
        if parents[n] >= 0:
            under[parents[n]] += under[n]
    # Groups top-down: a child with all its parent's slots (the parent has none of its own and
    # no other child with slots) joins the parent's group.
    group_of_node = np.full(M, -1, dtype=np.intp)
    g_parent: list[int] = []
    g_key: list[str] = []
    g_depth: list[int] = []
    for n in order:
        if under[n] == 0 and n != root:
            continue
        p = parents[n]
        if p >= 0 and under[n] == under[p]:
            group_of_node[n] = group_of_node[p]
            continue
        group_of_node[n] = len(g_parent)
        g_parent.append(-1 if p < 0 else int(group_of_node[p]))
        g_key.append(node_ids[n])
        g_depth.append(0 if p < 0 else g_depth[group_of_node[p]] + 1)
    G = len(g_parent)
    parent = np.array(g_parent, dtype=np.intp)
    depth = np.array(g_depth, dtype=np.intp)
    levels = tuple(np.flatnonzero(depth == d) for d in range(int(depth.max()) + 1))
    grouped = np.flatnonzero(group_of_node >= 0)
    node_order = grouped[np.argsort(group_of_node[grouped], kind="stable")]
    group_starts = np.searchsorted(group_of_node[node_order], np.arange(G))
    nslots = np.zeros(G, dtype=np.int64)
    np.maximum.at(nslots, group_of_node[grouped], under[grouped])
    direct_slots = np.zeros(G, dtype=np.int64)
    np.add.at(direct_slots, group_of_node[grouped], direct[grouped])
    has_kw = np.zeros(G, dtype=bool)
    np.logical_or.at(has_kw, group_of_node[grouped], np.asarray(kw_node, dtype=bool)[grouped])
    has_soft = np.zeros(G, dtype=bool)
    if soft_node is not None:
        soft_mask = np.asarray(soft_node, dtype=bool)[grouped]
        np.logical_or.at(has_soft, group_of_node[grouped], soft_mask)

    hr = np.minimum.reduceat(headroom_a[node_order], group_starts, axis=0)
    below, _ = _caps(parent, levels, direct_slots, nslots, hr)
    never_binds = (below <= hr + _TOL_A).all(axis=(1, 2))

    # Kinds bottom-up (an aggregated child counts as one term of its parent).
    kind = np.full(G, DIRECT, dtype=np.int8)
    terms = direct_slots.astype(np.int64).copy()
    for level in reversed(levels):
        for g in level.tolist():
            if g == 0 or has_soft[g]:
                kind[g] = AGG
            elif nslots[g] == 1:
                kind[g] = BOUND
            elif has_kw[g]:
                kind[g] = AGG
            elif never_binds[g] and g_key[g] not in keep:
                kind[g] = PRUNED
            elif terms[g] >= AGGREGATE_MIN:
                kind[g] = AGG
            if g:
                terms[parent[g]] += 1 if kind[g] in (AGG, BOUND) else terms[g]

    memo: dict[int, tuple[int, ...]] = {}

    def rows_from(g: int) -> tuple[int, ...]:
        """Row groups from group g upward: the direct ones, up to the first aggregated one."""
        if g in memo:
            return memo[g]
        start = g
        found: list[int] = []
        while g >= 0:
            k = kind[g]
            if k == AGG:
                found.append(g)
                break
            if k == DIRECT:
                found.append(g)
            g = int(parent[g])
        memo[start] = tuple(found)
        return memo[start]

    slot_group = group_of_node[slot_node] if S else np.zeros(0, dtype=np.intp)
    slot_bound = np.where(kind[slot_group] == BOUND, slot_group, -1) if S else slot_group
    slot_rows = tuple(rows_from(int(g)) for g in slot_group.tolist())
    agg_rows = {g: rows_from(int(parent[g])) for g in range(G) if kind[g] == AGG and parent[g] >= 0}
    row_groups = np.flatnonzero((kind == DIRECT) | (kind == AGG))
    row_pos = np.full(G, -1, dtype=np.intp)
    row_pos[row_groups] = np.arange(len(row_groups))
    aggs = np.flatnonzero(kind == AGG)
    agg_pos = np.full(G, -1, dtype=np.intp)
    agg_pos[aggs] = np.arange(len(aggs))
    kw_groups = np.flatnonzero((kind == AGG) & has_kw)
    kw_pos = np.full(G, -1, dtype=np.intp)
    kw_pos[kw_groups] = np.arange(len(kw_groups))
    soft_groups = np.flatnonzero((kind == AGG) & has_soft)
    soft_pos = np.full(G, -1, dtype=np.intp)
    soft_pos[soft_groups] = np.arange(len(soft_groups))
    return Structure(
        T=T,
        group_of_node=group_of_node,
        node_order=node_order,
        group_starts=group_starts,
        parent=parent,
        kind=kind,
        has_kw=has_kw,
        direct_slots=direct_slots,
        key=tuple(g_key),
        levels=levels,
        slot_group=slot_group,
        slot_bound=slot_bound,
        slot_rows=slot_rows,
        agg_rows=agg_rows,
        row_groups=row_groups,
        row_pos=row_pos,
        aggs=aggs,
        agg_pos=agg_pos,
        kw_groups=kw_groups,
        kw_pos=kw_pos,
        soft_groups=soft_groups,
        soft_pos=soft_pos,
    )


def unpruned(structure: Structure, hr: np.ndarray) -> frozenset[str]:
    """Keys of pruned groups that could bind under this cycle's group headroom ``hr``."""
    pruned = np.flatnonzero(structure.kind == PRUNED)
    if pruned.size == 0:
        return frozenset()
    nslots = np.where(structure.kind == BOUND, 1, 2)  # only "one slot or more" matters here
    below, _ = _caps(structure.parent, structure.levels, structure.direct_slots, nslots, hr)
    binds = (below[pruned] > hr[pruned] + _TOL_A).any(axis=(1, 2))
    return frozenset(structure.key[g] for g in pruned[binds].tolist())
