"""Benchmark the MQTT uplink: messages through the on-disk outbox to a local mosquitto.

Three processes on loopback: this one (sitectl's `Uplink` with its SQLite outbox on disk,
``synchronous=FULL`` as in production), mosquitto (with persistence, so that the subscriber's
session survives the outage), and a subscriber that checks every ``seq`` (its own process, so
its CPU is not sitectl's).

1. Sustained: `--messages` small session events (about 250 bytes) are published through the
   outbox as fast as it takes them, with at most `--backlog` waiting; reported is the rate from
   the first publish to the arrival of the last message at the subscriber.
2. Replay: mosquitto is stopped; a 10-minute outage of a depot of `--chargers` chargers is
   queued (a charger state per charger every 10 s, a start and a stop per charger, the thinned
   summaries: one a minute); mosquitto is started again; reported is the rate from the
   reconnect to the arrival of the last queued message.

Every ``seq`` from 1 to the last must arrive, in order; duplicates are counted (at-least-once
allows them; there should be none here). Targets (issue #9): sustained ≥ 2,000 messages/s,
replay ≥ 5,000 messages/s. Exits 1 on a miss, a gap or disorder.

    python bench/uplink.py [--messages 100000] [--chargers 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_ports, wait_port

SEED = 9
PREFIX = "sitectl/bench"
SUSTAINED_TARGET = 2_000.0
REPLAY_TARGET = 5_000.0


# ------------------------------------------------------------------------------------------------
# Role: the subscriber (its own process)


def subscriber_main(port: int) -> None:
    """Record every seq; answer ``wait <seq>`` on stdin with a JSON report."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    lock = threading.Lock()
    seen: set[int] = set()
    stats = {"count": 0, "duplicates": 0, "disorder": 0, "max": 0, "last_arrival": 0.0}
    subscribed = threading.Event()

    def on_message(client, userdata, message) -> None:
        payload = message.payload
        if not payload.startswith(b'{"seq":'):
            return  # the Last Will has no seq
        # The outbox puts seq first: '{"seq":123,...'; cheaper than parsing every payload.
        seq = int(payload[7 : payload.find(b",", 7)])
        with lock:
            stats["count"] += 1
            stats["last_arrival"] = time.time()
            if seq in seen:
                stats["duplicates"] += 1
            elif seq < stats["max"]:
                stats["disorder"] += 1
            seen.add(seq)
            stats["max"] = max(stats["max"], seq)

    def on_connect(client, userdata, flags, reason, properties) -> None:
        # No retained messages on a re-subscribe: they would count as duplicates.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe(f"{PREFIX}/#", options=options)

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-subscriber", protocol=mqtt.MQTTv5
    )
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *args: subscribed.set()
    client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
    client.max_inflight_messages_set(1000)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600  # survive the broker restart with the session
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    client.loop_start()
    subscribed.wait(10)
    print("ready", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "wait":
            target, timeout = int(parts[1]), float(parts[2])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with lock:
                    if all(n in seen for n in range(1, target + 1)):
                        break
                time.sleep(0.005)
            with lock:
                missing = sum(1 for n in range(1, target + 1) if n not in seen)
                print(json.dumps({**stats, "missing": missing}), flush=True)
        elif parts[0] == "quit":
            break
    client.loop_stop()


class Subscriber:
    def __init__(self, port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "_subscriber", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the subscriber did not start")

    def wait(self, seq: int, timeout: float = 120) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"wait {seq} {timeout}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait(10)


# ------------------------------------------------------------------------------------------------
# The broker


class Broker:
    def __init__(self, workdir: Path) -> None:
        [self.port] = free_ports(1)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            textwrap.dedent(f"""\
            user root
            listener {self.port} 127.0.0.1
            allow_anonymous true
            persistence true
            persistence_location {workdir}/
            max_queued_messages 0
            log_dest none
            """)
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port, 10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


# ------------------------------------------------------------------------------------------------
# The sitectl side


CONFIG = """\
site: {{id: bench, limit_kw: 1000, phase_limit_a: 1600}}
storage: {{path: {storage}}}
http: {{enabled: false}}
ocpp: {{listen_host: 127.0.0.1}}
mqtt:
  host: 127.0.0.1
  port: {port}
  topic_prefix: {prefix}
  summary_period_s: 3600
  outbox_max_messages: 1000000
  outbox_max_bytes: 1000000000
"""


def session_message(rng: random.Random, n: int):
    from sitectl.uplink.messages import Kind, Message, iso

    now = datetime.now(UTC)
    body = {
        "ts": iso(now),
        "event": "stopped",
        "session_id": f"BUS-{n % 200:03d}/{n}",
        "charger": f"BUS-{n % 200:03d}",
        "connector": 1,
        "transaction_id": str(n),
        "id_tag_hash": f"{rng.getrandbits(64):016x}",
        "started_at": iso(now - timedelta(hours=3)),
        "energy_kwh": round(rng.uniform(20, 300), 3),
        "ended_at": iso(now),
        "duration_s": 10800.0,
    }
    return Message(Kind.SESSION, f"{PREFIX}/sessions", body)


def outage_backlog(rng: random.Random, chargers: int) -> list:
    """What a 10-minute outage queues: charger states every 10 s, sessions, thinned summaries."""
    from sitectl.state import ChargerState, ConnectorState, SessionState
    from sitectl.uplink.messages import Kind, Message, charger_body, session_body

    start = datetime.now(UTC)
    out = []
    for minute in range(10):
        out.append(
            Message(Kind.SUMMARY, f"{PREFIX}/summary", {"ts": start.isoformat(), "m": minute})
        )
        for step in range(6):
            now = start + timedelta(seconds=60 * minute + 10 * step)
            for c in range(chargers):
                charger_id = f"BUS-{c:03d}"
                session = SessionState(
                    f"{charger_id}/{c}", 1, start, str(c), f"{c:016x}", 0.0, 1000.0 * minute
                )
                connector = ConnectorState(
                    1,
                    "Charging",
                    session=session,
                    current_a=(rng.uniform(0, 32), rng.uniform(0, 32), rng.uniform(0, 32)),
                    power_kw=rng.uniform(0, 22),
                    measured_at=now,
                    limit_a=32.0,
                )
                charger = ChargerState(
                    charger_id,
                    "1.6",
                    True,
                    False,
                    "Vendor",
                    "Model",
                    "1.2.3",
                    connectors={1: connector},
                    limit_a=32.0,
                )
                out.append(
                    Message(
                        Kind.CHARGER,
                        f"{PREFIX}/chargers/{charger_id}",
                        charger_body(charger, now),
                        retain=True,
                        key=charger_id,
                    )
                )
                if minute in (0, 9) and step == 0:
                    event = "started" if minute == 0 else "stopped"
                    out.append(
                        Message(
                            Kind.SESSION, f"{PREFIX}/sessions", session_body(session, event, now)
                        )
                    )
    return out


async def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def run(args: argparse.Namespace, workdir: Path) -> int:
    from sitectl.config import load_config
    from sitectl.state import SiteState
    from sitectl.store import Store
    from sitectl.uplink.uplink import Uplink

    rng = random.Random(SEED)
    broker = Broker(workdir)
    broker.start()
    subscriber = Subscriber(broker.port)
    config_path = workdir / "site.yaml"
    config_path.write_text(
        CONFIG.format(storage=workdir / "sitectl.sqlite", port=broker.port, prefix=PREFIX)
    )
    config, _ = load_config(config_path, environ={})
    store = Store(config.storage.path, "FULL")
    state = SiteState(config)
    uplink = Uplink(config, state, store, reconnect_delay_s=(0.05, 0.2))
    task = asyncio.create_task(uplink.run())
    rows: list[tuple[str, str, str, bool]] = []
    failures: list[str] = []
    try:
        await wait_until(lambda: uplink.connected, 10, "the uplink to connect")

        # 1. Sustained.
        n = args.messages
        messages = [session_message(rng, i) for i in range(n)]
        started = time.time()
        i = 0
        while i < n:
            if uplink.outbox.count + len(uplink._pending) > args.backlog:
                await asyncio.sleep(0.001)
                continue
            for message in messages[i : i + 200]:
                uplink.publish(message)
            i += 200
            await asyncio.sleep(0)
        await wait_until(lambda: uplink.outbox.count == 0, 300, "the outbox to drain")
        report = subscriber.wait(uplink.outbox.seq)
        sustained = n / (report["last_arrival"] - started)
        check(report, "sustained", failures)
        rows.append(
            (
                f"sustained: {n:,} messages",
                f"{sustained:,.0f} msg/s",
                f">= {SUSTAINED_TARGET:,.0f}",
                sustained >= SUSTAINED_TARGET,
            )
        )

        # 2. Outage and replay.
        broker.stop()
        await wait_until(lambda: not uplink.connected, 10, "the uplink to notice the outage")
        backlog = outage_backlog(rng, args.chargers)
        queued_at = time.time()
        for start in range(0, len(backlog), 500):
            for message in backlog[start : start + 500]:
                uplink.publish(message)
            await asyncio.sleep(0)
        await wait_until(lambda: not uplink._pending, 60, "the backlog to be committed")
        queue_rate = len(backlog) / (time.time() - queued_at)
        queued = uplink.outbox.count
        broker.start()
        await wait_until(lambda: uplink.connected, 30, "the uplink to reconnect")
        reconnected = time.time()
        await wait_until(lambda: uplink.outbox.count == 0, 300, "the replay to drain")
        report = subscriber.wait(uplink.outbox.seq)
        replay = queued / (report["last_arrival"] - reconnected)
        check(report, "replay", failures)
        rows.append(
            (
                f"outage: {len(backlog):,} messages queued ({args.chargers} chargers, 10 min)",
                f"{queue_rate:,.0f} msg/s",
                "",
                True,
            )
        )
        rows.append(
            (
                f"replay: {queued:,} messages after reconnect",
                f"{replay:,.0f} msg/s",
                f">= {REPLAY_TARGET:,.0f}",
                replay >= REPLAY_TARGET,
            )
        )
        rows.append(
            (
                "delivery: every seq, in order",
                f"{report['max']:,} seq, {report['missing']} missing, "
                f"{report['duplicates']} dup, {report['disorder']} disorder",
                "none missing, in order",
                not failures,
            )
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()
        subscriber.close()
        broker.stop()

    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{width}}  {'result':<40} {'target':<22}")
    for name, result, target, ok in rows:
        print(f"{name:<{width}}  {result:<40} {target:<22} {'' if ok else 'MISS'}")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 0 if all(r[3] for r in rows) and not failures else 1


def check(report: dict, phase: str, failures: list[str]) -> None:
    if report["missing"]:
        failures.append(f"{phase}: {report['missing']} seq missing")
    if report["disorder"]:
        failures.append(f"{phase}: {report['disorder']} messages out of order")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="sustained phase size")
    parser.add_argument("--chargers", type=int, default=200, help="depot size for the outage")
    parser.add_argument("--backlog", type=int, default=5_000, help="most waiting in phase 1")
    args = parser.parse_args(argv)
    # The outage is on purpose: its reconnect warnings are not news here.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    print(
        "sitectl Uplink in this process, SQLite outbox synchronous=FULL; mosquitto with its "
        "defaults (Receive Maximum 20); subscriber in its own process"
    )
    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as directory:
        return asyncio.run(run(args, Path(directory)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_subscriber":
        subscriber_main(int(sys.argv[2]))
    else:
        sys.exit(main())
