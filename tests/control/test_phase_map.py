"""A meter whose CTs are labelled differently from the site's phases (issue #16.10)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from devices.meter import Quality, Reading
from sitectl.control.loop import ControlLoop
from tests.control.test_snapshot import config


async def nothing(charger_id, payload):  # the loop is not run here: no profile is sent
    raise AssertionError("no profile expected")


def reading(currents) -> Reading:
    return Reading(
        device="grid-meter",
        ts=datetime.now(UTC),
        mono=time.monotonic(),
        quality=Quality.OK,
        current_a=currents,
        voltage_v=(231.0, 232.0, 233.0),
    )


async def test_meter_phases_are_read_in_site_order() -> None:
    from sitectl.state import SiteState

    devices = [
        {"name": "grid-meter", "profile": "eastron-sdm630", "host": "h", "phase_map": "L2-L3-L1"}
    ]
    cfg = config(devices=devices)
    state = SiteState(cfg)
    loop = ControlLoop(cfg, state, nothing)
    state.set_reading("grid-meter", reading((10.0, 20.0, 30.0)))
    # The meter's L1 measures the site's L2, its L2 the site's L3, its L3 the site's L1.
    measured = loop.meters.tracks["grid"].last_ok
    assert measured.current_a == (30.0, 10.0, 20.0)
    assert measured.voltage_v == (233.0, 231.0, 232.0)
    assert state.readings["grid-meter"].current_a == (10.0, 20.0, 30.0)  # raw, as labelled


def test_a_phase_map_must_name_three_phases() -> None:
    devices = [
        {"name": "grid-meter", "profile": "eastron-sdm630", "host": "h", "phase_map": "L1-L1-L2"}
    ]
    with pytest.raises(ValidationError, match="phase_map"):
        config(devices=devices)
