"""Benchmark what utilization recording costs: the store after a year, and the time it takes.

A synthetic year of a bus depot (fixed seed) is written through the recorder's store API
(`sitectl.utilization.store.UtilizationStore`: the same batches, rollup and expiry the
recorder runs, with the default ``storage.utilization`` settings), a day at a time:

- `--connectors` connectors (two per charger), `--circuits` circuits; every night each bus
  plugs in between 17:00 and 21:00 and leaves between 05:00 and 07:30 (local), charging for
  2 to 7 hours of it; a third of the connectors also take a midday top-up of 1 to 3 hours;
  every session has its status changes (Preparing, Charging, SuspendedEV, Finishing,
  Available) and its outcome; a fault or a reconnection now and then.
- 1-minute buckets wherever a connector is plugged in; every node a bucket every minute.
- The rollup and expiry run after each day, as the recorder's hourly maintenance would.

Reported: the file size after the year (database and WAL, after a checkpoint) against
`--target-mb`, the rows per table, and three timings that matter to a running depot: one
recorder sample of 1,000 connectors (event loop), one 1-minute batch of the depot written
(worker thread), and the report over the whole year (CLI / API). Exits 1 on a miss.

    python bench/store_size.py [--connectors 100] [--days 365] [--target-mb 300]
    python bench/store_size.py --all-day     # the worst case: every bus plugged in all day
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table

from sitectl.config import Config
from sitectl.state import SiteState
from sitectl.store import Store
from sitectl.utilization.recorder import UtilizationRecorder
from sitectl.utilization.report import open_store, utilization_report
from sitectl.utilization.store import (
    Batch,
    CircuitBucket,
    ConnectorBucket,
    SessionOutcome,
    StatusEvent,
    UtilizationStore,
)

SEED = 21
ZONE = ZoneInfo("Europe/Berlin")
SAMPLE_TARGET_MS = 50.0  # one sample of 1,000 connectors, on the event loop
BATCH_TARGET_MS = 200.0  # one minute of the depot, one transaction, off the event loop
REPORT_TARGET_S = 60.0  # the report over the year


def depot(connectors: int, circuits: int, path: Path) -> Config:
    chargers = [
        {
            "id": f"BUS-{k:04d}",
            "circuit": f"feeder-{k % circuits}",
            "max_current_a": 63,
            "connectors": 2,
            "password": f"bench-password-{k:08d}",
        }
        for k in range((connectors + 1) // 2)
    ]
    return Config.model_validate(
        {
            "site": {"id": "bench", "limit_kw": 5000, "phase_limit_a": 8000, "timezone": str(ZONE)},
            "circuits": [
                {"id": f"feeder-{k}", "limit_a": 1000, "chargers_only": True}
                for k in range(circuits)
            ],
            "chargers": chargers,
            "storage": {"path": str(path)},
            "mqtt": {"enabled": False},
        }
    )


class Year:
    """Writes the synthetic year through the store API."""

    def __init__(self, config: Config, store: Store, rng: random.Random, all_day: bool) -> None:
        self.config = config
        self.writer = UtilizationStore(store)
        self.rng = rng
        self.all_day = all_day
        self.points = [(c.id, n) for c in config.chargers for n in range(1, c.connectors + 1)]
        self.nodes = list(config.circuit_limits_a())
        self.settings = config.storage.utilization
        self.sessions = 0
        self.first = True

    def plugged(self, day: datetime) -> list[tuple[int, int, int]]:
        """(start minute, end minute, charging minutes) of one connector's sessions, in
        minutes from the day's local midnight (a night's session runs into the next day)."""
        rng = self.rng
        if self.all_day:
            return [(0, 1440, rng.randint(300, 600))]
        out = [(rng.randint(17 * 60, 21 * 60), rng.randint(29 * 60, 31 * 60 + 30), 0)]
        out[0] = (out[0][0], out[0][1], rng.randint(120, 420))
        if rng.random() < 1 / 3:
            start = rng.randint(10 * 60, 13 * 60)
            out.append((start, start + rng.randint(60, 180), 0))
            out[-1] = (out[-1][0], out[-1][1], rng.randint(30, out[-1][1] - out[-1][0] - 10))
        return out

    def day(self, day: datetime) -> None:
        rng = self.rng
        midnight = day.timestamp()
        base = int(midnight // 60) * 60
        batch = Batch()
        if self.first:  # the chargers connect as the recording begins
            self.first = False
            batch.statuses += [
                StatusEvent(base * 1000, c.id, 0, "Connected") for c in self.config.chargers
            ]
        for charger, number in self.points:
            for start, end, charge in self.plugged(day):
                t0 = base + start * 60
                events = [
                    (t0, "Preparing"),
                    (t0 + 60, "Charging"),
                    (t0 + 60 + charge * 60, "SuspendedEV"),
                    (base + (end - 1) * 60, "Finishing"),
                    (base + end * 60, "Available"),
                ]
                if rng.random() < 0.01:
                    events.append((base + end * 60 + 300, "Faulted"))
                    events.append((base + end * 60 + 900, "Available"))
                batch.statuses += [StatusEvent(t * 1000, charger, number, s) for t, s in events]
                kw = rng.uniform(40, 150)
                energy = 0.0  # Wh
                for minute in range(start, end):
                    drawing = start + 1 <= minute < start + 1 + charge
                    power = kw * rng.uniform(0.9, 1.0) if drawing else 0.0
                    energy += power * 1000 / 60
                    batch.connectors.append(
                        ConnectorBucket(
                            charger,
                            number,
                            base + minute * 60,
                            sampled_s=60,
                            drawing_s=60 if drawing else 0,
                            energy_wh=power * 1000 / 60,
                            mean_w=power * 1000,
                            max_w=power * 1000 * rng.uniform(1.0, 1.05),
                            mean_a=power * 1000 / 3 / 230,
                            max_a=power * 1000 / 3 / 230 * 1.05,
                        )
                    )
                self.sessions += 1
                need = energy / 1000 * rng.uniform(0.8, 1.1)
                batch.sessions.append(
                    SessionOutcome(
                        session_id=f"{charger}/{number}/{t0}",
                        charger=charger,
                        connector=number,
                        started_ms=t0 * 1000,
                        ended_ms=(base + end * 60) * 1000,
                        energy_wh=energy,
                        need_kwh=need,
                        need_source="fleet",
                        departure_ms=(base + end * 60) * 1000,
                        departure_source="fleet",
                        by_departure_wh=energy,
                        outcome="met" if energy / 1000 >= need - 0.5 else "missed",
                    )
                )
            if rng.random() < 0.02:  # a reconnection now and then
                at = (base + rng.randint(0, 1439) * 60) * 1000
                batch.statuses += [
                    StatusEvent(at, charger, 0, "Disconnected"),
                    StatusEvent(at + 30_000, charger, 0, "Connected"),
                ]
        for node in self.nodes:
            for minute in range(1440):
                busy = minute >= 20 * 60 or minute < 4 * 60
                batch.circuits.append(
                    CircuitBucket(
                        node,
                        base + minute * 60,
                        sampled_s=60,
                        at_limit_s=rng.choice((0, 60)) if busy else 0,
                        limit_a=1000.0,
                        metered_s=60,
                        mean_a=rng.uniform(300, 990) if busy else rng.uniform(10, 200),
                        max_a=rng.uniform(300, 1000) if busy else rng.uniform(10, 220),
                        deferred_wh=rng.uniform(0, 900) if busy else 0.0,
                    )
                )
        batch.run = (base * 1000, (base + 86400) * 1000)
        self.writer.write(batch)
        now = midnight + 86400
        self.writer.rollup(
            int(now - self.settings.minute_days * 86400), self.settings.rollup_min * 60
        )
        self.writer.expire(int(now - self.settings.retention_days * 86400))


def sample_ms(tmp: Path) -> float:
    """One recorder sample of a 1,000-connector depot, all charging (the event loop's cost)."""
    config = depot(1000, 20, tmp / "sample.sqlite")
    now = [datetime.now(UTC)]
    mono = [1000.0]
    state = SiteState(config, clock=lambda: now[0], monotonic=lambda: mono[0])
    store = Store(config.storage.path, "NORMAL")
    try:
        recorder = UtilizationRecorder(config, state, store)
        recorder.start()
        for charger in state.chargers.values():
            charger.connected = True
            for connector in charger.connectors.values():
                connector.status = "Charging"
                connector.power_kw, connector.current_a = 100.0, (145.0, 145.0, 145.0)
                connector.energy_register_wh = 1000.0
        times = []
        for _ in range(30):
            now[0] += timedelta(seconds=10)
            mono[0] += 10
            for charger in state.chargers.values():
                for connector in charger.connectors.values():
                    connector.power_mono = connector.current_mono = mono[0]
                    connector.energy_register_wh = (connector.energy_register_wh or 0) + 277.8
            began = time.perf_counter()
            recorder.sample()
            times.append(time.perf_counter() - began)
        return 1000 * sorted(times)[len(times) // 2]
    finally:
        store.close()


def batch_ms(config: Config, tmp: Path, rng: random.Random) -> float:
    """One minute of the depot (every connector and node) written in one transaction."""
    store = Store(tmp / "batch.sqlite")  # synchronous=FULL, as in production
    try:
        writer = UtilizationStore(store)
        points = [(c.id, n) for c in config.chargers for n in range(1, c.connectors + 1)]
        times = []
        for minute in range(20):
            t = 1_700_000_000 + minute * 60
            batch = Batch(
                connectors=[
                    ConnectorBucket(
                        c,
                        n,
                        t,
                        sampled_s=60,
                        drawing_s=60,
                        energy_wh=1500.0,
                        mean_w=90000.0,
                        max_w=95000.0,
                        mean_a=130.0,
                        max_a=137.0,
                    )
                    for c, n in points
                ],
                circuits=[
                    CircuitBucket(
                        node,
                        t,
                        sampled_s=60,
                        limit_a=1000.0,
                        metered_s=60,
                        mean_a=rng.uniform(100, 900),
                        max_a=950.0,
                    )
                    for node in config.circuit_limits_a()
                ],
                run=(t * 1000, (t + 60) * 1000),
            )
            began = time.perf_counter()
            writer.write(batch)
            times.append(time.perf_counter() - began)
        return 1000 * sorted(times)[len(times) // 2]
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=100)
    parser.add_argument("--circuits", type=int, default=10)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--target-mb", type=float, default=300.0)
    parser.add_argument("--all-day", action="store_true", help="every bus plugged in all day")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="sitectl-store-size-") as name:
        tmp = Path(name)
        path = tmp / "year.sqlite"
        config = depot(args.connectors, args.circuits, path)
        # NORMAL: the same file, written faster than with an fsync per day.
        store = Store(path, "NORMAL")
        year = Year(config, store, rng, args.all_day)
        first = datetime.now(ZONE).replace(hour=0, minute=0, second=0, microsecond=0)
        first -= timedelta(days=args.days + 1)
        began = time.perf_counter()
        for k in range(args.days):
            year.day((first + timedelta(days=k)).astimezone(UTC))
            if (k + 1) % 30 == 0:
                print(f"  day {k + 1}: {path.stat().st_size / 1e6:.0f} MB", flush=True)
        written_s = time.perf_counter() - began
        counts = {
            table: store.query(f"SELECT count(*) AS n FROM {table}")[0]["n"]
            for table in ("util_status", "util_connector", "util_circuit", "util_sessions")
        }
        free_pages = store.query("PRAGMA freelist_count")[0][0]
        store.close()  # checkpoints the WAL into the file
        size_mb = sum(p.stat().st_size for p in tmp.glob("year.sqlite*")) / 1e6
        conn = open_store(path)
        try:
            end = (first + timedelta(days=args.days)).astimezone(UTC)
            began = time.perf_counter()
            report = utilization_report(conn, config, end - timedelta(days=args.days), end, end)
            report_s = time.perf_counter() - began
        finally:
            conn.close()
        sample = sample_ms(tmp)
        batch = batch_ms(config, tmp, rng)
    print(
        f"\n{args.connectors} connectors, {args.circuits} circuits, {args.days} days "
        f"({'plugged in all day' if args.all_day else 'overnight buses, some midday top-ups'}), "
        f"seed {args.seed}; written in {written_s:.0f} s; {year.sessions} sessions; "
        f"{report['totals']['energy_kwh'] / 1000:.0f} MWh delivered"
    )
    for table, n in counts.items():
        print(f"  {table}: {n:,} rows")
    rows = [
        (
            f"store after {args.days} days (MB)",
            f"{size_mb:.0f}",
            f"<= {args.target_mb:g}",
            size_mb <= args.target_mb,
        ),
        (
            "recorder sample, 1,000 connectors (ms)",
            f"{sample:.1f}",
            f"<= {SAMPLE_TARGET_MS:g}",
            sample <= SAMPLE_TARGET_MS,
        ),
        (
            "1-minute batch written, FULL (ms)",
            f"{batch:.1f}",
            f"<= {BATCH_TARGET_MS:g}",
            batch <= BATCH_TARGET_MS,
        ),
        (
            "report over the whole window (s)",
            f"{report_s:.1f}",
            f"<= {REPORT_TARGET_S:g}",
            report_s <= REPORT_TARGET_S,
        ),
    ]
    print(f"  freelist pages (space reused, not returned): {free_pages:,}")
    return print_table(rows)


if __name__ == "__main__":
    sys.exit(main())
