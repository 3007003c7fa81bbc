"""The dashboard with ``http.open_reads: false`` in a real headless Chromium (issue #22.1): the
sign-in form, a session that survives a reload, signing out; no token kept by the page."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page
from pydantic import SecretStr

from sitectl.config import Config
from tests.http.test_dashboard_browser import dashboard, fixed_config, fixed_state, wait_js

TOKEN = "dashboard-write-token-0815"
READ_TOKEN = "dashboard-read-token-4711"
SIGN_IN_SHOWN = "!document.getElementById('sign-in').hidden"
ROWS = "document.querySelectorAll('#chargers tbody tr').length"


def closed_config() -> Config:
    cfg = fixed_config()
    http = {
        "open_reads": False,
        "token": SecretStr(TOKEN),
        "read_token": SecretStr(READ_TOKEN),
    }
    return cfg.model_copy(update={"http": cfg.http.model_copy(update=http)})


async def sign_in(page: Page, token: str) -> None:
    await page.fill("#sign-in-token", token)
    await page.click("#sign-in-button")


async def test_closed_reads_sign_in_survive_a_reload_and_sign_out(tmp_path: Path) -> None:
    cfg = closed_config()
    async with dashboard(cfg, fixed_state(cfg), ready=SIGN_IN_SHOWN) as page:
        # Nothing of the site before signing in: the form, not the data.
        main_before = await page.locator("main").is_visible()
        headline_before = await page.locator("#headline").inner_text()
        rendered_before = await page.evaluate("document.body.dataset.updated ?? null")
        await page.locator("#sign-in").screenshot(path=str(tmp_path / "sign-in.png"))
        await sign_in(page, "a-wrong-token-000000")
        await wait_js(page, "document.getElementById('sign-in-error').textContent !== ''")
        wrong = await page.locator("#sign-in-error").inner_text()

        await sign_in(page, READ_TOKEN)
        await wait_js(page, f"{ROWS} === 2")
        form_after = await page.locator("#sign-in").is_visible()
        account = await page.locator("#account").inner_text()
        field = await page.locator("#sign-in-token").input_value()
        first = await page.evaluate("document.body.dataset.updated")
        await wait_js(page, f"document.body.dataset.updated !== {first!r}")  # polling resumed
        # The page keeps no token; the session is a cookie scripts cannot read.
        stored = await page.evaluate(
            "JSON.stringify([Object.keys(localStorage), Object.keys(sessionStorage)])"
        )
        script_cookies = await page.evaluate("document.cookie")
        cookies = await page.context.cookies()

        await page.reload()
        await wait_js(page, f"{ROWS} === 2 && !document.getElementById('account').hidden")
        form_reloaded = await page.locator("#sign-in").is_visible()

        await page.click("#sign-out")
        await wait_js(page, SIGN_IN_SHOWN)
        main_signed_out = await page.locator("main").is_visible()
        account_signed_out = await page.locator("#account").is_visible()
        refused = await page.evaluate("fetch('/api/site').then((r) => r.status)")

        # The write token signs in as well, and the session still only reads.
        await sign_in(page, TOKEN)
        await wait_js(page, "!document.getElementById('account').hidden")
        await wait_js(page, f"{ROWS} === 2")
        account_write = await page.locator("#account").inner_text()
        write = await page.evaluate(
            "fetch('/api/overrides', {method: 'POST', headers: {'Content-Type': "
            "'application/json'}, body: JSON.stringify({node: 'grid', limit_a: 100})})"
            ".then((r) => r.status)"
        )
        await page.screenshot(path=str(tmp_path / "signed-in.png"), full_page=True)
        # The session ends behind the page's back (expiry, a restart): the next poll brings
        # the form back and says why.
        await page.evaluate("fetch('/api/logout', {method: 'POST'}).then((r) => r.status)")
        await wait_js(page, SIGN_IN_SHOWN)
        ended = await page.locator("#sign-in-error").inner_text()
    assert main_before is False and rendered_before is None
    assert headline_before == "sign in to see the site"
    assert wrong == "wrong token"
    assert form_after is False and field == ""
    assert account == "signed in with the read token · reads only sign out"
    assert stored == "[[],[]]" and script_cookies == ""
    [cookie] = cookies
    assert cookie["name"] == "sitectl_session" and cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert TOKEN not in cookie["value"] and READ_TOKEN not in cookie["value"]
    assert form_reloaded is False
    assert main_signed_out is False and account_signed_out is False and refused == 401
    assert account_write.startswith("signed in with the token · reads only")
    assert write == 401
    assert ended == "the session has ended: sign in again"
    assert (tmp_path / "sign-in.png").stat().st_size > 2_000


async def test_with_open_reads_there_is_no_sign_in_at_all() -> None:
    cfg = fixed_config()
    async with dashboard(cfg, fixed_state(cfg)) as page:
        await wait_js(page, f"{ROWS} === 2")
        form = await page.locator("#sign-in").is_visible()
        account = await page.locator("#account").is_visible()
    assert form is False and account is False
