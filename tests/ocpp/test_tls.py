"""Security profiles 2 and 3 and a wss:// upstream, over real TLS with a generated PKI."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from websockets.exceptions import InvalidHandshake, InvalidStatus

from sitectl.sim.charger import SimCharger
from sitectl.sim.csms import StubCsms
from tests.ocpp.certs import Pki
from tests.ocpp.conftest import PASSWORD, depot_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def client_context(pki: Pki, cert=None, maximum=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
    return context


def tls_config(pki: Pki, profile: int, upstream_url: str):
    server = pki.issue("sitectl.local", server=True)
    return depot_config(
        [{"id": "CP1"}, {"id": "CP2"}],
        upstream_url,
        security_profile=profile,
        tls_cert_file=str(server.cert),
        tls_key_file=str(server.key),
        tls_ca_file=str(pki.ca.cert) if profile == 3 else None,
    )


async def test_profile_2_tls_and_basic(pki, csms, start_server) -> None:
    _, url = await start_server(tls_config(pki, 2, csms.url))
    assert url.startswith("wss://")
    async with SimCharger("CP1", "1.6", url, PASSWORD, ssl=client_context(pki)) as sim:
        await sim.boot()
        assert sim.ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(InvalidStatus) as info:
        await SimCharger("CP1", "1.6", url, "wrong-password-xx", ssl=client_context(pki)).connect()
    assert info.value.response.status_code == 401


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_tls_below_1_2_is_refused(pki, csms, start_server) -> None:
    _, url = await start_server(tls_config(pki, 2, csms.url))
    old = client_context(pki, maximum=ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ssl.SSLError):
        await SimCharger("CP1", "1.6", url, PASSWORD, ssl=old).connect()


async def test_profile_3_client_certificate_cn_is_the_identity(pki, csms, start_server) -> None:
    _, url = await start_server(tls_config(pki, 3, csms.url))
    own = pki.issue("CP1")
    async with SimCharger("CP1", "1.6", url, None, ssl=client_context(pki, own)) as sim:
        await sim.boot()
    # CP1's certificate presented as CP2: refused after the TLS handshake.
    with pytest.raises(InvalidStatus) as info:
        await SimCharger("CP2", "1.6", url, None, ssl=client_context(pki, own)).connect()
    assert info.value.response.status_code == 401


async def test_profile_3_refuses_foreign_or_missing_certificates(
    pki, csms, start_server, tmp_path: Path
) -> None:
    _, url = await start_server(tls_config(pki, 3, csms.url))
    foreign = Pki(tmp_path, "other CA").issue("CP1")
    for context in (client_context(pki, foreign), client_context(pki)):
        # TLS 1.2 fails the handshake; TLS 1.3 reports the refused certificate as the
        # connection dropping before the HTTP response.
        with pytest.raises((ssl.SSLError, OSError, InvalidHandshake)):
            charger = SimCharger("CP1", "1.6", url, None, ssl=context)
            await charger.connect()
            await charger.boot()  # TLS 1.3 may report the refusal on first use


async def test_wss_upstream_verifies_the_csms_certificate(
    pki, start_server, caplog, tmp_path: Path
) -> None:
    server_cert = pki.issue("csms.local", server=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(server_cert.cert), str(server_cert.key))
    async with StubCsms(ssl_context=context) as stub:
        good = depot_config([{"id": "CP1"}], stub.url, upstream_ca_file=str(pki.ca.cert))
        _, url = await start_server(good)
        async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
            await sim.boot()
        assert stub.frames("CP1", "in") == sim.sent()
        # A CSMS certificate from a CA sitectl does not trust: no upstream, with a clear log
        # line; in close mode the charger is refused (hold mode would answer it locally).
        other = Pki(tmp_path, "untrusted CA")
        bad = depot_config(
            [{"id": "CP1"}],
            stub.url,
            upstream_ca_file=str(other.ca.cert),
            offline={"mode": "close"},
        )
        _, url = await start_server(bad)
        with pytest.raises(InvalidStatus) as info:
            await SimCharger("CP1", "1.6", url, PASSWORD).connect()
        assert info.value.response.status_code == 503
        assert "certificate rejected" in caplog.text
