"""The dashboard of a running demo depot in a real headless Chromium (Debian's, via Playwright)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright.async_api import Page, async_playwright

from sitectl.config import Config
from sitectl.http.server import HttpServer
from sitectl.sim import DEMO_CONFIG
from sitectl.sim.demo import DemoParts, run_demo
from sitectl.state import (
    CircuitStatus,
    PlanForecast,
    PlanStep,
    SessionPlan,
    SessionState,
    SiteState,
)
from tests.helpers import wait_for

DEMO = DEMO_CONFIG
# The flags a root session needs, and no calls home (this machine's network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def wait_js(page: Page, expression: str, timeout: float = 30_000) -> None:
    """Wait until `expression` is truthy in the page.

    Not `Page.wait_for_function`: that evaluates its predicate as a string inside the page,
    which the dashboard's Content-Security-Policy (no 'unsafe-eval') forbids, as it should.
    """
    await wait_for(
        lambda: page.evaluate(f"!!({expression})"),
        timeout=timeout / 1000,
        interval=0.05,
        message=expression,
    )


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        # Fail, never skip: scripts/test installs Debian's chromium.
        pytest.fail(
            "chromium is not installed; run scripts/test (it installs it) or "
            "apt-get install chromium"
        )
    return found


async def test_dashboard_shows_chargers_and_a_live_chart(tmp_path: Path) -> None:
    executable = chromium()
    parts: list[DemoParts] = []
    demo = asyncio.create_task(run_demo(DEMO, speed=120, out=io.StringIO(), on_ready=parts.append))
    try:
        await wait_for(lambda: bool(parts), timeout=30, message="the demo to start")
        app, config = parts[0].app, parts[0].config
        await wait_for(
            lambda: app.state.control.cycles > 0, timeout=30, message="a first control cycle"
        )
        url = f"http://127.0.0.1:{config.http.listen_port}/"
        # A firmware rollout to every charger: the idle ones install while the page is open.
        rollouts = next(c for c in app.components if c.name == "firmware-rollouts")
        rollouts.start(parts[0].firmware_url, "all")
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                # The Content-Security-Policy must not block anything the dashboard uses.
                page.on(
                    "console",
                    lambda m: errors.append(m.text) if "Content Security" in m.text else None,
                )
                await page.goto(url)
                await wait_js(
                    page,
                    "document.querySelectorAll('#chargers tbody tr').length > 0",
                    timeout=30_000,
                )
                await wait_js(
                    page, "Number(document.body.dataset.chartPoints || 0) > 0", timeout=45_000
                )
                first = await page.evaluate("document.body.dataset.updated")
                await wait_js(page, f"document.body.dataset.updated !== {first!r}", timeout=10_000)
                await wait_js(
                    page,
                    "(document.querySelector('#firmware tr[data-rollout]')?.textContent ?? '')"
                    ".includes('installed')",
                    timeout=30_000,
                )
                firmware = await page.locator("#firmware").inner_text()
                rows = await page.locator("#chargers tbody tr").count()
                versions = await page.locator("#chargers td.firmware").all_inner_texts()
                tree = await page.locator("#circuits").inner_text()
                headline = await page.locator("#headline").inner_text()
                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                tablet = await browser.new_page(viewport={"width": 820, "height": 1180})
                await tablet.goto(url)
                await wait_js(
                    tablet,
                    "document.querySelectorAll('#chargers tbody tr').length > 0",
                    timeout=30_000,
                )
                await tablet.screenshot(path=str(tmp_path / "dashboard-tablet.png"))
            finally:
                await browser.close()
    finally:
        if parts:
            parts[0].app.stop()
        await asyncio.wait_for(demo, 60)
    assert rows == len(config.chargers)
    # Every charger's version as it booted (the simulators report theirs).
    assert len(versions) == rows and all(v.split()[0][0].isdigit() for v in versions), versions
    assert "grid" in tree and "feeder-a" in tree and "L1" in tree
    assert "kW" in headline and "charging" in headline
    assert "#1" in firmware and "sim-charger-2.0.bin" in firmware and "1 image" in firmware
    assert errors == []
    assert shot.stat().st_size > 20_000


# A fixed depot for the columns: one 1.6 and one 2.0.1 charger on an unmetered feeder.

#: The state's injected clocks (never compared with the real ones).
NOW = datetime(2026, 3, 2, 3, tzinfo=UTC)
NOW_MONO = 5000.0


def fixed_config() -> Config:
    return Config.model_validate(
        {
            "site": {
                "id": "cols",
                "limit_kw": 200,
                "phase_limit_a": 300,
                "meter": "grid-meter",
                "non_ev_max_a": 40,
            },
            "circuits": [{"id": "feeder-a", "limit_a": 120, "chargers_only": True}],
            "chargers": [
                {"id": "CP16", "circuit": "feeder-a", "max_current_a": 32, "password": "x" * 16},
                {
                    "id": "CP201",
                    "circuit": "feeder-a",
                    "max_current_a": 32,
                    "ocpp_version": "2.0.1",
                    "password": "y" * 16,
                },
            ],
            "devices": [{"name": "grid-meter", "profile": "eastron-sdm630", "host": "h"}],
            "http": {"listen_host": "127.0.0.1", "open_reads": True},
            "mqtt": {"enabled": False},
        }
    )


def fixed_state(cfg: Config) -> SiteState:
    """Both chargers charge a vehicle: 1.6 says Charging, 2.0.1 only Occupied."""
    state = SiteState(cfg, clock=lambda: NOW, monotonic=lambda: NOW_MONO)
    state.control.cycles = 1
    state.control.circuits["grid"] = CircuitStatus(
        (300.0,) * 3, (80.0, 70.0, 60.0), (20.0,) * 3, (90.0,) * 3, "measured"
    )
    state.control.circuits["feeder-a"] = CircuitStatus(
        (120.0,) * 3, None, (0.0,) * 3, (32.0,) * 3, "none"
    )
    state.readings["grid-meter"] = SimpleNamespace(ok=True, power_total_kw=50.0)
    for number, charger in enumerate(state.chargers.values(), start=1):
        charger.connected = charger.upstream_connected = True
        charger.firmware_version = "1.0.0"
        charger.limit_a = 16.0
        connector = charger.connectors[1]
        connector.status = "Charging" if charger.ocpp_version == "1.6" else "Occupied"
        connector.current_a, connector.current_mono = (16.0, 16.0, 16.0), NOW_MONO - 2
        connector.session = SessionState(
            f"{charger.charger_id}/{number}",
            1,
            datetime(2026, 3, 2, 2, tzinfo=UTC),
            transaction_id=str(number),
            energy_wh=5000,
        )
    # The 1.6 bus said nothing: default departure, default need (not a cap). The 2.0.1 one
    # stated both in its charging needs.
    state.control.sessions["CP16/1"] = SessionPlan(
        NOW + timedelta(hours=2, minutes=30), "default", 40.0, "default", False, 16.0
    )
    state.control.sessions["CP201/1"] = SessionPlan(
        NOW + timedelta(hours=4), "vehicle", 55.0, "vehicle", True, 16.0
    )
    return state


@asynccontextmanager
async def dashboard(
    cfg: Config, state: SiteState, ready: str = "document.body.dataset.updated"
) -> AsyncIterator[Page]:
    """The dashboard of `state` in headless Chromium (UTC, en-GB), once `ready` holds (its
    first render). Fails on a JavaScript error, thrown or logged with console.error (the
    browser's own lines for a refused request, a 401 at a wrong token, are no script's)."""
    executable = chromium()
    server = HttpServer(cfg, state, port=0)
    task = asyncio.create_task(server.run())
    try:
        await asyncio.wait_for(server.ready.wait(), 10)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS
            )
            try:
                context = await browser.new_context(
                    viewport={"width": 1400, "height": 1000}, timezone_id="UTC", locale="en-GB"
                )
                page = await context.new_page()
                page.set_default_timeout(10_000)
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on(
                    "console",
                    lambda m: (
                        errors.append(m.text)
                        if m.type == "error" and not m.text.startswith("Failed to load resource")
                        else None
                    ),
                )
                await page.goto(f"http://127.0.0.1:{server.port}/")
                await wait_js(page, ready, timeout=30_000)
                yield page
                assert errors == []
            finally:
                await browser.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def cell(page: Page, charger: str, column: str) -> str:
    return await page.locator(f'#chargers tr[data-charger="{charger}"] td.{column}').inner_text()


async def test_the_same_situation_reads_the_same_on_1_6_and_2_0_1() -> None:
    cfg = fixed_config()
    async with dashboard(cfg, fixed_state(cfg)) as page:
        status16 = await cell(page, "CP16", "status")
        status201 = await cell(page, "CP201", "status")
        raw201 = await page.locator(
            '#chargers tr[data-charger="CP201"] td.status [data-status]'
        ).get_attribute("data-status")
    assert status16 == status201 == "charging"
    assert raw201 == "Occupied"  # the charger's own word is kept (tooltip)


async def test_departure_and_need_say_what_was_used_and_where_it_came_from() -> None:
    cfg = fixed_config()
    state = fixed_state(cfg)
    async with dashboard(cfg, state) as page:
        departure16 = await cell(page, "CP16", "departure")
        departure201 = await cell(page, "CP201", "departure")
        need16 = await cell(page, "CP16", "need")
        need201 = await cell(page, "CP201", "need")
        # A fleet file's usual need guides the plan but does not cap it either.
        state.control.sessions["CP16/1"] = SessionPlan(
            NOW + timedelta(hours=3), "fleet", 60.0, "fleet", False, 20.0
        )
        await wait_js(
            page,
            "document.querySelector('#chargers tr[data-charger=\"CP16\"] td.need')"
            ".textContent.includes('fleet file')",
        )
        need_fleet = await cell(page, "CP16", "need")
        departure_fleet = await cell(page, "CP16", "departure")
    assert departure16 == "Mon 05:30 · default"
    assert departure201 == "Mon 07:00 · vehicle"
    assert need16 == "unknown need: charging until the vehicle stops"
    assert need201 == "55 kWh · vehicle"
    assert need_fleet == "about 60 kWh · fleet file, charging until the vehicle stops"
    assert departure_fleet == "Mon 06:00 · fleet file"


async def test_a_firmware_column_follows_a_rollout() -> None:
    cfg = fixed_config()
    state = fixed_state(cfg)
    cp16, cp201 = state.chargers["CP16"], state.chargers["CP201"]

    async def changed(charger: str, text: str) -> str:
        await wait_js(
            page,
            f"document.querySelector('#chargers tr[data-charger=\"{charger}\"] td.firmware')"
            f".textContent === {text!r}",
        )
        return await page.locator("#firmware-versions").inner_text()

    async with dashboard(cfg, state) as page:
        before = await cell(page, "CP201", "firmware")
        versions_before = await page.locator("#firmware-versions").inner_text()
        # An update, local or from the CSMS: the charger's own statuses show its progress.
        cp201.firmware_status = "Installing"
        await changed("CP201", "1.0.0 Installing")
        cp201.firmware_version, cp201.firmware_status = "2.0.0", "Installed"
        versions_after = await changed("CP201", "2.0.0")
        cp16.firmware_status = "InstallationFailed"
        await changed("CP16", "1.0.0 InstallationFailed")
        failed = await page.locator(
            '#chargers tr[data-charger="CP16"] td.firmware .badge'
        ).get_attribute("class")
    assert before == "1.0.0"
    assert versions_before == "versions: 1.0.0 on 2 chargers"
    assert versions_after == "versions: 1.0.0 on 1 charger, 2.0.0 on 1 charger"
    assert "bad" in failed


async def test_an_unmetered_circuit_shows_its_plan_and_says_so() -> None:
    cfg = fixed_config()
    state = fixed_state(cfg)
    feeder = '#circuits [data-node="feeder-a"]'
    async with dashboard(cfg, state) as page:
        title = await page.locator(f"{feeder} > .node-title").inner_text()
        values = await page.locator(f"{feeder} > .phase > .value").all_inner_texts()
        fills = await page.locator(f"{feeder} > .phase .fill").evaluate_all(
            "nodes => nodes.map(n => n.className)"
        )
        grid_values = await page.locator(
            '#circuits [data-node="grid"] > .phase > .value'
        ).all_inner_texts()
        grid_fill = page.locator('#circuits [data-node="grid"] > .phase .fill').first
        grid_class = await grid_fill.get_attribute("class")
        # A meter that fails: what is shown is the plan again, and the title says why.
        grid = state.control.circuits["grid"]
        grid.measured_a, grid.meter_state = None, "failed"
        await wait_js(
            page,
            "document.querySelector('#circuits [data-node=\"grid\"] > .node-title')"
            ".textContent.includes('planned')",
        )
        failed = await page.locator('#circuits [data-node="grid"] > .node-title').inner_text()
        legend = await page.locator("#circuits-section h2").inner_text()
    assert title == "feeder-a no meter: planned, not measured"
    assert values == ["planned 32 / 120 A"] * 3
    assert all("planned" in f.split() for f in fills)
    assert grid_values == ["80 / 300 A", "70 / 300 A", "60 / 300 A"]
    assert "planned" not in grid_class.split()
    assert failed == "grid meter failed: planned, not measured"
    assert "planned" in legend


def plan_steps(amps: list[float]) -> tuple[PlanStep, ...]:
    """8 × 15 min, then hours (the coarse far horizon), at `amps` on three phases."""
    durations = [900.0] * 8 + [3600.0] * (len(amps) - 8)
    starts = [sum(durations[:k]) for k in range(len(durations))]
    return tuple(
        PlanStep(NOW + timedelta(seconds=s), d, a, a * 3 * 0.23)
        for s, d, a in zip(starts, durations, amps, strict=True)
    )


def with_plans(state: SiteState) -> SiteState:
    """CP16 charges until its vehicle stops; CP201 will be 12 kWh short, 40 min late."""
    cp16 = PlanForecast(
        "need_unknown", "no stated need", 3, plan_steps([16.0] * 8 + [16.0] * 4), 44.2, None
    )
    departure = NOW + timedelta(hours=4)
    cp201 = PlanForecast(
        "short",
        "the plan leaves it 12.0 kWh short at its departure",
        3,
        plan_steps([8.0] * 8 + [24.0, 24.0, 0.0, 0.0]),
        44.0,
        56.0,
        ready_at=departure + timedelta(minutes=40),
        shortfall_kwh=12.0,
        late_min=40.0,
        late_rate="planned",
    )
    for key, found in (("CP16/1", cp16), ("CP201/1", cp201)):
        plan = state.control.sessions[key]
        state.control.sessions[key] = SessionPlan(
            plan.departure if key == "CP16/1" else departure,
            plan.departure_source,
            plan.need_kwh,
            plan.need_source,
            plan.capped,
            plan.dispatched_a,
            forecast=found,
            delivered_kwh=5.0,
            planned_at=NOW,
        )
    return state


async def test_the_plan_view_draws_a_row_per_connector_red_where_short(tmp_path: Path) -> None:
    cfg = fixed_config()
    state = with_plans(fixed_state(cfg))
    async with dashboard(cfg, state) as page:
        await wait_js(page, "Number(document.body.dataset.planRows || 0) === 2")
        rows = await page.locator("#plan g[data-plan]").evaluate_all(
            "gs => gs.map(g => [g.dataset.plan, g.dataset.status, g.getAttribute('class')])"
        )
        bands = await page.locator("#plan g[data-plan] path.band").count()
        late = await page.locator('#plan g[data-plan="CP201/1"] rect.late').count()
        ready16 = await page.locator('#plan g[data-plan="CP16/1"] line.ready').count()
        ready201 = await page.locator('#plan g[data-plan="CP201/1"] line.ready').count()
        departures = await page.locator("#plan line.departure").count()
        title = await page.locator('#plan g[data-plan="CP201/1"] > title').text_content()
        # The band's top follows the planned power: CP201 plans 24 A after 2 h, 8 A before.
        box = await page.locator('#plan g[data-plan="CP201/1"] path.band').bounding_box()
        await page.locator("#plan-section").screenshot(path=str(tmp_path / "plan.png"))
        # The plan recovers: the row is no longer red.
        plan = state.control.sessions["CP201/1"]
        recovered = PlanForecast(
            "on_time",
            "the plan reaches its need before it leaves",
            3,
            plan.forecast.steps,
            56.0,
            56.0,
            ready_at=plan.departure - timedelta(minutes=20),
            shortfall_kwh=0.0,
        )
        state.control.sessions["CP201/1"] = SessionPlan(
            plan.departure, "vehicle", 55.0, "vehicle", True, 16.0, recovered, 5.0, NOW
        )
        await wait_js(
            page,
            "document.querySelector('#plan g[data-plan=\"CP201/1\"]')?.dataset.status"
            " === 'on_time'",
            timeout=30_000,
        )
        after = await page.locator('#plan g[data-plan="CP201/1"]').get_attribute("class")
    assert rows == [["CP16/1", "need_unknown", ""], ["CP201/1", "short", "short"]]
    assert bands == 2 and late == 1 and departures == 2
    assert ready16 == 0 and ready201 == 1  # an unknown need has no ready time
    assert "12.0 kWh short" in title and "40 min late" in title
    assert box is not None and box["width"] > 200 and box["height"] > 5
    assert (tmp_path / "plan.png").stat().st_size > 2_000
    assert after == ""


async def test_why_a_charger_gets_less_shows_on_hover_and_on_tap(tmp_path: Path) -> None:
    cfg = fixed_config()
    state = with_plans(fixed_state(cfg))
    feeder = {
        "kind": "circuit",
        "node": "feeder-a",
        "phase": "L1",
        "text": "feeder-a L1's limit holds it: limit 120.0 A; shared with CP201/1 (16 A)",
        "short": "feeder-a L1 at its limit 120 A, shared with 1 other",
    }
    override = {
        "kind": "override",
        "node": "feeder-a",
        "text": "an override (mqtt) lowers feeder-a L1 from 160 A to 120 A until 22:00",
        "short": "override (mqtt) to 120 A until 22:00",
    }
    plan = state.control.sessions["CP16/1"]
    state.control.sessions["CP16/1"] = dataclasses.replace(plan, limited_by=(feeder, override))
    async with dashboard(cfg, state) as page:
        badge = page.locator('#chargers tr[data-charger="CP16"] td.limit .why')
        await badge.wait_for()
        label = await badge.inner_text()
        title = await badge.get_attribute("title")
        none201 = await page.locator('#chargers tr[data-charger="CP201"] .why').count()
        await badge.click()  # a tap: the reasons open under the limit, and stay open
        pop = page.locator('#chargers tr[data-charger="CP16"] .why-pop')
        await pop.wait_for()
        first = await page.evaluate("document.body.dataset.updated")
        await wait_js(page, f"document.body.dataset.updated !== {first!r}")
        still = await pop.count()
        lines = await pop.locator("div").all_inner_texts()
        await page.locator("#chargers-section").screenshot(path=str(tmp_path / "why.png"))
        await page.locator('#chargers tr[data-charger="CP16"] td.limit .why').click()
        await wait_js(page, "!document.querySelector('#chargers .why-pop')")
        await wait_js(page, "Number(document.body.dataset.planRows || 0) === 2")
        row = await page.locator('#plan g[data-plan="CP16/1"] > title').text_content()
    assert label == "why: circuit +1" and none201 == 0
    assert title == f"{feeder['text']}\n{override['text']}"
    assert still == 1 and lines == [feeder["text"], override["text"]]
    assert row is not None and "limited by: feeder-a L1's limit holds it" in row


async def test_limits_in_force_show_with_source_expiry_and_on_the_power_chart() -> None:
    from sitectl.limits import GridLimit

    cfg = fixed_config()
    state = fixed_state(cfg)
    now = state.clock()
    dso = GridLimit(
        "grid",
        "openadr:congestion",
        now - timedelta(minutes=5),
        now + timedelta(hours=1),
        limit_kw=120.0,
        reason="import capacity 120 kW",
        ref="evt-1",
    )
    later = GridLimit(
        "feeder-a",
        "openadr:congestion",
        now + timedelta(hours=2),
        now + timedelta(hours=3),
        limit_a=(60.0, 60.0, 60.0),
        hard=False,
        reason="evening peak",
        ref="evt-2",
    )
    state.limits.publish("openadr:congestion", [dso, later], now)
    state.limits.publish("14a:relay", [], now - timedelta(minutes=2), valid_until=now)
    async with dashboard(cfg, state) as page:
        await wait_js(page, "Number(document.body.dataset.limits || 0) === 1")
        text = await page.locator("#limits").inner_text()
        headline = await page.locator("#headline").inner_text()
        history = await page.evaluate("fetch('/api/history').then((r) => r.json())")
    assert "openadr:congestion" in text and "120 kW" in text and "hard" in text
    assert "import capacity 120 kW" in text
    assert "announced" in text and "60/60/60 A" in text and "soft" in text
    assert "14a:relay: silent, fail-safe applies" in text
    assert "120 / 120 kW" not in headline and "/ 120 kW" in headline and "lowered" in headline
    assert history["limit_kw"] and history["limit_kw"][-1] == 120.0
