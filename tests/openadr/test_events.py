"""Events from the stub VTN become limit windows and prices; bad ones never lift a limit."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from sitectl.control.snapshot import ProblemBuilder
from sitectl.limits import tightest
from sitectl.openadr.mapping import SPEC_NOW
from tests.openadr.conftest import KW, at, limit_interval


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_an_evening_event_lowers_the_grid_import_limit_in_its_window(vtn, make_ven) -> None:
    flex = vtn.add_program("flex")
    # "17:00-19:00" two hours from now: two one-hour intervals from the event's intervalPeriod.
    start = at(120)
    vtn.add_event(
        flex["id"],
        [limit_interval(0, 400), limit_interval(1, 350)],
        eventName="evening peak",
        intervalPeriod={"start": start, "duration": "PT1H"},
        payloadDescriptors=KW,
    )
    ven, state = make_ven()
    assert await ven.read_once()
    now = state.clock()
    windows = state.limits.windows(now, now + timedelta(hours=24), now)
    begin = parse(start)
    assert [(w.source, w.node, w.start, w.end, w.limit_kw, w.hard) for w in windows] == [
        ("openadr:flex", "grid", begin, begin + timedelta(hours=1), 400.0, True),
        (
            "openadr:flex",
            "grid",
            begin + timedelta(hours=1),
            begin + timedelta(hours=2),
            350.0,
            True,
        ),
    ]
    assert "evening peak" in windows[0].reason and "400 kW" in windows[0].reason
    assert state.limits.in_force(now) == []  # not yet
    assert tightest(windows, "grid", begin + timedelta(minutes=90)) == (None, 350.0)
    # The VTN withdraws the event: its windows go with it.
    vtn.events.clear()
    assert await ven.read_once()
    assert state.limits.windows(now, now + timedelta(hours=24), now) == []


async def test_simple_levels_amps_and_open_ended_events(vtn, make_ven) -> None:
    flex = vtn.add_program(
        "flex",
        payloadDescriptors=[
            {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "IMPORT_CAPACITY_LIMIT",
             "units": "AMPS"}
        ],
    )  # fmt: skip
    simple = [{"type": "SIMPLE", "values": [2]}]
    vtn.add_event(flex["id"], [{"id": 0, "payloads": simple}],
                  intervalPeriod={"start": at(30), "duration": "PT30M"})  # fmt: skip
    vtn.add_event(flex["id"], [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [0]}]}],
                  intervalPeriod={"start": at(90), "duration": "PT30M"})  # fmt: skip
    # The program says AMPS; a start on SPEC_NOW is now and P9999Y for ever (User Guide).
    forever = {"start": f"{SPEC_NOW}T00:00:00Z", "duration": "P9999Y"}
    vtn.add_event(flex["id"], [limit_interval(0, 600)], intervalPeriod=forever)
    ven, state = make_ven(simple_levels_kw={1: 450, 2: 300, 3: 200})
    assert await ven.read_once()
    now = state.clock()
    windows = state.limits.windows(now, now + timedelta(hours=3), now)
    by_kind = {("kw" if w.limit_kw else "a"): w for w in windows}
    assert len(windows) == 2  # level 0 is normal operation: no window
    assert by_kind["kw"].limit_kw == 300 and "SIMPLE level 2" in by_kind["kw"].reason
    assert by_kind["a"].limit_a == (600.0, 600.0, 600.0) and by_kind["a"].end is None
    assert by_kind["a"].start <= now


async def test_a_price_event_replaces_the_tariff_it_covers(vtn, make_ven) -> None:
    flex = vtn.add_program("flex")
    prices = [{"id": n, "payloads": [{"type": "PRICE", "values": [v]}]} for n, v in
              enumerate([0.42, -0.01])]  # fmt: skip
    vtn.add_event(
        flex["id"],
        prices,
        intervalPeriod={"start": at(0), "duration": "PT15M"},
        payloadDescriptors=[{"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "PRICE",
                             "units": "KWH", "currency": "EUR"}],
    )  # fmt: skip
    ven, state = make_ven()
    cfg = ven.config.model_copy(
        update={"tariff": ven.config.tariff.model_copy(update={"periods": []})}
    )
    assert ProblemBuilder(cfg).horizon.tariff(state.clock()).price_per_kwh == ()
    assert await ven.read_once()
    now = state.clock()
    assert [w.price_per_kwh for w in state.prices.windows(now, now + timedelta(hours=1))] == [
        0.42,
        -0.01,
    ]
    horizon = ProblemBuilder(cfg).horizon
    tariff = horizon.tariff(now, state.prices.windows(now, horizon.end(now)))
    assert tariff.price_per_kwh[0] == pytest.approx(0.42, abs=0.3)  # mostly the first price
    assert len(set(tariff.price_per_kwh)) > 1


BAD = [
    ("no intervals", {"intervals": []}, "no intervals"),
    ("negative", {"intervals": [limit_interval(0, -5)]}, "is not a number >= 0"),
    ("text", {"intervals": [limit_interval(0, "lots")]}, "is not a number >= 0"),
    ("nan", {"intervals": [limit_interval(0, "NaN")]}, "is not a number >= 0"),
    ("unknown units", {"payloadDescriptors": [
        {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "IMPORT_CAPACITY_LIMIT",
         "units": "KWH"}]}, "unknown units"),
    ("no duration", {"intervalPeriod": {"start": f"{SPEC_NOW}T00:00:00Z"}}, "no duration"),
    ("level without kW", {"intervals": [{"id": 0, "payloads": [{"type": "SIMPLE",
                                                                "values": [3]}]}]},
     "no kW in simple_levels_kw"),
    ("malformed", {"intervals": [{"id": "zero", "payloads": "none"}]}, "malformed event"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "change", "said"), BAD, ids=[b[0] for b in BAD])
async def test_a_bad_update_is_logged_and_keeps_the_events_last_good_limit(
    vtn, make_ven, caplog, label, change, said
) -> None:
    flex = vtn.add_program("flex")
    event = vtn.add_event(
        flex["id"],
        [limit_interval(0, 320)],
        intervalPeriod={"start": at(-10), "duration": "PT2H"},
        payloadDescriptors=KW,
    )
    ven, state = make_ven()
    assert await ven.read_once()
    assert [w.limit_kw for w in state.limits.in_force(state.clock())] == [320]
    vtn.update_event(event["id"], **change)
    with caplog.at_level(logging.WARNING, logger="sitectl.openadr"):
        assert await ven.read_once()
    assert said in caplog.text and event["id"] in caplog.text
    assert [w.limit_kw for w in state.limits.in_force(state.clock())] == [320]
    if label == "malformed":  # an answer the document forbids: the stub noted it
        assert vtn.errors and all("/events" in e for e in vtn.errors)
        vtn.errors.clear()


async def test_unknown_payloads_and_export_limits_are_not_applied(vtn, make_ven, caplog) -> None:
    flex = vtn.add_program("flex")
    vtn.add_event(
        flex["id"],
        [{"id": 0, "payloads": [{"type": "GHG", "values": [220]},
                                {"type": "EXPORT_CAPACITY_LIMIT", "values": [50]}]}],
        intervalPeriod={"start": at(-1), "duration": "PT1H"},
    )  # fmt: skip
    ven, state = make_ven()
    with caplog.at_level(logging.WARNING, logger="sitectl.openadr"):
        assert await ven.read_once()
    assert "payload type 'GHG' not understood" in caplog.text
    assert state.limits.in_force(state.clock()) == []


def test_coverage_runs_over_adjoining_windows_and_stops_at_a_gap() -> None:
    from sitectl.limits import GridLimit
    from sitectl.openadr.mapping import coverage_end

    now = datetime.now(UTC)

    def w(a: int, b: int | None) -> GridLimit:
        end = None if b is None else now + timedelta(minutes=b)
        return GridLimit("grid", "s", now + timedelta(minutes=a), end, limit_kw=1)

    assert coverage_end([], now) == now
    assert coverage_end([w(5, 10)], now) == now  # starts later: nothing covers now
    assert coverage_end([w(-5, 10), w(10, 20), w(25, 30)], now) == now + timedelta(minutes=20)
    assert coverage_end([w(-5, 10), w(0, None)], now) == datetime.max.replace(tzinfo=UTC)
