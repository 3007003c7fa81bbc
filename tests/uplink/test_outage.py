"""Broker outages: what was queued arrives in order without a gap; thinning; the bound.

The broker keeps the capturing subscriber's session across its restart (persistence), so a
message the uplink sends before the subscriber is back is queued for it, not lost.
"""

from __future__ import annotations

from sitectl.state import Severity
from tests.helpers import free_port, wait_for
from tests.uplink.support import (
    Mosquitto,
    assert_gapless,
    depot_config,
    run_uplink,
    unique_prefix,
)


async def test_everything_queued_arrives_in_order_after_an_outage(
    tmp_path, broker, capture_factory
) -> None:
    capture = capture_factory(broker.host, broker.port, persistent=True, client_id="cap-outage")
    config = depot_config(
        tmp_path, broker.host, broker.port, summary_period_s=0.05, outage_summary_period_s=0.5
    )
    async with run_uplink(config) as running:
        await running.connected()
        await wait_for(lambda: len(capture.on("summary")) >= 2, message="summaries flowing")
        broker.stop()
        await wait_for(lambda: not running.uplink.connected, message="outage noticed")
        for n in range(30):
            running.state.raise_alarm("tick", str(n), Severity.INFO, f"tick {n}")
        for n in range(0, 30, 2):
            running.state.clear_alarm("tick", str(n))
        running.state.chargers["CP1"].connected = True
        running.state.notify("charger_connected", "CP1")
        # Summaries are thinned while disconnected: at most one per 0.5 s is queued.
        await wait_for(
            lambda: running.uplink.outbox.stats()["thinned_summaries"] >= 10, message="thinning"
        )
        queued = running.uplink.outbox.count
        assert queued >= 46
        broker.start()
        await running.connected()
        await running.drained()
        last = running.uplink.outbox.seq
        await wait_for(
            lambda: any(m.data.get("seq") == last for m in capture.all()), message="the last seq"
        )
    unique = assert_gapless(capture.all())
    assert unique[0].data["seq"] == 1
    alarms = [m.data for m in unique if m.topic.endswith("/alarms")]
    assert [(a["event"], a["subject"]) for a in alarms] == [
        ("raised", str(n)) for n in range(30)
    ] + [("cleared", str(n)) for n in range(0, 30, 2)]
    births = [m for m in unique if m.topic.endswith("/status") and m.data["status"] == "online"]
    assert len(births) == 2  # one per connection
    # After the reconnect the birth comes before everything queued during the outage.
    second_birth = unique.index(births[1])
    assert unique[second_birth + 1 :][0].topic.endswith(("/summary", "/alarms", "/chargers/CP1"))
    assert all(m.data["seq"] > births[1].data["seq"] for m in unique[second_birth + 1 :])
    summaries = [m.data for m in unique if m.topic.endswith("/summary")]
    assert summaries[-1]["outbox"]["thinned_summaries"] >= 10


async def test_full_outbox_drops_summaries_first_and_says_so(
    tmp_path, broker, capture_factory
) -> None:
    capture = capture_factory(broker.host, broker.port, persistent=True, client_id="cap-full")
    config = depot_config(
        tmp_path,
        broker.host,
        broker.port,
        summary_period_s=0.01,
        outage_summary_period_s=0.01,  # no thinning: let the summaries fill the outbox
        outbox_max_messages=100,
    )
    async with run_uplink(config) as running:
        await running.connected()
        await wait_for(lambda: capture.on("summary"), message="summaries flowing")
        broker.stop()
        await wait_for(lambda: not running.uplink.connected, message="outage noticed")
        charger = running.state.chargers["CP1"]
        # 60 alarms and 60 charger states do not fit in 100: after every summary, the
        # superseded charger states go too.
        for n in range(60):
            running.state.raise_alarm("tick", str(n), Severity.INFO, f"tick {n}")
            charger.connectors[1].status = f"Status{n}"
            running.state.notify("connector", "CP1/1")
        await wait_for(
            lambda: running.uplink.outbox.stats()["dropped_charger_states"] > 0,
            timeout=15,
            message="summaries and superseded charger states dropped",
        )
        stats = running.uplink.outbox.stats()
        assert stats["dropped_summaries"] > 0
        assert running.uplink.outbox.count <= 100
        broker.start()
        await running.connected()
        # Summaries keep coming every 10 ms: wait for the backlog's last message, not for an
        # empty outbox.
        await wait_for(lambda: len(capture.on("alarms")) >= 60, timeout=15, message="every alarm")
        last = running.uplink.outbox.seq
        await wait_for(
            lambda: any(m.data.get("seq") == last for m in capture.all()), message="the last seq"
        )
    unique = assert_gapless(capture.all())  # dropped messages never had a seq: no gap
    alarms = [m.data["subject"] for m in unique if m.topic.endswith("/alarms")]
    assert alarms == [str(n) for n in range(60)]  # every alarm, in order
    states = [m.data for m in unique if m.topic.endswith("/chargers/CP1")]
    assert states[-1]["connectors"][0]["status"] == "Status59"  # the latest state survived
    reported = [m.data["outbox"] for m in unique if m.topic.endswith("/summary")][-1]
    assert reported["dropped_summaries"] > 0 and reported["dropped_charger_states"] > 0


async def test_retained_charger_states_come_back_after_a_broker_lost_them(
    tmp_path, capture_factory
) -> None:
    """Issue #22.11: mosquitto restarted without persistence has no retained message left."""
    workdir = tmp_path / "volatile-broker"
    workdir.mkdir()
    broker = Mosquitto(workdir, free_port(), persistence=False)
    broker.start()
    try:
        config = depot_config(tmp_path, broker.host, broker.port)
        async with run_uplink(config) as running:
            await running.connected()
            await running.drained()
            generation = running.uplink._generation
            broker.stop()
            await wait_for(lambda: not running.uplink.connected, message="outage noticed")
            broker.start()
            await wait_for(
                lambda: running.uplink.connected and running.uplink._generation != generation,
                message="reconnected",
            )
            await running.drained()
            late = capture_factory(broker.host, broker.port, prefix=config.topic_prefix)
            chargers = {f"{config.topic_prefix}/chargers/{c}" for c in ("CP1", "CP%2B2")}
            await wait_for(
                lambda: chargers <= {m.topic for m in late.all() if m.retain},
                message="every charger's retained state",
            )
    finally:
        broker.stop()


async def test_a_failing_store_raises_store_failed_once_and_counts_what_is_lost(
    tmp_path, mosquitto, caplog
) -> None:
    """Issue #22.12: the first failed write is a critical alarm; lost messages are counted."""
    import logging
    import sqlite3

    config = depot_config(tmp_path, mosquitto.host, mosquitto.port, unique_prefix())
    async with run_uplink(config) as running:
        await running.connected()
        await running.drained()

        def failing(messages):
            raise sqlite3.OperationalError("disk I/O error")

        running.uplink.outbox.append = failing  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="sitectl.uplink"):
            for n in range(5):
                running.state.raise_alarm("tick", str(n), Severity.INFO, f"tick {n}")
            await wait_for(
                lambda: ("store_failed", "store") in running.state.alarms, message="alarm"
            )
            await wait_for(lambda: running.uplink.outbox.lost >= 6, message="counted")
        alarm = running.state.alarms[("store_failed", "store")]
        assert alarm.severity is Severity.CRITICAL and "disk I/O error" in alarm.text
        assert running.uplink.outbox.stats()["lost"] == running.uplink.outbox.lost
        critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(critical) == 1
