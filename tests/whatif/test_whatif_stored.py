"""The building load from a running site's store (``--building store:PATH``): a day of the small
depot recorded by the real utilization recorder into a real SQLite store, read back as the
non-EV load (its meter less its chargers) and simulated from."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from sitectl.config import GRID
from sitectl.store import Store
from sitectl.utilization.recorder import UtilizationRecorder
from sitectl.whatif.driver import Simulation
from sitectl.whatif.inputs import InputError
from sitectl.whatif.scenario import Scenario, prepare, run
from sitectl.whatif.stored import read_stored_building

#: How far the load read back may be from the one recorded (kW): within a minute the plan
#: moves a vehicle's limit, the meter's and the charger's samples differ by a little.
TOLERANCE_KW = 0.5


class Recorded(Simulation):
    """A what-if whose state the utilization recorder follows, as it follows a running site's."""

    recorder: UtilizationRecorder

    async def _commission(self) -> None:
        await super()._commission()
        self.recorder.start()

    def _end_step(self, k, at, building) -> None:  # type: ignore[no-untyped-def]
        super()._end_step(k, at, building)
        self.recorder.sample()


def _scenario(files: dict[str, Path], building: Path, **changes) -> Scenario:  # type: ignore[no-untyped-def]
    return Scenario(
        site=files["site"],
        timetable=files["timetable"],
        building=building,
        start="16:00",
        days=0.25,
        environ={},
        **changes,
    )


@pytest.fixture
def recorded(depot, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The small depot's evening with its building CSV, every cycle (the recorder wants the
    loop's view fresh), recorded into the store; returns the files, the store and the run."""
    files = depot()
    prepared = prepare(_scenario(files, files["building"]))
    options = dataclasses.replace(prepared.options, every_step=True)
    sim = Recorded(prepared.config, prepared.visits, prepared.building, options)
    path = tmp_path / "sitectl.sqlite"
    store = Store(path)
    sim.recorder = UtilizationRecorder(prepared.config, sim.state, store)
    recording = asyncio.run(sim.run())
    sim.recorder.stop()
    store.close()
    return files, path, prepared, recording


def test_the_stored_history_gives_back_the_building_load(recorded) -> None:  # type: ignore[no-untyped-def]
    _, path, prepared, recording = recorded
    assert recording.ev_kw.max() > 20  # the chargers drew through the meter meanwhile
    stored = read_stored_building(path, prepared.config)
    assert stored.circuits == [GRID]
    series = stored.series[GRID]
    assert series.period_s == 86400  # less than a day recorded: a daily profile
    start = prepared.options.start
    # A minute in which a vehicle arrives or leaves mixes samples from before and after it
    # (the meter's and the charger's at different moments): judged on the mean only.
    events = [v.arrival for v in prepared.visits] + [v.departure for v in prepared.visits]
    checked, got, wanted = 0, [], []
    for minutes in range(5, int(recording.steps * recording.step_s / 60) - 5, 3):
        at = start + timedelta(minutes=minutes)
        want = prepared.building.kw(GRID, at)
        got.append(stored.kw(GRID, at))
        wanted.append(want)
        # A day later it replays the same (moved by whole periods).
        assert stored.kw(GRID, at + timedelta(days=1)) == pytest.approx(got[-1])
        if all(abs((at - e).total_seconds()) > 150 for e in events):
            assert got[-1] == pytest.approx(want, abs=TOLERANCE_KW), at
            checked += 1
    assert checked > 60
    assert sum(got) / len(got) == pytest.approx(sum(wanted) / len(wanted), abs=0.1)


def test_a_run_from_the_store_matches_the_run_from_the_csv(recorded) -> None:  # type: ignore[no-untyped-def]
    files, path, _, _ = recorded
    from_csv = run(prepare(_scenario(files, files["building"])))
    from_store = run(prepare(_scenario(files, Path(f"store:{path}"))))
    assert from_store["energy"]["to_vehicles_kwh"] == pytest.approx(
        from_csv["energy"]["to_vehicles_kwh"], rel=0.02
    )
    a, b = from_store["energy"], from_csv["energy"]
    assert sum(from_store["run"]["cycle_reasons"].values()) > 0
    assert a.get("building_kwh", 0) == pytest.approx(b.get("building_kwh", 0), rel=0.03)


def test_a_store_without_utilization_data_is_a_clear_error(depot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = depot()
    with pytest.raises(InputError, match="no store at"):
        prepare(_scenario(files, Path(f"store:{tmp_path / 'missing.sqlite'}")))
    empty = tmp_path / "empty.sqlite"
    Store(empty).close()
    with pytest.raises(InputError, match="no trusted meter measurement"):
        prepare(_scenario(files, Path(f"store:{empty}")))
