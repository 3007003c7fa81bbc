"""The dashboard of a running demo depot in a real headless Chromium (Debian's, via Playwright)."""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from sitectl.sim import DEMO_CONFIG
from sitectl.sim.demo import DemoParts, run_demo
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
                await page.goto(url)
                await page.wait_for_function(
                    "document.querySelectorAll('#chargers tbody tr').length > 0", timeout=30_000
                )
                await page.wait_for_function(
                    "Number(document.body.dataset.chartPoints || 0) > 0", timeout=45_000
                )
                first = await page.evaluate("document.body.dataset.updated")
                await page.wait_for_function(
                    f"document.body.dataset.updated !== {first!r}", timeout=10_000
                )
                await page.wait_for_function(
                    "(document.querySelector('#firmware tr[data-rollout]')?.textContent ?? '')"
                    ".includes('installed')",
                    timeout=30_000,
                )
                firmware = await page.locator("#firmware").inner_text()
                rows = await page.locator("#chargers tbody tr").count()
                tree = await page.locator("#circuits").inner_text()
                headline = await page.locator("#headline").inner_text()
                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                tablet = await browser.new_page(viewport={"width": 820, "height": 1180})
                await tablet.goto(url)
                await tablet.wait_for_function(
                    "document.querySelectorAll('#chargers tbody tr').length > 0", timeout=30_000
                )
                await tablet.screenshot(path=str(tmp_path / "dashboard-tablet.png"))
            finally:
                await browser.close()
    finally:
        if parts:
            parts[0].app.stop()
        await asyncio.wait_for(demo, 60)
    assert rows == len(config.chargers)
    assert "grid" in tree and "feeder-a" in tree and "L1" in tree
    assert "kW" in headline and "charging" in headline
    assert "#1" in firmware and "sim-charger-2.0.bin" in firmware and "1 image" in firmware
    assert errors == []
    assert shot.stat().st_size > 20_000
