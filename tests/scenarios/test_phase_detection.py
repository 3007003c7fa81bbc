"""On-demand phase detection: an installer asks "check charger X's wiring now" over the API.

Real sockets all the way: simulated OCPP chargers, the simulated Modbus meter that measures what
they really draw (through their real wiring), and sitectl's HTTP server with its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from sitectl.cli import main
from sitectl.http.server import HttpServer
from sitectl.sim.charger import SimEv
from sitectl.sim.site import Site
from sitectl.state import Severity
from sitectl.uplink.commands import handle_command
from tests.helpers import wait_for
from tests.scenarios.conftest import RAMP_S, scenario_config

TOKEN = "phase-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Site], Any]]:
    """sitectl's HTTP server for a simulated site, on a free port; yields its base URL."""
    tasks: list[asyncio.Task] = []

    async def start(site: Site) -> str:
        tests = site.loop.phase_tests
        server = HttpServer(
            site.config,
            site.state,
            commands=lambda n, p: handle_command(site.state, site.config, n, p, phase_tests=tests),
            phase_tests=tests,
            port=0,
        )
        tasks.append(asyncio.create_task(server.run()))
        await asyncio.wait_for(server.ready.wait(), 10)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def answer(http: aiohttp.ClientSession, url: str, timeout: float) -> dict[str, Any]:
    """Poll the test's GET until it is done; fail after `timeout` s."""
    found: dict[str, Any] = {}

    async def done() -> bool:
        async with http.get(url) as reply:
            assert reply.status == 200
            found.update(await reply.json())
        return bool(found["done"])

    await wait_for(done, timeout=timeout, interval=0.2, message=lambda: f"the test: {found}")
    return found


async def test_a_miswired_single_phase_charger_is_found_on_demand(tmp_path, make_site, serve):
    # A is configured L1-L2-L3 but wired L2-L3-L1: its single-phase vehicle loads the site's
    # L2. B charges a three-phase vehicle under the same meter and must not be raised while A
    # steps (the hold itself is unit-tested in tests/control/test_phase_test.py).
    config = scenario_config(
        tmp_path,
        [{"id": "A"}, {"id": "B"}],
        feeders=[{"id": "feeder", "limit_a": 50}],
        http={"token": TOKEN},
    )
    site = await make_site(config, wiring={"A": "L2-L3-L1"})
    url = await serve(site)
    await site.depot.plug_in("A", SimEv(phases=1, max_a=32))
    await site.depot.plug_in("B", SimEv(max_a=32))
    await wait_for(
        lambda: site.draw("A") > 5 and site.draw("B") > 5, timeout=10, message="charging"
    )
    await site.cycles(10)  # settled
    assert site.draw("A") > 5 and site.draw("B") > 5
    b_limit = site.depot.chargers["B"].limit_a(1)
    b_limits: list[float] = []
    sim_b = site.depot.chargers["B"]
    install = sim_b.install

    def install_and_record(connector_id, profile):
        # B's limit after every profile it takes during the test (event-driven, no polling).
        install(connector_id, profile)
        b_limits.append(sim_b.limit_a(1))

    sim_b.install = install_and_record
    mark = time.monotonic()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/chargers/A/detect-phases", headers=AUTH) as reply:
            assert reply.status == 202, await reply.text()
            started = await reply.json()
        assert started["state"] == "running" and started["meter"] == "grid"
        # Asking again while it runs gives the same test (not a second one).
        async with http.post(f"{url}/api/chargers/A/detect-phases", headers=AUTH) as reply:
            assert (
                reply.status == 202
                and (await reply.json())["requested_at"] == (started["requested_at"])
            )
        result = await answer(http, f"{url}/api/chargers/A/detect-phases", timeout=30)
    took = time.monotonic() - mark
    sim_b.install = install
    assert result["state"] == "mismatch", result
    assert result["observed"] == {"L1": "L2"} and result["configured"] == "L1-L2-L3"
    assert "its L1 on L2, but is configured L1-L2-L3" in result["text"]
    assert took < 30
    alarm = site.state.alarms.get(("phase_rotation_mismatch", "A"))
    assert alarm is not None and "its L1 on L2" in alarm.text
    assert ("phase_rotation_mismatch", "B") not in site.state.alarms
    # Held, never raised, during the test; and nothing above a limit for longer than a ramp.
    assert b_limits, "B took no profile during the test: nothing was checked"
    assert max(b_limits) <= b_limit + 0.05, (b_limit, b_limits)
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    # After the test A gets its share back through the normal allocation.
    await wait_for(lambda: site.draw("A") > 5, timeout=10, message="A charging again")


async def test_answers_without_a_test_and_refusals(tmp_path, make_site, serve, capsys):
    config = scenario_config(tmp_path, [{"id": "A"}, {"id": "C"}], http={"token": TOKEN})
    site = await make_site(config)
    url = await serve(site)
    async with aiohttp.ClientSession() as http:
        # No token, a wrong token: refused, and nothing started.
        async with http.post(f"{url}/api/chargers/A/detect-phases") as reply:
            assert reply.status == 401
        bad = {"Authorization": "Bearer not-the-token"}
        async with http.post(f"{url}/api/chargers/A/detect-phases", headers=bad) as reply:
            assert reply.status == 401
        assert site.loop.phase_tests.get("A") is None
        # Unknown charger: 404 for both.
        async with http.post(f"{url}/api/chargers/NOPE/detect-phases", headers=AUTH) as reply:
            assert reply.status == 404
            assert (await reply.json())["field"] == "charger_id"
        async with http.get(f"{url}/api/chargers/NOPE/detect-phases", headers=AUTH) as reply:
            assert reply.status == 404
        # Never tested: says so.
        async with http.get(f"{url}/api/chargers/C/detect-phases") as reply:
            assert reply.status == 200 and (await reply.json())["state"] == "none"
        # Connected, no vehicle: a clear answer at once (200, done).
        async with http.post(f"{url}/api/chargers/C/detect-phases", headers=AUTH) as reply:
            assert reply.status == 200
            body = await reply.json()
        assert body["state"] == "no_session" and body["done"]
        assert "plug in a vehicle" in body["text"]
        # The same through the CLI (a client of this API, with the token from the YAML).
        code = await asyncio.to_thread(
            main, ["detect-phases", "-c", str(tmp_path / "site.yaml"), "C", "--api-url", url]
        )
        assert code == 4
        assert "C: no session" in capsys.readouterr().out
        # A bad body is refused with the field named.
        async with http.post(
            f"{url}/api/chargers/C/detect-phases", headers=AUTH, json={"timeout_s": 1}
        ) as reply:
            assert reply.status == 422 and (await reply.json())["field"] == "timeout_s"


async def test_a_balanced_three_phase_vehicle_cannot_tell_and_says_so(tmp_path, make_site, serve):
    config = scenario_config(tmp_path, [{"id": "A"}, {"id": "B"}], http={"token": TOKEN})
    site = await make_site(config, wiring={"A": "L2-L3-L1"})
    url = await serve(site)
    await site.depot.plug_in("A", SimEv(phases=3, max_a=32))
    await wait_for(lambda: site.draw("A") > 25, timeout=10, message="A charging")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/chargers/A/detect-phases", headers=AUTH) as reply:
            assert reply.status == 202
        # B has no session: a second test under the same meter meanwhile is refused (409).
        async with http.post(f"{url}/api/chargers/B/detect-phases", headers=AUTH) as reply:
            assert reply.status == 409, await reply.text()
        result = await answer(http, f"{url}/api/chargers/A/detect-phases", timeout=30)
    assert result["state"] == "undecidable", result
    assert "balanced" in result["text"] and "single-phase vehicle" in result["text"]
    assert ("phase_rotation_mismatch", "A") not in site.state.alarms


async def test_a_correctly_wired_charger_is_confirmed_and_its_alarm_cleared(
    tmp_path, make_site, serve
):
    # An earlier finding (the installer has since fixed the wiring): the test clears it.
    config = scenario_config(
        tmp_path, [{"id": "A", "phases": 1, "phase_rotation": "L3"}], http={"token": TOKEN}
    )
    site = await make_site(config)
    url = await serve(site)
    site.state.raise_alarm("phase_rotation_mismatch", "A", Severity.WARNING, "an old finding")
    await site.depot.plug_in("A", SimEv(phases=1, max_a=32))
    await wait_for(lambda: site.draw("A") > 25, timeout=10, message="A charging")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/chargers/A/detect-phases", headers=AUTH) as reply:
            assert reply.status == 202
        result = await answer(http, f"{url}/api/chargers/A/detect-phases", timeout=30)
    assert result["state"] == "matches", result
    assert result["observed"] == {"L1": "L3"} and result["text"].startswith("wired as configured")
    assert ("phase_rotation_mismatch", "A") not in site.state.alarms
