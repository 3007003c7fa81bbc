"""TLS and authentication against a broker that wants a client certificate and a password:
the right settings connect; a wrong password or a certificate that is not trusted gives a clear
log line and retries, never a crash."""

from __future__ import annotations

import logging

from tests.helpers import wait_for
from tests.uplink.support import depot_config, run_uplink


def tls_settings(tls_broker, **overrides):
    settings = {
        "tls": True,
        "ca_file": tls_broker.ca,
        "cert_file": tls_broker.client_cert,
        "key_file": tls_broker.client_key,
        "username": tls_broker.username,
        "password": tls_broker.password,
    }
    settings.update(overrides)
    return {k: v for k, v in settings.items() if v is not None}


def lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_tls_client_certificate_and_password(tmp_path, tls_broker, caplog) -> None:
    config = depot_config(tmp_path, "localhost", tls_broker.port, **tls_settings(tls_broker))
    async with run_uplink(config) as running:
        await running.connected()
        await running.drained()  # the broker acknowledged the birth, states and a summary
        assert running.uplink.outbox.seq >= 4
    assert tls_broker.password not in caplog.text


async def test_wrong_password_is_logged_and_retried(tmp_path, tls_broker, caplog) -> None:
    config = depot_config(
        tmp_path, "localhost", tls_broker.port, **tls_settings(tls_broker, password="wrong-one")
    )
    with caplog.at_level(logging.WARNING, logger="sitectl.uplink"):
        async with run_uplink(config) as running:
            await wait_for(
                lambda: len(lines(caplog, "refused the connection")) >= 2,
                message="two refused attempts",
            )
            assert not running.task.done() and not running.uplink.connected
    line = lines(caplog, "refused the connection")[0]
    # MQTT 5 has 0x86 "Bad user name or password"; mosquitto answers 0x87 "Not authorized".
    assert "Not authorized" in line or "Bad user name or password" in line
    assert "check mqtt.username and mqtt.password" in line
    assert "attempt 1" in line and "attempt 2" in lines(caplog, "refused the connection")[1]


async def test_untrusted_broker_certificate_is_logged_and_retried(
    tmp_path, tls_broker, caplog
) -> None:
    config = depot_config(
        tmp_path,
        "localhost",
        tls_broker.port,
        **tls_settings(tls_broker, ca_file=tls_broker.other_ca),
    )
    with caplog.at_level(logging.WARNING, logger="sitectl.uplink"):
        async with run_uplink(config) as running:
            await wait_for(
                lambda: len(lines(caplog, "certificate is not trusted")) >= 2,
                message="two failed handshakes",
            )
            assert not running.task.done()
    line = lines(caplog, "certificate is not trusted")[0]
    assert "self-signed certificate" in line and "check mqtt.ca_file" in line


async def test_client_certificate_the_broker_does_not_trust(tmp_path, tls_broker, caplog) -> None:
    config = depot_config(
        tmp_path,
        "localhost",
        tls_broker.port,
        **tls_settings(tls_broker, cert_file=tls_broker.other_cert, key_file=tls_broker.other_key),
    )
    with caplog.at_level(logging.WARNING, logger="sitectl.uplink"):
        async with run_uplink(config) as running:
            await wait_for(
                lambda: len(lines(caplog, "certificate")) >= 2, message="two failed attempts"
            )
            assert not running.task.done() and not running.uplink.connected
    assert "mqtt.cert_file" in lines(caplog, "certificate")[0]


async def test_unreadable_certificate_file_keeps_sitectl_running(
    tmp_path, tls_broker, caplog
) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    config = depot_config(
        tmp_path, "localhost", tls_broker.port, **tls_settings(tls_broker, ca_file=broken)
    )
    with caplog.at_level(logging.ERROR, logger="sitectl.uplink"):
        async with run_uplink(config) as running:
            await wait_for(lambda: "MQTT uplink cannot start" in caplog.text)
            # Still a running component, queueing what the cloud should see.
            await wait_for(lambda: running.uplink.outbox.count >= 3, message="queued messages")
            assert not running.task.done()
