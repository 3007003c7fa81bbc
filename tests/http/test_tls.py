"""HTTPS with the site certificate (``http.tls``): the dashboard, API and firmware files over
TLS, and the ``sitectl firmware`` client trusting exactly that certificate."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import aiohttp
import pytest

from sitectl.config import Config, ConfigError, load_config
from sitectl.firmware_cli import ApiError, LocalApi
from sitectl.http.server import HttpServer
from sitectl.state import SiteState
from tests.helpers import MINIMAL_CONFIG, wait_for
from tests.ocpp.certs import Pki


def tls_config(tmp_path: Path, tls: bool = True) -> tuple[Config, Path]:
    """A site with a certificate from a throw-away CA; returns the config and the CA file."""
    pki = Pki(tmp_path)
    site = pki.issue("sitectl.depot", server=True)
    text = MINIMAL_CONFIG.replace(
        "  listen_host: 127.0.0.1\n",
        f"  listen_host: 127.0.0.1\n  security_profile: 2\n"
        f"  tls_cert_file: {site.cert}\n  tls_key_file: {site.key}\n",
    ).replace(
        "http:\n  enabled: false\n",
        f"http:\n  listen_host: 127.0.0.1\n  tls: {str(tls).lower()}\n",
    )
    path = tmp_path / "site.yaml"
    path.write_text(text)
    config, _ = load_config(path, environ={})
    return config, pki.ca.cert


@contextlib.asynccontextmanager
async def serving(config: Config):
    server = HttpServer(config, SiteState(config), port=0)
    task = asyncio.create_task(server.run())
    try:
        await wait_for(server.ready.is_set, message="the HTTP server")
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_https_with_the_site_certificate(tmp_path: Path) -> None:
    config, ca = tls_config(tmp_path)
    async with serving(config) as server:
        trusting = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"https://127.0.0.1:{server.port}/api/site", ssl=trusting
            ) as response:
                assert response.status == 200
                assert (await response.json())["id"] == "test-depot"
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
                async with http.get(f"http://127.0.0.1:{server.port}/api/site") as response:
                    await response.read()
        # The CLI's client trusts the site certificate itself (no CA file needed).
        api = LocalApi(config, f"https://127.0.0.1:{server.port}")
        answer = await asyncio.to_thread(api.request, "GET", "/api/firmware")
        assert answer["enabled"] is False and answer["rollouts"] == []
        # Without that trust, the connection is refused, with the reason.
        untrusting = config.model_copy(
            update={"ocpp": config.ocpp.model_copy(update={"tls_cert_file": None})}
        )
        with pytest.raises(ApiError, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.to_thread(
                LocalApi(untrusting, f"https://127.0.0.1:{server.port}").request, "GET", "/api/site"
            )


def test_tls_needs_the_site_certificate(tmp_path: Path) -> None:
    text = MINIMAL_CONFIG.replace("http:\n  enabled: false\n", "http:\n  tls: true\n")
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"http\.tls.*ocpp\.tls_cert_file"):
        load_config(path, environ={})
