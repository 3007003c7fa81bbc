"""Benchmark offline operation: 200 chargers through a CSMS outage, then the replay.

Three processes on loopback: this one (200 raw WebSocket chargers), sitectl (`sitectl run`, hold
mode, the store on disk with synchronous=FULL as in production) and a lean stub CSMS that is
killed for the outage and restarted on the same port.

During the outage every charger runs one transaction: StartTransaction, then the meter values of
`--minutes` of charging at one per second, sent back to back (the outage compressed), then
StopTransaction. All of it is answered locally and journaled. Then the CSMS comes back and the
journals replay. Reported: local answer rate, journal size, reconnect time, replay throughput and
time to drain, and whether the CSMS received every message in order.

Target (issue #4): replay ≥ 500 messages/s overall. Exits 1 on a miss or on any loss.

    python bench/offline.py [--chargers 200] [--minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, free_ports, print_table, raise_fd_limit, wait_port

PASSWORD = "bench-password-0123456789"


# ------------------------------------------------------------------------------------------------
# Role: the stub CSMS, recording every transaction message it receives


async def csms_main(port: int, log_path: str) -> None:
    raise_fd_limit()
    counter = iter(range(1, 10**9))
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    async def handler(ws) -> None:
        identity = ws.request.path.rsplit("/", 1)[-1]
        async for message in ws:
            frame = json.loads(message)
            if frame[0] != 2:
                continue
            action, payload = frame[2], frame[3]
            if action == "StartTransaction":
                answer = {"transactionId": next(counter), "idTagInfo": {"status": "Accepted"}}
                log.write(f"{identity} start {payload['meterStart']}\n")
            elif action == "MeterValues":
                value = payload["meterValue"][0]["sampledValue"][0]["value"]
                log.write(f"{identity} meter {value} {payload.get('transactionId')}\n")
                answer = {}
            elif action == "StopTransaction":
                log.write(f"{identity} stop {payload['meterStop']} {payload['transactionId']}\n")
                answer = {}
            elif action == "BootNotification":
                answer = {
                    "status": "Accepted",
                    "currentTime": "2026-11-27T00:00:00Z",
                    "interval": 300,
                }
            elif action == "Heartbeat":
                answer = {"currentTime": "2026-11-27T00:00:00Z"}
            else:
                answer = {}
            await ws.send(json.dumps([3, frame[1], answer]))

    async with serve(
        handler,
        "127.0.0.1",
        port,
        subprotocols=["ocpp1.6"],
        max_queue=None,
        ping_interval=None,
        backlog=2048,
    ):
        print("ready", flush=True)
        await asyncio.Future()


def start_csms(port: int, log_path: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, __file__, "_csms", str(port), str(log_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


# ------------------------------------------------------------------------------------------------
# The chargers


class Charger:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.counter = 0

    async def open(self, url: str) -> None:
        token = base64.b64encode(f"{self.identity}:{PASSWORD}".encode()).decode()
        self.ws = await connect(
            f"{url}/{self.identity}",
            subprotocols=["ocpp1.6"],
            additional_headers={"Authorization": f"Basic {token}"},
            compression=None,
            proxy=None,
            open_timeout=60,
            ping_interval=None,
            max_queue=None,
        )

    async def call(self, action: str, payload: dict) -> dict:
        self.counter += 1
        message_id = str(self.counter)
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        while True:
            answer = json.loads(await self.ws.recv())
            if answer[0] == 3 and answer[1] == message_id:
                return answer[2]
            if answer[0] == 4 and answer[1] == message_id:
                raise RuntimeError(f"{self.identity}: CALLERROR {answer}")

    async def session(self, meter_values: int) -> None:
        start = await self.call(
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": "FLEET",
                "meterStart": 0,
                "timestamp": "2026-11-27T00:00:00Z",
            },
        )
        tx = start["transactionId"]
        for k in range(1, meter_values + 1):
            await self.call(
                "MeterValues",
                {
                    "connectorId": 1,
                    "transactionId": tx,
                    "meterValue": [
                        {
                            "timestamp": f"2026-11-27T00:{k // 60 % 60:02d}:{k % 60:02d}Z",
                            "sampledValue": [{"value": str(k), "unit": "Wh"}],
                        }
                    ],
                },
            )
        await self.call(
            "StopTransaction",
            {
                "transactionId": tx,
                "meterStop": meter_values + 1,
                "timestamp": "2026-11-27T01:00:00Z",
            },
        )


def write_config(directory: Path, n: int, port: int, csms_port: int) -> Path:
    chargers = "\n".join(f"  - {{id: CP{i:04d}, circuit: grid}}" for i in range(n))
    path = directory / "offline.yaml"
    path.write_text(f"""\
site: {{id: bench, limit_kw: 60000, phase_limit_a: 100000, non_ev_max_a: 1}}
charger_defaults: {{max_current_a: 32, failsafe_current_a: 0, password: {PASSWORD}}}
chargers:
{chargers}
ocpp:
  listen_host: 127.0.0.1
  listen_port: {port}
  upstream_url: ws://127.0.0.1:{csms_port}/csms
  ping_interval_s: 300
  offline: {{mode: hold, unknown_id_policy: accept, journal_max_messages: 1000000}}
mqtt: {{enabled: false}}
http: {{enabled: false}}
storage: {{path: {directory / "offline.sqlite"}, synchronous: FULL}}
""")
    return path


def check_order(log_path: Path, n: int, meter_values: int) -> tuple[int, int, list[str]]:
    """Messages received, duplicates, and problems (losses, disorder, mixed ids)."""
    per: dict[str, list[list[str]]] = {}
    for line in log_path.read_text().splitlines():
        identity, *rest = line.split()
        per.setdefault(identity, []).append(rest)
    problems: list[str] = []
    received = duplicates = 0
    for i in range(n):
        identity = f"CP{i:04d}"
        lines = per.get(identity, [])
        received += len(lines)
        values = [int(r[1]) for r in lines]
        deduplicated = [v for k, v in enumerate(values) if k == 0 or v != values[k - 1]]
        duplicates += len(values) - len(deduplicated)
        expected = list(range(0, meter_values + 2))
        if deduplicated != expected:
            problems.append(f"{identity}: got {len(deduplicated)} of {len(expected)} in order")
        ids = {r[2] for r in lines if r[0] in ("meter", "stop")}
        if len(ids) != 1 or any(int(x) < 0 for x in ids):
            problems.append(f"{identity}: transaction ids {sorted(ids)[:3]}")
    return received, duplicates, problems


async def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    csms_port, port = free_ports(2)
    expected = args.chargers * (args.meter_values + 2)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        log_path = directory / "csms.log"
        config = write_config(directory, args.chargers, port, csms_port)
        csms = start_csms(csms_port, log_path)
        sitectl = subprocess.Popen(
            [sys.executable, "-m", "sitectl", "--log-level", "ERROR", "run", "-c", str(config)],
            cwd=REPO,
        )
        try:
            wait_port(port, 60)
            chargers = [Charger(f"CP{i:04d}") for i in range(args.chargers)]
            for charger in chargers:
                await charger.open(f"ws://127.0.0.1:{port}/ocpp")
                await charger.call(
                    "BootNotification", {"chargePointVendor": "b", "chargePointModel": "b"}
                )
            csms.kill()
            csms.wait()
            await asyncio.sleep(1)  # let sitectl see the upstream sockets close
            outage_start = time.perf_counter()
            await asyncio.gather(*(c.session(args.meter_values) for c in chargers))
            outage_s = time.perf_counter() - outage_start
            journal_mb = sum(p.stat().st_size for p in directory.glob("offline.sqlite*")) / 1e6
            log_path.write_text("")
            back = time.perf_counter()
            csms = start_csms(csms_port, log_path)
            first_seen = None
            deadline = time.perf_counter() + 600
            while time.perf_counter() < deadline:
                lines = log_path.read_text().count("\n")
                if lines and first_seen is None:
                    first_seen = time.perf_counter()
                if lines >= expected:
                    break
                await asyncio.sleep(0.2)
            drained = time.perf_counter()
            for charger in chargers:
                await charger.ws.close()
        finally:
            sitectl.terminate()
            sitectl.wait(30)
            csms.terminate()
            csms.wait(30)
        received, duplicates, problems = check_order(log_path, args.chargers, args.meter_values)

    reconnect_s = (first_seen or drained) - back
    replay_s = drained - (first_seen or drained)
    rate = received / replay_s if replay_s > 0 else 0.0
    rows = [
        (
            "chargers × meter values (outage compressed)",
            f"{args.chargers} × {args.meter_values}",
            "",
            True,
        ),
        ("messages answered locally and journaled", f"{expected}", "", True),
        ("local answer rate during the outage", f"{expected / outage_s:.0f} msg/s", "", True),
        ("journal on disk (SQLite + WAL)", f"{journal_mb:.1f} MB", "", True),
        ("CSMS back → first replayed message", f"{reconnect_s:.1f} s", "", True),
        ("replay throughput", f"{rate:.0f} msg/s", "≥ 500", rate >= 500),
        ("time to drain", f"{replay_s:.1f} s", "", True),
        (
            "messages received / duplicates",
            f"{received} / {duplicates}",
            f"{expected} / 0",
            received - duplicates == expected,
        ),
        (
            "order and ids per charger",
            "ok" if not problems else "; ".join(problems[:3]),
            "ok",
            not problems,
        ),
    ]
    return print_table(rows)


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "_csms":
        asyncio.run(csms_main(int(sys.argv[2]), sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chargers", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    args.meter_values = max(1, round(args.minutes * 60))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
