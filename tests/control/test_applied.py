"""The closed-loop check on its own: what a composite schedule says, and bad answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sitectl.control.applied import AppliedCheck, composite_now
from sitectl.control.memory import ChargerMemory
from sitectl.ocpp.link import CallErrorResponse
from sitectl.quirks import DEFAULTS
from sitectl.state import SiteState
from tests.ocpp.conftest import depot_config

NOW = datetime.now(UTC)


def test_the_period_in_force_is_read_in_either_version() -> None:
    start = (NOW - timedelta(seconds=90)).isoformat()
    periods = [{"startPeriod": 0, "limit": 16.0}, {"startPeriod": 60, "limit": 6.0}]
    v16 = {
        "status": "Accepted",
        "scheduleStart": start,
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": periods},
    }
    assert composite_now(v16, NOW) == (True, 6.0, "A", 3)
    v201 = {
        "status": "Accepted",
        "schedule": {
            "scheduleStart": start,
            "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11040, "numberPhases": 1}],
        },
    }
    assert composite_now(v201, NOW) == (True, 11040.0, "W", 1)
    assert composite_now({"status": "Rejected"}, NOW) == (False, None, "A", 3)
    assert composite_now({"status": "Accepted"}, NOW) == (True, None, "A", 3)
    with pytest.raises(ValueError):
        composite_now({"status": "Accepted", "chargingSchedule": {}}, NOW)


async def check(answer) -> tuple[ChargerMemory, SiteState]:
    cfg = depot_config([{"id": "A"}], None)
    state = SiteState(cfg)
    memory = {"A": ChargerMemory(commanded_a=16.0, failsafe_installed=True)}

    async def call(identity, action, payload, timeout):
        if isinstance(answer, Exception):
            raise answer
        return answer

    checker = AppliedCheck(
        cfg,
        state,
        memory,
        call,
        lambda c: DEFAULTS,
        lambda c: None,
        lambda: 100.0,
        lambda: NOW,
        lambda: 230.0,
    )
    await checker._check("A")
    return memory["A"], state


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "Accepted", "chargingSchedule": {"chargingSchedulePeriod": [{"x": 1}]}},
        {"status": "Accepted", "chargingSchedule": {"chargingSchedulePeriod": [{"limit": "ten"}]}},
        {"status": "Accepted", "chargingSchedule": {"chargingSchedulePeriod": "no"}},
        {"status": "Rejected"},
        CallErrorResponse("InternalError", "boom", {}),
        TimeoutError(),
    ],
)
async def test_a_bad_or_missing_answer_is_unanswered_and_changes_no_budget(answer) -> None:
    mem, state = await check(answer)
    assert mem.applied is not None and mem.applied.verdict == "unanswered"
    assert mem.applied_above_a is None and mem.applied_cap_a(100.0) is None
    assert not state.alarms
    assert state.chargers["A"].applied["verdict"] == "unanswered"


async def test_not_implemented_is_recorded_as_unsupported() -> None:
    mem, _ = await check(CallErrorResponse("NotImplemented", "no", {}))
    assert mem.applied.verdict == "unsupported"


async def test_a_higher_applied_limit_is_budgeted_and_alarmed() -> None:
    answer = {
        "status": "Accepted",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 32.0}],
        },
    }
    mem, state = await check(answer)
    assert mem.applied.verdict == "above" and mem.applied_above_a == 32.0
    assert ("charger_limit_not_applied", "A") in state.alarms
