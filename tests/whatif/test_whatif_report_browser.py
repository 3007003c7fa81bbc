"""The what-if report in a real headless Chromium (Debian's, via Playwright): it renders from
the file alone (no network), and its plots have data."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from sitectl.whatif.scenario import Scenario, prepare, run, write_outputs
from tests.http.test_dashboard_browser import CHROMIUM_ARGS, chromium, wait_js


@pytest.fixture
def report(depot, tmp_path: Path) -> tuple[list[dict], Path]:
    """Two runs of the small depot (45 A and 200 A connections) and their report page."""
    files = depot(phase_a=45, limit_kw=200)
    bigger = depot(phase_a=200, limit_kw=200, name="bigger.yaml")["site"]
    scenario = Scenario(
        site=files["site"],
        timetable=files["timetable"],
        building=files["building"],
        start="17:00",
        days=0.25,
        environ={},
    )
    runs = [run(prepare(scenario)), run(prepare(scenario, bigger, "bigger"))]
    return runs, write_outputs(tmp_path / "out", runs)["html"]


async def test_the_report_of_two_runs_renders_offline_with_data_in_every_plot(
    report, tmp_path: Path
) -> None:
    executable = chromium()
    runs, page_file = report
    html = page_file.read_text()
    assert "https://" not in html.replace("https://github.com/leeoniya/uPlot", "")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 1000})
            requests: list[str] = []
            # Nothing but the file itself may be fetched: no CDN, no network.
            context.on(
                "request",
                lambda r: requests.append(r.url) if not r.url.startswith("file:") else None,
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(page_file.as_uri())
            await wait_js(page, "document.body.dataset.ready === '1'", timeout=20_000)
            plots = int(await page.evaluate("document.body.dataset.plots"))
            points = int(await page.evaluate("document.body.dataset.points"))
            canvases = await page.locator("canvas").count()
            verdict = await page.locator("#verdict").inner_text()
            vehicles = await page.locator("#vehicles tbody tr").count()
            options = await page.locator("#vehicle option").count()
            # Another vehicle's state of charge on demand.
            second = await page.locator("#vehicle option").nth(1).get_attribute("value")
            await page.select_option("#vehicle", second)
            title = await page.locator("#soc-chart .u-title").inner_text()
            shot = tmp_path / "report.png"
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()
    assert errors == []
    assert requests == []
    nodes = len(runs[0]["circuits"])
    # The grid chart, each circuit once per run, the state of charge.
    assert plots == 1 + 2 * nodes + 1
    assert canvases >= plots
    assert points > 1000
    assert "site" in verdict and "bigger" in verdict and "departures" in verdict
    assert "What changes" in verdict
    assert vehicles == 3 and options == 3
    assert second in title
    assert shot.stat().st_size > 20_000
