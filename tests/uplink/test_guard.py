"""Issue #22.7: reply topics under a prefix, coalesced republish, Maximum Packet Size."""

from __future__ import annotations

import json
import logging

import pytest

from sitectl.uplink.guard import LOG_WINDOW_S, ReplyTopics, RepublishGate
from tests.helpers import wait_for
from tests.uplink.support import Capture, depot_config, run_uplink, unique_prefix
from tests.uplink.test_uplink import Requester

OVERRIDE = {"node": "feeder", "limit_a": 50, "expires_in_s": 300}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------------
# The rules alone


def test_reply_topics_default_is_the_sites_reply_prefix() -> None:
    topics = ReplyTopics("sitectl/north", None, Clock())
    assert topics.why_refused("sitectl/north/reply") is None
    assert topics.why_refused("sitectl/north/reply/ops/42") is None
    for topic in (
        "sitectl/north/status",
        "sitectl/north/chargers/CP1",
        "sitectl/north/replyx",
        "sitectl/south/reply/x",
        "replies/ops",
        "sitectl/north/reply/+",
        "sitectl/north/reply/#",
        "",
    ):
        assert topics.why_refused(topic) is not None, topic


def test_a_broad_configured_prefix_still_keeps_our_own_topics() -> None:
    topics = ReplyTopics("sitectl/north", ["replies", "sitectl"], Clock())
    assert topics.why_refused("replies/ops") is None
    assert topics.why_refused("sitectl/other-site/x") is None
    assert topics.why_refused("sitectl/north/reply/x") is None
    assert "own topics" in (topics.why_refused("sitectl/north/status") or "")
    assert "own topics" in (topics.why_refused("sitectl/north") or "")
    assert topics.why_refused("repliesx/ops") is not None


def test_refusals_are_logged_within_a_budget(caplog) -> None:
    clock = Clock()
    topics = ReplyTopics("sitectl/north", None, clock)
    with caplog.at_level(logging.WARNING, logger="sitectl.uplink.guard"):
        for n in range(500):
            topics.refuse("sitectl/north/cmd/override", f"x/{n}", "outside")
        assert len(caplog.records) == 1
        clock.now += LOG_WINDOW_S
        topics.refuse("sitectl/north/cmd/override", "y", "outside")
    assert len(caplog.records) == 2
    assert "499 more refused" in caplog.records[1].getMessage()
    assert topics.refused == 501


def test_republish_gate_coalesces() -> None:
    clock = Clock()
    gate = RepublishGate(10.0, clock)
    assert gate.request() is None
    clock.now += 3
    assert gate.request() == pytest.approx(7.0)
    assert gate.needs_timer() is True
    assert gate.request() == pytest.approx(7.0)
    assert gate.needs_timer() is False  # one timer for the whole burst
    clock.now += 7
    gate.done()
    assert gate.coalesced == 2
    clock.now += 1
    assert gate.request() == pytest.approx(9.0)  # the deferred one counts as the last


# ------------------------------------------------------------------------------------------------
# Against mosquitto


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


async def test_replies_go_only_under_the_reply_prefix(
    tmp_path, mosquitto, capture_factory, prefix, caplog
) -> None:
    config = depot_config(tmp_path, mosquitto.host, mosquitto.port, prefix)
    capture: Capture = capture_factory(mosquitto.host, mosquitto.port, prefix=prefix)
    requester = Requester(mosquitto.host, mosquitto.port, prefix)
    try:
        async with run_uplink(config) as running:
            await running.connected()
            await wait_for(lambda: capture.on("status"), message="birth")
            births = len(capture.on("status"))
            with caplog.at_level(logging.WARNING, logger="sitectl.uplink"):
                for target in (f"{prefix}/status", "replies/elsewhere") * 20:
                    requester.reply_topic = target
                    requester.send("override", OVERRIDE)
                requester.reply_topic = f"{prefix}/reply/test"
                ok = await requester.reply(requester.send("clear_override", {"node": "feeder"}))
            assert ok["ok"] is True
            # Not carried out, nothing published on our status, one log line for the flood.
            assert "feeder" not in running.state.overrides
            assert len(capture.on("status")) == births
            assert all("ok" not in m.data for m in capture.on("status"))
            lines = [r for r in caplog.records if "not carried out" in r.getMessage()]
            assert len(lines) == 1, [r.getMessage() for r in lines]
            assert running.uplink.reply_topics.refused == 40
    finally:
        requester.close()


async def test_a_flood_of_republish_is_coalesced(
    tmp_path, mosquitto, capture_factory, prefix
) -> None:
    interval = 2.0
    config = depot_config(
        tmp_path, mosquitto.host, mosquitto.port, prefix, republish_min_interval_s=interval
    )
    capture: Capture = capture_factory(mosquitto.host, mosquitto.port, prefix=prefix)
    requester = Requester(mosquitto.host, mosquitto.port, prefix)
    try:
        async with run_uplink(config) as running:
            await running.connected()
            await wait_for(lambda: capture.on("status"), message="birth")
            births = len(capture.on("status"))
            states = len(capture.on("chargers/CP1"))
            sent = [requester.send("republish", b"") for _ in range(50)]
            replies = [await requester.reply(c) for c in sent]
            assert all(r["ok"] for r in replies)
            assert sum(1 for r in replies if r.get("coalesced")) >= 49 - 1
            # One at once, one at the end of the interval for all the others.
            await wait_for(lambda: len(capture.on("status")) == births + 2, message="deferred")
            await running.drained()
            assert len(capture.on("status")) == births + 2
            assert len(capture.on("chargers/CP1")) <= states + 2 + 1  # + a measurement tick
            stamps = [json.loads(m.payload)["ts"] for m in capture.on("status")[births:]]
            assert stamps[0] < stamps[1]
    finally:
        requester.close()


async def test_maximum_packet_size_is_sent_on_connect(
    tmp_path, mosquitto, capture_factory, prefix
) -> None:
    config = depot_config(tmp_path, mosquitto.host, mosquitto.port, prefix, max_packet_size=4096)
    capture: Capture = capture_factory(mosquitto.host, mosquitto.port, prefix=prefix)
    requester = Requester(mosquitto.host, mosquitto.port, prefix)
    try:
        async with run_uplink(config) as running:
            await running.connected()
            await wait_for(lambda: capture.on("status"), message="birth")
            # The broker drops what is too large for us: no refusal reply, nothing parsed.
            big = requester.send("override", b"{" + b" " * 20_000 + b"}")
            small = requester.send("clear_override", {"node": "feeder"})
            assert (await requester.reply(small))["ok"] is True
            assert big not in requester.replies
    finally:
        requester.close()
