"""Fixtures for the MQTT uplink: brokers we can stop and restart, a TLS + password broker,
and capturing subscribers.

The suite-wide `mosquitto` fixture (tests/conftest.py) serves the tests that need a plain broker
that stays up; these brokers are per test (outages) or per module (TLS).
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port
from tests.ocpp.certs import Pki
from tests.uplink.support import BROKER_PASSWORD, Capture, Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test alone, with persistence, that the test may stop and restart."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    server = Mosquitto(workdir, free_port(), persistence=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class TlsBroker:
    """A broker that wants TLS, a client certificate from its CA, and a password."""

    host: str
    port: int
    ca: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that did not sign the broker's certificate
    other_cert: Path  # a client certificate from that other CA
    other_key: Path
    username: str
    password: str


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    workdir = tmp_path_factory.mktemp("tls-broker")
    pki = Pki(workdir)
    server = pki.issue("localhost", server=True)
    client = pki.issue("sitectl-client")
    other_dir = workdir / "other"
    other_dir.mkdir()
    other = Pki(other_dir, name="stranger CA")
    stranger = other.issue("stranger-client")
    passwords = workdir / "passwords"
    passwords.write_text("")
    subprocess.run(
        [
            shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd",
            "-b",
            str(passwords),
            "sitectl",
            BROKER_PASSWORD,
        ],
        check=True,
        capture_output=True,
    )
    listener = textwrap.dedent(f"""\
        cafile {pki.ca.cert}
        certfile {server.cert}
        keyfile {server.key}
        require_certificate true
        password_file {passwords}
        allow_anonymous false""")
    process = Mosquitto(workdir, free_port(), listener=listener)
    process.start()
    try:
        yield TlsBroker(
            "127.0.0.1",
            process.port,
            pki.ca.cert,
            client.cert,
            client.key,
            other.ca.cert,
            stranger.cert,
            stranger.key,
            "sitectl",
            BROKER_PASSWORD,
        )
    finally:
        process.stop()


@pytest.fixture
def capture_factory() -> Iterator[Any]:
    made: list[Capture] = []

    def make(host: str, port: int, **kwargs: Any) -> Capture:
        capture = Capture(host, port, **kwargs)
        made.append(capture)
        return capture

    yield make
    for capture in made:
        capture.close()
