"""The VEN against the stub VTN: registration, OAuth2, paging, and the VTN's error answers."""

from __future__ import annotations

import logging

import pytest

from sitectl.openadr.ven import ALARM
from tests.openadr.conftest import KW, at, limit_interval


async def test_registers_once_by_name_and_finds_itself_again(vtn, make_ven) -> None:
    vtn.add_program("flex")
    ven, _ = make_ven()
    assert await ven.read_once()
    (registered,) = vtn.vens.values()
    assert registered["venName"] == "depot-north" and ven.client.ven_id == registered["id"]
    assert vtn.requests("GET", "/vens")[0]["venName"] == "depot-north"
    # A restarted VEN finds itself by name instead of creating a second one.
    again, _ = make_ven()
    assert await again.read_once()
    assert len(vtn.vens) == 1 and again.client.ven_id == registered["id"]
    assert vtn.tokens_issued == 2  # client credentials, once per VEN


async def test_reads_every_page_of_programs_and_events(vtn, make_ven) -> None:
    vtn.page_max = 2  # a VTN that caps pages below the limit asked for
    for n in range(4):
        vtn.add_program(f"other-{n}")
    flex = vtn.add_program("flex")
    for n in range(5):
        vtn.add_event(
            flex["id"],
            [limit_interval(0, 400 - n, at(60 + 10 * n), "PT5M")],
            payloadDescriptors=KW,
        )
    ven, state = make_ven()
    assert await ven.read_once()
    assert [q["skip"] for q in vtn.requests("GET", "/programs")] == ["0", "2", "4", "5"]
    assert {q["limit"] for q in vtn.requests("GET", "/programs")} == {"50"}
    assert [q["skip"] for q in vtn.requests("GET", "/events")] == ["0", "2", "4", "5"]
    windows = state.limits.status(state.clock())[0].limits
    assert sorted(w.limit_kw for w in windows) == [396, 397, 398, 399, 400]


async def test_an_expired_token_is_fetched_again_and_the_read_goes_on(vtn, make_ven) -> None:
    vtn.add_program("flex")
    ven, _ = make_ven()
    assert await ven.read_once()
    vtn.expire_tokens()
    assert await ven.read_once()
    assert vtn.tokens_issued == 2
    statuses = [q for m, r, q in vtn.seen if r == "/auth/token"]
    assert len(statuses) == 2


async def test_a_refusing_token_endpoint_is_a_failed_read_with_its_reason(
    vtn, make_ven, caplog
) -> None:
    vtn.add_program("flex")
    vtn.refuse_tokens = True
    ven, state = make_ven()
    with caplog.at_level(logging.WARNING, logger="sitectl.openadr"):
        assert not await ven.read_once()
    assert "HTTP 401" in ven.failure and "invalid_client" in ven.failure
    assert vtn.client_secret not in caplog.text
    assert "token endpoint answered HTTP 401" in caplog.text
    vtn.refuse_tokens = False
    assert await ven.read_once() and ven.failure is None
    assert (ALARM, "openadr:flex") not in state.alarms


@pytest.mark.parametrize(
    ("status", "prefix", "kind"),
    [
        (500, "/programs", "unreachable"),
        (403, "/programs", "auth"),
        (401, "/programs", "auth"),  # 401 twice: the fresh token is refused too
        (400, "/events", "bad"),
    ],
)
async def test_error_answers_fail_the_read_and_keep_the_limits(
    vtn, make_ven, status, prefix, kind
) -> None:
    flex = vtn.add_program("flex")
    vtn.add_event(flex["id"], [limit_interval(0, 300, at(-5), "PT2H")], payloadDescriptors=KW)
    ven, state = make_ven()
    assert await ven.read_once()
    before = state.limits.in_force(state.clock())
    assert [w.limit_kw for w in before] == [300]
    vtn.fail(status, times=2 if status == 401 else 1, prefix=prefix)
    assert not await ven.read_once()
    assert f"HTTP {status}" in ven.failure
    # Nothing was published: the limits stand until the heartbeat lapses.
    assert state.limits.in_force(state.clock()) == before
    assert await ven.read_once()  # and the next good read goes on as before


async def test_an_answer_that_is_not_json_fails_the_read(vtn, make_ven) -> None:
    vtn.add_program("flex")
    ven, _ = make_ven()
    vtn.garble("/programs")
    assert not await ven.read_once()
    assert "not JSON" in ven.failure


async def test_a_vtn_that_refuses_registration_is_still_read(vtn, make_ven, caplog) -> None:
    flex = vtn.add_program("flex")
    vtn.add_event(flex["id"], [limit_interval(0, 250, at(-1), "PT1H")], payloadDescriptors=KW)
    vtn.fail(403, prefix="/vens")
    ven, state = make_ven()
    with caplog.at_level(logging.WARNING, logger="sitectl.openadr"):
        assert await ven.read_once()
    assert "registration refused" in caplog.text
    assert [w.limit_kw for w in state.limits.in_force(state.clock())] == [250]
    assert await ven.read_once() and ven.client.ven_id is not None  # registered on a later read
