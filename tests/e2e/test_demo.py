"""End to end: the demo depot (sitectl as `sitectl run` runs it, a simulated field and CSMS)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from datetime import UTC, datetime, timedelta

import aiohttp
import paho.mqtt.client as mqtt

from sitectl.sim import DEMO_CONFIG
from sitectl.sim.demo import NONCOMPLIANT, DemoParts, run_demo
from tests.helpers import wait_for

DEMO = DEMO_CONFIG

# The building load swings continuously; between two 5 s cycles it can grow by a few amps that
# no command could have known of. Anything beyond that would be a command above a limit.
GROWTH_BETWEEN_CYCLES_A = 5.0


def transaction_messages(frames: list[str]) -> list[str]:
    """Start/stop messages as comparable keys (action and the charger's own fields)."""
    out = []
    for frame in frames:
        message = json.loads(frame)
        if message[0] != 2:
            continue
        action, payload = message[2], message[3]
        if action in ("StartTransaction", "StopTransaction"):
            out.append(
                f"{action} {payload.get('timestamp')} "
                f"{payload.get('meterStart', payload.get('meterStop'))}"
            )
        elif action == "TransactionEvent" and payload["eventType"] != "Updated":
            out.append(
                f"{action} {payload['eventType']} {payload['transactionInfo']['transactionId']}"
            )
    return out


async def set_needs(
    parts: DemoParts, energy_more_kwh: float, departure_in_s: float
) -> dict[str, tuple[datetime, float]]:
    """POST needs for compliant sessions in progress; returns session -> (departure, kWh)."""
    state, config = parts.app.state, parts.config
    token = config.http.token.get_secret_value() if config.http.token else ""
    departure = datetime.now(UTC) + timedelta(seconds=departure_in_s)
    deadlines: dict[str, tuple[datetime, float]] = {}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{config.http.listen_port}") as http:
        for charger in state.chargers.values():
            if charger.charger_id == NONCOMPLIANT:
                continue
            for connector in charger.connectors.values():
                session = connector.session
                if session is None:
                    continue
                wanted = session.energy_wh / 1000 + energy_more_kwh
                response = await http.post(
                    f"/api/sessions/{session.session_id}/needs",
                    json={"energy_kwh": wanted, "departure": departure.isoformat()},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status == 200, await response.text()
                deadlines[session.session_id] = (departure, wanted)
    return deadlines


async def energy_at_departure(
    state, deadlines: dict[str, tuple[datetime, float]]
) -> dict[str, tuple[float, float]]:
    """Each session's energy (kWh) when its departure comes (or when it ended earlier)."""
    departure = min(d for d, _ in deadlines.values())
    await wait_for(
        lambda: datetime.now(UTC) >= departure,
        timeout=(departure - datetime.now(UTC)).total_seconds() + 30,
        interval=0.1,
        message="the first departure",
    )
    found: dict[str, tuple[float, float]] = {}
    sessions = {
        c.session.session_id: c.session
        for ch in state.chargers.values()
        for c in ch.connectors.values()
        if c.session is not None
    }
    sessions.update({s.session_id: s for s in state.ended_sessions})
    for session_id, (_, wanted) in deadlines.items():
        found[session_id] = (sessions[session_id].energy_wh / 1000, wanted)
    return found


class Cloud:
    """The operator's side of MQTT: every message sitectl publishes under its prefix."""

    def __init__(self, broker, prefix: str) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/#", qos=1)
        assert self.subscribed.wait(5)

    def _on_message(self, client, userdata, message) -> None:
        try:
            self.messages.append((message.topic, json.loads(message.payload)))
        except ValueError:
            self.messages.append((message.topic, {}))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_demo_depot_end_to_end_with_an_upstream_outage(mosquitto) -> None:
    parts: list[DemoParts] = []
    output = io.StringIO()
    cloud = Cloud(mosquitto, "sitectl/demo-depot")
    demo = asyncio.create_task(
        run_demo(
            DEMO,
            speed=120,
            out=output,
            on_ready=parts.append,
            mqtt=(mosquitto.host, mosquitto.port),
        )
    )
    await wait_for(lambda: bool(parts), timeout=30, message="the demo to start")
    app, depot, csms = parts[0].app, parts[0].depot, parts[0].csms
    state = app.state
    await wait_for(
        lambda: state.control.cycles > 0 and state.control.sessions_charging > 0,
        timeout=30,
        message="the first allocation within 30 s",
    )
    control = next(c for c in app.components if c.name == "control")
    await wait_for(
        lambda: all(m.failsafe_installed for m in control.memory.values()),
        timeout=30,
        message="fail-safe profiles everywhere",
    )
    # Before this, chargers ran on their own defaults: nothing sitectl had commanded yet.
    depot.samples.clear()
    # An operator tells sitectl, through the local API, what the vehicles need by when.
    await wait_for(
        lambda: (
            sum(
                c.session is not None
                for ch in state.chargers.values()
                for c in ch.connectors.values()
            )
            >= 6
        ),
        timeout=30,
        message="vehicles plugged in",
    )
    # 20 Wh within 45 s is about 7 A on one phase: feasible for every vehicle in sitectl's own
    # (real-time) model; the simulated vehicles charge 120 times faster than that.
    deadlines = await set_needs(parts[0], energy_more_kwh=0.02, departure_in_s=45)
    assert len(deadlines) >= 3
    checker = asyncio.create_task(energy_at_departure(state, deadlines))
    # The non-compliant charger is found (10 s grace in the demo config).
    await wait_for(
        lambda: ("charger_noncompliant", NONCOMPLIANT) in state.alarms,
        timeout=40,
        message="non-compliance detected",
    )
    # The cloud goes away for a while; vehicles keep coming and going.
    await csms.stop()
    await wait_for(
        lambda: not any(c.upstream_connected for c in state.chargers.values()),
        timeout=10,
        message="every upstream lost",
    )
    sessions_before = len(state.ended_sessions)
    await wait_for(
        lambda: len(state.ended_sessions) > sessions_before,
        timeout=60,
        message="a session to end during the outage",
    )
    await csms.start()
    await wait_for(
        lambda: all(c.upstream_connected for c in state.chargers.values()),
        timeout=90,
        message="every upstream back",
    )
    # Journals drain, then the CSMS has every start and stop every charger sent.
    journal = next(c for c in app.components if c.name == "ocpp-server").journal
    await wait_for(lambda: journal.pending() == 0, timeout=30, message="the journals to drain")
    app.stop()
    assert await asyncio.wait_for(demo, 60) == 0
    for charger_id, sim in depot.chargers.items():
        sent = transaction_messages(sim.sent())
        received = transaction_messages(csms.frames(charger_id, "in"))
        assert sent, charger_id
        # At least once, in order: duplicates only of a message in flight at a cut.
        deduplicated = [m for i, m in enumerate(received) if i == 0 or m != received[i - 1]]
        assert deduplicated == sent, charger_id
    # Every vehicle with a feasible need had its energy by its departure.
    short = {
        sid: (got, wanted) for sid, (got, wanted) in (await checker).items() if got < wanted - 0.05
    }
    assert short == {}
    # Never above a limit by command (the depot's monitor saw every charger's composite limit).
    assert depot.violations(tolerance_a=GROWTH_BETWEEN_CYCLES_A) == []
    assert "charging" in output.getvalue() and "dashboard: http://" in output.getvalue()
    # The cloud got summaries, and every message it got carries the next seq: no gap.
    await wait_for(
        lambda: any(
            t.endswith("/status") and m.get("status") == "offline" for t, m in cloud.messages
        ),
        message="the orderly offline",
    )
    cloud.close()
    assert sum(1 for t, _ in cloud.messages if t.endswith("/summary")) >= 2
    seqs = sorted({m["seq"] for _, m in cloud.messages if "seq" in m})
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert any(t.endswith("/sessions") and m.get("event") == "stopped" for t, m in cloud.messages)
