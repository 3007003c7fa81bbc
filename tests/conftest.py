"""Fixtures shared by the whole suite: a real mosquitto broker and temporary configs."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sitectl.sim.broker import BrokerError, LocalMosquitto, find_mosquitto
from tests.helpers import MINIMAL_CONFIG

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI configures the root logger for the process
    (`sitectl.logs.setup_logging`: its level, handlers, the libraries' levels); put it back
    so a later test's caplog still sees what it logs, whatever ran before it."""
    from sitectl.logs import THIRD_PARTY_LOGGERS

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    libraries = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    for name, was in libraries.items():
        logging.getLogger(name).setLevel(was)


@dataclass(frozen=True)
class Broker:
    """A mosquitto broker started for the test session."""

    host: str
    port: int


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Our own mosquitto on a free loopback port (never the machine's port 1883)."""
    if find_mosquitto() is None:
        # Fail, never skip: a test that did not run is not a passing test. scripts/test
        # installs mosquitto when it is missing.
        pytest.fail(
            "mosquitto is not installed; run scripts/test (it installs it) or "
            "apt-get install mosquitto"
        )
    server = LocalMosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        server.start()
    except BrokerError as exc:
        pytest.fail(str(exc))
    try:
        yield Broker(server.host, server.port)
    finally:
        server.stop()


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config into the test's temp dir and return its path."""

    def write(text: str = MINIMAL_CONFIG, name: str = "site.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
