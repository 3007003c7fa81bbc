"""sitectl restarts mid-session (crash, update, power cut of the PC): no bus is forgotten."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sitectl.sim.charger import SimEv
from tests.helpers import wait_for
from tests.scenarios.conftest import RAMP_S, scenario_config

CHARGERS = [
    {"id": "A", "ocpp_version": "1.6"},
    {"id": "B", "ocpp_version": "1.6", "connectors": 2},
    {"id": "C", "ocpp_version": "2.0.1"},
]


async def test_every_session_is_found_again_and_charged_after_a_restart(tmp_path, make_site):
    config = scenario_config(tmp_path, CHARGERS, control={"default_energy_kwh": 60})
    site = await make_site(config, {"feeder": lambda t: (10.0, 10.0, 10.0)})
    slots = [("A", 1), ("B", 1), ("B", 2), ("C", 1)]
    for charger_id, connector in slots:
        await site.depot.chargers[charger_id].plug_in(connector, SimEv(max_a=32))
    # 90 A of feeder for four buses, two of them sharing B's 32 A: at least 12 A each.
    await wait_for(
        lambda: all(site.draw(c, n) > 12 for c, n in slots),
        timeout=15,
        message=lambda: f"every bus charging: {[round(site.draw(c, n), 1) for c, n in slots]}",
    )
    # The operator told sitectl one bus's need (MQTT/REST in real life).
    bus = site.state.chargers["B"].connectors[2].session
    bus.energy_wanted_kwh, bus.need_source = 350.0, "command"
    site.state.notify("session_needs", "B/2")
    before = {(c, n): site.state.chargers[c].connectors[n].session.session_id for c, n in slots}

    # From now on the chargers report every 60 s, a common sample interval: only sitectl's own
    # questions find the sessions again within seconds.
    for sim in site.depot.chargers.values():
        sim.report_s = 60.0
    await site.restart_sitectl()
    mark = time.monotonic()
    # Found again through the triggered status and meter values (1.6) and the transaction
    # status and triggered TransactionEvent (2.0.1), well before any periodic report.
    await wait_for(
        lambda: all(
            site.state.chargers[c].connectors[n].session is not None
            and site.state.chargers[c].connectors[n].session.session_id == before[(c, n)]
            for c, n in slots
        ),
        timeout=10,
        message="every session restored",
    )
    restored = site.state.chargers["B"].connectors[2].session
    assert restored.origin == "restored"
    assert restored.energy_wanted_kwh == 350 and restored.need_source == "command"
    # With reports a minute apart the chargers' draws would go stale and the meter's reading
    # count as building load (the worst case for the breaker): every bus held back. sitectl
    # lowers each charger's MeterValues interval at the connection (ocpp.meter_values_interval_s).
    await wait_for(
        lambda: all(sim.report_s == 1.0 for sim in site.depot.chargers.values()),
        timeout=10,
        message=lambda: f"intervals {[s.report_s for s in site.depot.chargers.values()]}",
    )
    await wait_for(
        lambda: site.state.chargers["C"].capabilities.get("sampling", {}).get("was") == 60,
        timeout=5,
        message="the interval found recorded",
    )
    # The physical result: every bus draws again as much as before the restart, within limits.
    await wait_for(
        lambda: all(site.draw(c, n) > 12 for c, n in slots),
        timeout=10,
        message=lambda: f"buses charging again: {[round(site.draw(c, n), 1) for c, n in slots]}",
    )
    assert "meter_values_slow" not in {code for code, _ in site.state.alarms}
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    alarms = {code for code, _ in site.state.alarms}
    assert "session_unmatched" not in alarms
    # Nothing is left unconfirmed after the confirmation time.
    await wait_for(
        lambda: site.state.restored_sessions == {}, timeout=10, message="recovery to finish"
    )
    assert all(site.state.chargers[c].connectors[n].session for c, n in slots)


async def test_a_session_that_ended_while_sitectl_was_down_is_closed(tmp_path, make_site):
    config = scenario_config(tmp_path, CHARGERS)
    site = await make_site(config, confirm_s=1.0)
    await site.depot.chargers["A"].plug_in(1, SimEv(max_a=32))
    await site.depot.chargers["C"].plug_in(1, SimEv(max_a=32))
    await wait_for(
        lambda: site.draw("A") > 15 and site.draw("C") > 15, timeout=15, message="charging"
    )
    await site.stop_sitectl()
    # While sitectl is down both vehicles leave; the chargers cannot tell anyone (the
    # 2.0.1 charger's Ended event goes nowhere and is not queued in this simulation).
    site.depot.chargers["A"].plugs.clear()
    site.depot.chargers["C"].plugs.clear()
    await site.start_sitectl()
    assert set(site.state.restored_sessions) == {("A", 1), ("C", 1)}
    await site.depot.reconnect_chargers()
    await wait_for(
        lambda: site.state.restored_sessions == {},
        timeout=10,
        message="the ended sessions to be closed",
    )
    ended = {s.charger_id for s in site.state.ended_sessions}
    assert ended == {"A", "C"}
    assert site.state.chargers["A"].connectors[1].session is None
    assert site.state.chargers["C"].connectors[1].session is None


async def test_the_limits_in_force_are_known_from_the_first_cycle_after_a_restart(
    tmp_path, make_site
):
    # Issue #17.6: without them every charger is budgeted at its maximum (it "holds nothing
    # sitectl knows") until its fail-safe is installed again, and every first command is an
    # "increase" sent before any decrease.
    config = scenario_config(
        tmp_path, [{"id": "A"}, {"id": "B"}], control={"profile_validity_s": 10}
    )
    site = await make_site(config, {"feeder": lambda t: (20.0, 20.0, 20.0)})
    for charger_id in "AB":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    await wait_for(lambda: site.draw("A") > 20 and site.draw("B") > 20, timeout=10)
    before = {c: site.loop.memory[c].commanded_a for c in "AB"}
    await site.stop_sitectl()
    await site.start_sitectl()  # the chargers have not reconnected yet
    for charger_id in "AB":
        mem = site.loop.memory[charger_id]
        assert mem.failsafe_ever and not mem.failsafe_installed
        assert mem.commanded_a == before[charger_id]
    built = site.loop.builder.build(
        site.state, site.loop.meters, site.loop.memory, datetime.now(UTC), time.monotonic()
    )
    # Disconnected but within their limits' validity: budgeted at those, not at 32 A.
    assert built.fixed["A"] == (before["A"],) * 3
    await site.depot.reconnect_chargers()
    await wait_for(
        lambda: all(site.loop.memory[c].failsafe_installed for c in "AB"),
        timeout=10,
        message="fail-safes back",
    )
