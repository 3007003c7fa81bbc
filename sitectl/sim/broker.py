"""A mosquitto of our own on a free loopback port, for the demo and the tests.

The demo must never publish into whatever broker happens to listen on the machine's port 1883
(someone else's, perhaps a real depot's cloud bridge): it starts its own, or uses the one it is
told (``--mqtt HOST:PORT``), or runs without MQTT when mosquitto is not installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sitectl.sim.ports import free_ports

__all__ = [
    "BrokerChoice",
    "BrokerError",
    "LocalMosquitto",
    "find_mosquitto",
    "parse_address",
    "pick_broker",
]

#: Where Debian puts mosquitto; /usr/sbin is not on every user's PATH.
_SBIN = Path("/usr/sbin/mosquitto")


class BrokerError(RuntimeError):
    """mosquitto could not be started (the message says why)."""


def find_mosquitto() -> str | None:
    """The mosquitto binary, or ``None`` if it is not installed."""
    found = shutil.which("mosquitto")
    if found is None and _SBIN.exists():
        found = str(_SBIN)
    return found


def parse_address(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, or ``[v6]:PORT``) as a (host, port) pair.

    Raises:
        ValueError: with a message for the user.
    """
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):  # [::1]:1883
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"'{text}': expected HOST:PORT, e.g. 127.0.0.1:1883")
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"'{text}': the port '{port_text}' is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"'{text}': the port must be 1-65535")
    return host, port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalMosquitto:
    """A mosquitto process listening on a free loopback port, anonymous, without persistence.

    Args:
        workdir: its config and log files.
        binary: the mosquitto binary (default: `find_mosquitto`).
        host: the listener address.
    """

    def __init__(self, workdir: Path, binary: str | None = None, host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.binary = binary or find_mosquitto()
        self.host = host
        self.port = 0
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0, attempts: int = 3) -> None:
        """Start it and wait until it listens.

        A port that was free when chosen can be taken before mosquitto binds it; then another
        is tried, up to `attempts` times.

        Raises:
            BrokerError: mosquitto is not installed, exited or did not listen in time.
        """
        if self.binary is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        why = ""
        for _ in range(attempts):
            self.port = free_ports(1, self.host)[0]
            self.conf.write_text(
                f"listener {self.port} {self.host}\n"
                "allow_anonymous true\n"
                "persistence false\n"
                # To stderr, which is our file: started as root, mosquitto drops to its own user,
                # which could not open a log file in our (private) directory.
                "log_dest stderr\n"
            )
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [self.binary, "-c", str(self.conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            deadline = time.monotonic() + timeout_s
            while self.process.poll() is None and not _accepts(self.host, self.port):
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(
                        f"mosquitto did not listen on {self.address} in {timeout_s} s"
                    )
                time.sleep(0.02)
            if self.process.poll() is None:
                return
            why = self._log_tail()
            self.process = None
        raise BrokerError(f"mosquitto exited: {why or 'no message'} (log: {self.log})")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop it (terminate, then kill after 5 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def __enter__(self) -> LocalMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class BrokerChoice:
    """Where the demo's MQTT goes: `address` ``None`` means no MQTT at all."""

    address: tuple[str, int] | None
    note: str  # for the user: which broker and why
    own: LocalMosquitto | None = None  # to stop when the demo ends

    def stop(self) -> None:
        if self.own is not None:
            self.own.stop()


def pick_broker(
    requested: tuple[str, int] | None, workdir: Path, binary: str | None = None
) -> BrokerChoice:
    """The demo's broker: the one asked for, else our own mosquitto, else none.

    Args:
        requested: ``--mqtt HOST:PORT``: use that broker and start nothing.
        workdir: for our own mosquitto's files.
        binary: the mosquitto binary (default: `find_mosquitto`).
    """
    if requested is not None:
        host, port = requested
        return BrokerChoice(requested, f"{host}:{port} (--mqtt)")
    binary = binary or find_mosquitto()
    if binary is None:
        return BrokerChoice(
            None,
            "off: mosquitto is not installed (apt-get install mosquitto, or point the demo at "
            "a broker with --mqtt HOST:PORT)",
        )
    own = LocalMosquitto(workdir, binary)
    try:
        own.start()
    except BrokerError as exc:
        return BrokerChoice(None, f"off: {exc}")
    return BrokerChoice((own.host, own.port), f"{own.address} (the demo's own mosquitto)", own)
