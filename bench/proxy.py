"""Benchmark the OCPP proxy: 1,000 chargers through sitectl to a stub CSMS.

Three processes on loopback: this one (the load generator: raw WebSocket chargers), sitectl
(`sitectl run` on a generated 1,000-charger config) and a lean stub CSMS. Measured:

- connect time: all chargers handshaken through sitectl (each opens its upstream socket);
- sustained forwarded round trips per second (closed loop, every charger one call in flight);
- added latency at a paced 500 round trips/s: through sitectl minus directly to the CSMS;
- sitectl's RSS with everything connected.

Targets (issue #3): all connected within 30 s; ≥ 2,000 round trips/s; added latency p50 ≤ 2 ms and
p99 ≤ 15 ms at 500/s; RSS ≤ 400 MB. Exits 1 when a target is missed.

    python bench/proxy.py [--chargers 1000] [--seconds 10] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
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
FRAMES = [
    '[2,"{id}","Heartbeat",{{}}]',
    '[2,"{id}","StatusNotification",{{"connectorId":1,"errorCode":"NoError","status":"Charging"}}]',
    '[2,"{id}","MeterValues",{{"connectorId":1,"transactionId":{tx},"meterValue":[{{"timestamp":'
    '"2026-11-27T06:00:00Z","sampledValue":[{{"value":"15.9","measurand":"Current.Import",'
    '"phase":"L1","unit":"A"}},{{"value":"16.0","measurand":"Current.Import","phase":"L2",'
    '"unit":"A"}},{{"value":"16.1","measurand":"Current.Import","phase":"L3","unit":"A"}},'
    '{{"value":"123456","unit":"Wh"}}]}}]}}]',
]
ANSWERS = {
    "Heartbeat": '{"currentTime":"2026-11-27T06:00:00Z"}',
    "BootNotification": '{"status":"Accepted","currentTime":"2026-11-27T06:00:00Z","interval":300}',
}


# ------------------------------------------------------------------------------------------------
# Role: the stub CSMS (its own process, so its CPU is not sitectl's)


async def csms_main(port: int) -> None:
    raise_fd_limit()

    async def handler(ws) -> None:
        async for message in ws:
            # [2,"<id>","<Action>",{...}] -> [3,"<id>",{answer}] without a full parse.
            head, _, _ = message.partition(",{")
            parts = head.split(",")
            message_id, action = parts[1], parts[2].strip('"')
            await ws.send(f"[3,{message_id},{ANSWERS.get(action, '{}')}]")

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


# ------------------------------------------------------------------------------------------------
# The load generator


class Charger:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.ws = None
        self.pending: dict[str, float] = {}
        self.counter = 0
        self.latencies: list[float] | None = None
        self.done = 0

    async def open(self, base_url: str, auth: bool) -> None:
        headers = {}
        if auth:
            token = base64.b64encode(f"{self.identity}:{PASSWORD}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.ws = await connect(
            f"{base_url}/{self.identity}",
            subprotocols=["ocpp1.6"],
            additional_headers=headers,
            compression=None,
            proxy=None,
            open_timeout=60,
            ping_interval=None,
            max_queue=None,
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            message_id = message.split(",", 2)[1].strip('"')
            sent = self.pending.pop(message_id, None)
            if sent is not None:
                if self.latencies is not None:
                    self.latencies.append(time.perf_counter() - sent)
                self.done += 1
                waiter = getattr(self, "waiter", None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def send(self) -> None:
        self.counter += 1
        message_id = f"{self.identity}-{self.counter}"
        frame = FRAMES[self.counter % 3].format(id=message_id, tx=self.counter)
        self.pending[message_id] = time.perf_counter()
        await self.ws.send(frame)

    async def call(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        await self.send()
        await self.waiter

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


async def connect_all(
    base_url: str, n: int, auth: bool, parallel: int = 100
) -> tuple[list[Charger], float]:
    chargers = [Charger(f"CP{i:04d}") for i in range(n)]
    gate = asyncio.Semaphore(parallel)

    async def one(charger: Charger) -> None:
        async with gate:
            await charger.open(base_url, auth)

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in chargers))
    return chargers, time.perf_counter() - start


async def closed_loop(chargers: list[Charger], seconds: float) -> float:
    stop = time.perf_counter() + seconds
    before = sum(c.done for c in chargers)

    async def loop(charger: Charger) -> None:
        while time.perf_counter() < stop:
            await charger.call()

    start = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in chargers))
    return (sum(c.done for c in chargers) - before) / (time.perf_counter() - start)


async def paced(chargers: list[Charger], rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    for charger in chargers:
        charger.latencies = latencies
    interval = 1.0 / rate
    rng = random.Random(1)
    order = list(range(len(chargers)))
    rng.shuffle(order)
    start = time.perf_counter()
    total = int(rate * seconds)
    for k in range(total):
        target = start + k * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        charger = chargers[order[k % len(order)]]
        if not charger.pending:  # one call in flight per charger, as OCPP-J requires
            await charger.send()
    deadline = time.perf_counter() + 10
    while any(c.pending for c in chargers) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    for charger in chargers:
        charger.latencies = None
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _p50_p99(latencies: list[float]) -> str:
    return f"{percentile(latencies, 0.5) * 1000:.2f} / {percentile(latencies, 0.99) * 1000:.2f} ms"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_config(directory: Path, n: int, port: int, csms_port: int) -> Path:
    chargers = "\n".join(f"  - {{id: CP{i:04d}, circuit: grid}}" for i in range(n))
    text = f"""\
site: {{id: bench, limit_kw: 60000, phase_limit_a: 100000, non_ev_max_a: 1}}
charger_defaults: {{max_current_a: 32, failsafe_current_a: 0, password: {PASSWORD}}}
chargers:
{chargers}
ocpp:
  listen_host: 127.0.0.1
  listen_port: {port}
  upstream_url: ws://127.0.0.1:{csms_port}/csms
  ping_interval_s: 300
mqtt: {{enabled: false}}
http: {{enabled: false}}
storage: {{path: {directory / "bench.sqlite"}, synchronous: NORMAL}}
"""
    path = directory / "bench.yaml"
    path.write_text(text)
    return path


async def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    csms_port, port = free_ports(2)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), args.chargers, port, csms_port)
        csms = subprocess.Popen(
            [sys.executable, __file__, "_csms", str(csms_port)], stdout=subprocess.PIPE, text=True
        )
        sitectl = subprocess.Popen(
            [sys.executable, "-m", "sitectl", "--log-level", "WARNING", "run", "-c", str(config)],
            cwd=REPO,
        )
        try:
            assert csms.stdout.readline().strip() == "ready"
            wait_port(port, 60)
            rss_idle = rss_mb(sitectl.pid)

            # Baseline: the same traffic straight to the CSMS.
            direct, _ = await connect_all(
                f"ws://127.0.0.1:{csms_port}/csms", args.chargers, auth=False
            )
            direct_lat = await paced(direct, args.rate, args.seconds)
            await asyncio.gather(*(c.close() for c in direct))

            chargers, connect_s = await connect_all(
                f"ws://127.0.0.1:{port}/ocpp", args.chargers, auth=True
            )
            cpu0 = _cpu_seconds(sitectl.pid)
            throughput = await closed_loop(chargers, args.seconds)
            cpu1 = _cpu_seconds(sitectl.pid)
            proxy_lat = await paced(chargers, args.rate, args.seconds)
            rss = rss_mb(sitectl.pid)
            await asyncio.gather(*(c.close() for c in chargers))
        finally:
            sitectl.terminate()
            csms.terminate()
            sitectl.wait(30)
            csms.wait(30)

    added_p50 = (percentile(proxy_lat, 0.5) - percentile(direct_lat, 0.5)) * 1000
    added_p99 = (percentile(proxy_lat, 0.99) - percentile(direct_lat, 0.99)) * 1000
    rows = [
        ("chargers connected", f"{args.chargers}", "", True),
        ("connect time, all chargers", f"{connect_s:.1f} s", "≤ 30 s", connect_s <= 30),
        ("sustained round trips/s", f"{throughput:.0f}", "≥ 2000", throughput >= 2000),
        (
            "sitectl CPU during sustained load",
            f"{(cpu1 - cpu0) / args.seconds * 100:.0f} % of one core",
            "",
            True,
        ),
        (
            f"latency direct p50 / p99 at {args.rate:g}/s",
            _p50_p99(direct_lat),
            "",
            True,
        ),
        (
            f"latency via sitectl p50 / p99 at {args.rate:g}/s",
            _p50_p99(proxy_lat),
            "",
            True,
        ),
        ("added latency p50", f"{added_p50:.2f} ms", "≤ 2 ms", added_p50 <= 2),
        ("added latency p99", f"{added_p99:.2f} ms", "≤ 15 ms", added_p99 <= 15),
        ("sitectl RSS idle / loaded", f"{rss_idle:.0f} / {rss:.0f} MB", "≤ 400 MB", rss <= 400),
    ]
    return print_table(rows)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_csms":
        asyncio.run(csms_main(int(sys.argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chargers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=500)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
