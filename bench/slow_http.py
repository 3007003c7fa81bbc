"""Probe: 400 slow HTTP clients against sitectl at a 256-descriptor limit (issue #22.2).

sitectl runs as `sitectl run` in a subprocess with RLIMIT_NOFILE 256 (soft and hard), one
charger configured (standalone: answered locally), the local HTTP server on. This process:

1. times a real OCPP charger's handshake (the ``ocpp`` library over websockets, `SimCharger`:
   WebSocket upgrade with Basic auth, then BootNotification answered) `SAMPLES` times: the
   baseline;
2. opens 400 HTTP connections from 40 loopback addresses (10 each) that send a partial request
   head and then nothing (slowloris), and holds them;
3. times the charger's handshake `SAMPLES` times again while they are held (and re-opened as
   sitectl closes them), then once more after the head deadline passed;
4. counts sitectl's log lines (the charger's own connects log a few INFO lines each; the
   flood to catch is of warnings, errors and tracebacks).

Targets (issue #22 "How it is judged"): the slowest handshake under load at most 1 s more than
the baseline median; sitectl still running; under 100 warning/error/traceback lines during
the load. Exits 1 on a miss.

    python bench/slow_http.py [--clients 400] [--fd-limit 256]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, free_ports, print_table, wait_port

from sitectl.sim.charger import SimCharger

PASSWORD = "bench-password-0123456789"
TOKEN = "bench-http-token-0123456789abcdef"
SAMPLES = 7
ADDRESSES = 40


def write_config(directory: Path, ocpp_port: int, http_port: int) -> Path:
    text = f"""\
site: {{id: slowhttp, limit_kw: 100, phase_limit_a: 160, non_ev_max_a: 1}}
chargers:
  - {{id: CP1, circuit: grid, max_current_a: 32, password: {PASSWORD}}}
ocpp:
  listen_host: 127.0.0.1
  listen_port: {ocpp_port}
mqtt: {{enabled: false}}
http:
  enabled: true
  listen_host: 127.0.0.1
  listen_port: {http_port}
  token: {TOKEN}
storage: {{path: {directory / "slow.sqlite"}}}
firmware: {{enabled: false}}
"""
    path = directory / "slow.yaml"
    path.write_text(text)
    return path


async def handshake(url: str) -> float:
    """Seconds from the TCP connect to the BootNotification's answer."""
    start = time.perf_counter()
    sim = SimCharger("CP1", "1.6", url, PASSWORD)
    await asyncio.wait_for(sim.connect(), 30)
    try:
        await asyncio.wait_for(sim.boot(), 30)
        return time.perf_counter() - start
    finally:
        await sim.close()


class SlowClients:
    """`n` connections that each send half a request head and then wait; re-opened when
    sitectl closes one (a prober keeps trying)."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.n = n
        self.open = 0
        self.closed_by_server = 0
        self.refused = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def _one(self, k: int) -> None:
        source = f"127.0.1.{k % ADDRESSES + 1}"
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(source, 0)
                )
            except OSError:
                self.refused += 1
                await asyncio.sleep(0.2)
                continue
            self.open += 1
            try:
                writer.write(b"GET /api/site HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                with contextlib.suppress(OSError):
                    await reader.read()  # until sitectl closes it
                self.closed_by_server += 1
            finally:
                self.open -= 1
                writer.close()
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._one(k)) for k in range(self.n)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def limit_fds(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


async def run(args: argparse.Namespace) -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # ours, not sitectl's
    ocpp_port, http_port = free_ports(2)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), ocpp_port, http_port)
        log_path = Path(tmp) / "sitectl.log"
        with log_path.open("w") as log_file:
            sitectl = subprocess.Popen(
                [sys.executable, "-m", "sitectl", "run", "-c", str(config)],
                cwd=REPO,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=limit_fds(args.fd_limit),
            )
            slow = SlowClients(http_port, args.clients)
            try:
                wait_port(ocpp_port, 60)
                wait_port(http_port, 60)
                url = f"ws://127.0.0.1:{ocpp_port}/ocpp"
                await handshake(url)  # warm-up (first boot, fail-safe profile, imports)
                baseline = [await handshake(url) for _ in range(SAMPLES)]
                lines_before = len(log_path.read_text(errors="replace").splitlines())
                slow.start()
                deadline = time.monotonic() + 10
                while slow.open + slow.closed_by_server < args.clients:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                held_at_start = slow.open
                loaded = []
                for _ in range(SAMPLES):
                    loaded.append(await handshake(url))
                    await asyncio.sleep(0.3)
                await asyncio.sleep(args.hold_s)  # past the head deadline: closed, re-opened
                loaded.append(await handshake(url))
                alive = sitectl.poll() is None
            finally:
                await slow.stop()
                sitectl.terminate()
                try:
                    sitectl.wait(30)
                except subprocess.TimeoutExpired:
                    sitectl.kill()
                    sitectl.wait()
        text = log_path.read_text(errors="replace")
    lines = text.splitlines()
    loud = [
        line
        for line in lines[lines_before:]
        if any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL"))
        or line.startswith(("Traceback", "  File"))
    ]
    base = statistics.median(baseline)
    worst = max(loaded)
    extra = worst - base
    rows = [
        ("descriptor limit of sitectl", f"{args.fd_limit}", "", True),
        ("slow HTTP clients (held at start)", f"{args.clients} ({held_at_start})", "", True),
        (
            "closed by sitectl / connects refused",
            f"{slow.closed_by_server} / {slow.refused}",
            "",
            True,
        ),
        ("handshake baseline median", f"{base * 1000:.0f} ms", "", True),
        ("handshake under load median", f"{statistics.median(loaded) * 1000:.0f} ms", "", True),
        (
            "handshake under load worst - baseline",
            f"{extra * 1000:.0f} ms",
            "≤ 1000 ms",
            extra <= 1.0,
        ),
        ("sitectl still running", "yes" if alive else "no", "yes", alive),
        (
            "log lines in all / during the load",
            f"{len(lines)} / {len(lines) - lines_before}",
            "",
            True,
        ),
        ("warning/error/traceback lines during the load", f"{len(loud)}", "< 100", len(loud) < 100),
    ]
    code = print_table(rows)
    if loud:
        print("\nwarnings and errors during the load:\n" + "\n".join(loud[-15:]))
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--fd-limit", type=int, default=256)
    parser.add_argument("--hold-s", type=float, default=12.0)
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
