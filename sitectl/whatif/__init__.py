"""What-if: a depot's day on sitectl's own controller, in simulated time (``sitectl simulate``).

The control path is the production one, not a model of it: `driver` wires sitectl's
`SiteState`, `StateObserver`, `Fleet` and `ControlLoop` as ``sitectl run`` does and calls
`ControlLoop.turn` in simulated time (no sockets, no sleeps). Around it, by what they hold:

- `timetable`: the fleet timetable CSV (or the ``fleet`` section), expanded into visits;
- `inputs`: the site YAML with ``--set`` changes, the tariff, the building-load CSV;
- `physics`: vehicles (DC taper above 80 %, 1-/3-phase AC, start delays, ramps);
- `depot`: the simulated bays, meters and what sitectl hears of them (OCPP 1.6 messages into
  the observer, Modbus-like readings into the state) and reads back from its profiles;
- `record`, `report`: what a run saw, its numbers and its verdict in words, JSON and CSV;
- `html`: the self-contained HTML report (uPlot inlined);
- `scenario`: inputs to report, as ``sitectl simulate`` and ``bench/whatif.py`` run it;
- `sample`: a generated bus and van depot to try it on.
"""
