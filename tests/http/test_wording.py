"""The same connector situation gets the same words under OCPP 1.6 and 2.0.1."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sitectl.http.wording import ConnectorWording as W
from sitectl.http.wording import connector_wording
from sitectl.state import ConnectorState, SessionState

NOW_MONO = 1000.0
MAX_AGE_S = 30.0


def connector(
    status: str,
    *,
    session: bool = False,
    amps: float | None = None,
    offered: float | None = None,
    power_kw: float | None = None,
    age_s: float = 2.0,
) -> ConnectorState:
    c = ConnectorState(1, status=status)
    if session:
        c.session = SessionState("CP/1", 1, datetime(2025, 1, 1, tzinfo=UTC))
    if amps is not None:
        c.current_a, c.current_mono = (amps, amps, amps), NOW_MONO - age_s
    if offered is not None:
        c.offered_a, c.offered_mono = offered, NOW_MONO - age_s
    if power_kw is not None:
        c.power_kw, c.power_mono = power_kw, NOW_MONO - age_s
    return c


# (situation, the 1.6 connector, the 2.0.1 EVSE, the words both get)
SAME_SITUATION = [
    ("nothing plugged in", connector("Available"), connector("Available"), (W.AVAILABLE, None)),
    (
        "plugged in, not started",
        connector("Preparing"),
        connector("Occupied"),
        (W.PLUGGED_IN, None),
    ),
    (
        "charging",
        connector("Charging", session=True, amps=16),
        connector("Occupied", session=True, amps=16),
        (W.CHARGING, None),
    ),
    (
        "the vehicle takes nothing of what is offered",
        connector("SuspendedEV", session=True, amps=0, offered=16),
        connector("Occupied", session=True, amps=0.2, offered=16),
        (W.PAUSED, "by the vehicle"),
    ),
    (
        "the charger offers nothing",
        connector("SuspendedEVSE", session=True, amps=0, offered=0),
        connector("Occupied", session=True, amps=0, offered=0),
        (W.PAUSED, "by the charger"),
    ),
    ("faulted", connector("Faulted"), connector("Faulted"), (W.FAULTED, None)),
    ("reserved", connector("Reserved"), connector("Reserved"), (W.RESERVED, None)),
    ("unavailable", connector("Unavailable"), connector("Unavailable"), (W.UNAVAILABLE, None)),
]


@pytest.mark.parametrize(
    ("v16", "v201", "words"),
    [case[1:] for case in SAME_SITUATION],
    ids=[case[0] for case in SAME_SITUATION],
)
def test_one_wording_for_the_same_situation(v16, v201, words) -> None:
    state16, _ = connector_wording(v16, NOW_MONO, MAX_AGE_S)
    state201, _ = connector_wording(v201, NOW_MONO, MAX_AGE_S)
    assert state16 == state201 == words[0]
    if words[1] is not None:
        assert connector_wording(v16, NOW_MONO, MAX_AGE_S)[1] == words[1]
        assert connector_wording(v201, NOW_MONO, MAX_AGE_S)[1] == words[1]


def test_occupied_is_refined_only_by_fresh_measurements() -> None:
    stale = connector("Occupied", session=True, amps=16, age_s=MAX_AGE_S + 1)
    assert connector_wording(stale, NOW_MONO, MAX_AGE_S) == (
        W.IN_SESSION,
        "no recent measurement",
    )
    power_only = connector("Occupied", session=True, power_kw=11.0)
    assert connector_wording(power_only, NOW_MONO, MAX_AGE_S)[0] == W.CHARGING
    # No offered current reported, but sitectl's limit is 0 A: the charger holds it.
    held = connector("Occupied", session=True, amps=0)
    assert connector_wording(held, NOW_MONO, MAX_AGE_S, limit_a=0.0) == (
        W.PAUSED,
        "by the charger",
    )
    assert connector_wording(held, NOW_MONO, MAX_AGE_S, limit_a=16.0) == (W.PAUSED, None)


def test_finishing_and_unknown_statuses() -> None:
    assert connector_wording(connector("Finishing"), NOW_MONO, MAX_AGE_S) == (
        W.PLUGGED_IN,
        "session ended",
    )
    assert connector_wording(connector("Unknown"), NOW_MONO, MAX_AGE_S) == (W.UNKNOWN, None)
    # A status from a newer OCPP version is shown as such, not hidden.
    assert connector_wording(connector("Bogus"), NOW_MONO, MAX_AGE_S) == (W.UNKNOWN, "Bogus")
