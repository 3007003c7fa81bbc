"""The dashboard's utilization view in a real headless Chromium: it renders the store's numbers,
its chart has data, and no script error is thrown or logged."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sitectl.state import SiteState
from sitectl.store import Store
from tests.http.test_dashboard_browser import dashboard, wait_js
from tests.utilization.support import Raw, depot, ms
from tests.utilization.test_report_raw import T0, at, write_two_hours


async def test_the_utilization_view_shows_the_report(tmp_path: Path) -> None:
    config = depot(tmp_path)
    store = Store(config.storage.path)
    raw = Raw(store)
    write_two_hours(raw)
    raw.session(
        session_id="CP1/1",
        charger="CP1",
        connector=1,
        started_ms=ms(at(10)),
        ended_ms=ms(at(85)),
        energy_wh=7290.0,
        need_kwh=9.0,
        by_departure_wh=7290.0,
        outcome="missed",
    )
    raw.flush()
    now = T0 + timedelta(days=1)
    state = SiteState(config, clock=lambda: now)
    try:
        async with dashboard(config, state) as page:
            link = await page.locator("nav.views a").get_attribute("href")
            await page.goto(page.url.rstrip("/") + link)
            await wait_js(page, "Number(document.body.dataset.utilRows || 0) === 3")
            await wait_js(page, "Number(document.body.dataset.nightPoints || 0) > 0")
            charging = await page.locator(
                '#connectors tr[data-connector="CP1/1"] td.charging-share'
            ).inner_text()
            energy = await page.locator(
                '#connectors tr[data-connector="CP1/1"] td.energy'
            ).inner_text()
            bars = await page.locator('#connectors tr[data-connector="CP1/1"] .shares span').count()
            deferred = await page.locator(
                '#util-circuits tr[data-node="feeder"] td.deferred'
            ).inner_text()
            missed = await page.locator("#nights td.missed").all_inner_texts()
            canvas = await page.locator("#nights-chart canvas").count()
            headline = await page.locator("#headline").inner_text()
            await page.screenshot(path=str(tmp_path / "utilization.png"), full_page=True)
            # Another window: the page asks again and redraws.
            first = await page.evaluate("document.body.dataset.updated")
            await page.select_option("#range", "30d")
            await wait_js(page, f"document.body.dataset.updated !== {first!r}")
            error = await page.locator("#util-error").inner_text()
    finally:
        store.close()
    charging_s = 28 * 60 + 5 * 60 + 25 * 30  # as in test_report_raw
    assert charging == f"{100 * round(charging_s / 7 / 86400, 4):.1f} %"  # the API rounds shares
    assert energy == "7.3 kWh"
    assert bars >= 3  # charging, idle, available, ... segments
    assert deferred == "1.5 kWh"
    assert missed == ["1"]
    assert canvas >= 1
    assert "Europe/Berlin" in headline and "recorded" in headline
    assert error == ""
    assert (tmp_path / "utilization.png").stat().st_size > 10_000
