"""Fixtures shared by the whole suite: a real mosquitto broker and temporary configs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import MINIMAL_CONFIG, free_port, wait_for_sync

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Broker:
    """A mosquitto broker started for the test session."""

    host: str
    port: int


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        # Fail, never skip: a test that did not run is not a passing test. scripts/test
        # installs mosquitto when it is missing.
        pytest.fail(
            "mosquitto is not installed; run scripts/test (it installs it) or "
            "apt-get install mosquitto"
        )
    return found


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Our own mosquitto on a free loopback port (never the machine's port 1883)."""
    binary = _mosquitto_binary()
    port = free_port()
    workdir = tmp_path_factory.mktemp("mosquitto")
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        textwrap.dedent(f"""\
        listener {port} 127.0.0.1
        allow_anonymous true
        persistence false
        log_dest file {workdir / "mosquitto.log"}
        """)
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_sync(
            lambda: _accepts("127.0.0.1", port) or process.poll() is not None,
            timeout=10,
            message="mosquitto to listen",
        )
        if process.poll() is not None:
            pytest.fail(f"mosquitto exited: {process.stderr.read().decode(errors='replace')}")
        yield Broker("127.0.0.1", port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config into the test's temp dir and return its path."""

    def write(text: str = MINIMAL_CONFIG, name: str = "site.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
