"""Power allocation for a charging depot: pure computation, no I/O, no asyncio.

``sitectl`` calls it; it imports neither ``sitectl`` nor ``devices``.

Rule 1: pure functions on frozen dataclasses. Nothing here opens a file or socket, starts a task,
keeps a global or draws a random number; the only clock read is ``time.perf_counter``, to keep a
solve within its budget and report its time. :class:`optimizer.lp.Allocator` holds state, but
only to solve faster: its objective equals a cold solve's (tested). The fallback and ``verify``
import no solver, so they work even when HiGHS cannot be loaded; this module re-exports nothing
for the same reason.

Rule 2: units are in the names and site phases are 0, 1, 2 (L1, L2, L3). Currents are A per
phase, power kW, energy kWh, time s (``step_s``) or steps. Power is ``U_LN · Σ phase currents``
at unity power factor, with ``Problem.voltage_ln_v`` (230 V by default); a kW limit is checked
against that sum. A non-EV :class:`~optimizer.problem.Load` hangs off a node and counts against it
and every ancestor, exactly like a charger.

Rule 3: step 0 is now and is what gets dispatched; every later step is only a plan, re-solved next
cycle. Steps may differ in length (:class:`optimizer.grid.TimeGrid`: fine near now, coarse later).
A session charges in steps ``arrival_step <= t < departure_step``; departure may lie beyond the
horizon or at/before now (then it gets nothing).

Rule 4: never over a limit, whatever the input. Where the non-EV load alone exceeds a limit the
EV headroom is clamped at 0 (everyone under that node gets 0) rather than letting the model turn
infeasible. Every LP answer passes :func:`optimizer.verify.verify` before it is returned; if the
LP times out (HiGHS ``time_limit`` = what is left of the budget), fails or does not verify, the
answer comes from :func:`optimizer.fallback.allocate` (least laxity first under every headroom,
always feasible) and ``Allocation.status`` says why. The control loop verifies again anyway.
A node's limit on a step is its own lowered by every hard :class:`~optimizer.problem.NodeCap`
covering the step (a time-windowed limit: an operator override, an OpenADR event, §14a
dimming); a soft cap is a penalty in the LP (:mod:`optimizer._soft`: exceeded only to save a
departure) and a limit for the fallback.

Rule 5: the IEC 61851-1 floor. A dispatched current is 0 (pause) or at least ``min_a`` — there is
no AC charging between 0 and 6 A. The LP is solved as a relaxation; sessions it gives
``0 < i < min_a`` on step 0 are raised to ``min_a`` where every node above them still has room
(by priority, then by how much the LP wanted them) or paused, and the LP is re-solved warm with
those step-0 bounds (fix-and-re-solve; details in :mod:`optimizer.lp`). Chosen over an exact MILP
on step 0, which took 1.3 s at 500 × 96 on this machine (``shared/bench/optimizer/README.md``):
it costs one warm re-solve and loses at most one step at ``min_a`` per paused session (0.000 % on
every benchmark instance). Steps after 0 may plan below ``min_a``: they are never dispatched as
such. A car whose whole remaining need is below one step at ``min_a`` gets ``min_a``; it stops by
itself when full (``verify`` allows that one step of overshoot and nothing more).

Rule 6: the objective, per kWh (currency/kWh; costs go to HiGHS × 1e4 for its tolerances), in
this order of importance (:mod:`optimizer.lp` holds the constants):

0. Minimum targets first (``Session.min_energy_kwh``, issue #19.1): each kWh of a minimum
   missed costs ``W · 4^priority · F`` (`optimizer.lp.min_weights`), ``F`` chosen so the least
   of these is 4× the most a kWh toward any full target earns: no full target is served at
   the cost of another vehicle's minimum, and among minimums priority orders as below.
1. Deliver what each car wants by its departure: every kWh delivered earns
   ``W · 4^priority`` (× 0.5 if the car leaves after the horizon and can still charge later),
   ``W = 10 · (max |price| + demand charge / shortest step in h + 1e-4) + 1``.
2. Lower cost: ``+ price[t]`` per kWh, and the demand charge on the peak grid power (EV plus
   non-EV at the root) above ``Tariff.peak_so_far_kw``.
3. Charge earlier: ``+ 1e-4 · (start of step / horizon)`` per kWh.
4. Share fairly among equals: a concave reward on each car's step-0 current in 5 pieces
   (``[0, min_a]``, then ``[min_a, max_a]`` in 4), worth at most half the earliness of one
   (shortest) step; equal cars end within one piece of each other.

Why the order holds: a kWh delivered earns at least ``W``, ten times the most the lower tiers can
charge for it (its price, the peak it can raise — 1/Δt kW for 1 kWh in one step — and the
earliness premium), so the LP never gives up weighted energy for cost. The whole earliness range
is 1e-4/kWh, below the 0.01 ct/kWh resolution of the tariffs it sees, so a real price difference
always wins over "earlier". Moving a kWh one step later loses at least twice what fairness can
gain, so fairness only breaks ties. Priority levels differ by 4×, more than the 3× by which a
three-phase car's kWh per amp on a binding phase exceeds a single-phase car's, so a higher
priority wins even there.

Modules: :mod:`optimizer.problem` (inputs), :mod:`optimizer.allocation` (the answer),
:mod:`optimizer.lp` (``Allocator``, ``solve``), :mod:`optimizer.fallback` (``allocate``),
:mod:`optimizer.verify` (``verify``, ``Violation``), :mod:`optimizer.grid` (``TimeGrid``),
:mod:`optimizer.reference` (``max_energy``, an independent yardstick for tests and the bench).
"""
