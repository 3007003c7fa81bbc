"""Benchmark: N Modbus TCP devices on loopback, each polled every period, for a fixed time.

Target (issue #5): 50 devices polled every second for 60 s, no misses, sitectl under 10 % of one
core. The simulated devices run in a separate process so their CPU is not counted as ours; the
polling process runs ``devices.meter.MeterPool`` exactly as sitectl does.

Usage: ``python bench/modbus.py [--devices 50] [--duration 60] [--period 1] [--seed 1]``.
Prints a table; exits 1 if any poll was missed or the CPU target was exceeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import random
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devices.api import DeviceSpec, TcpTransport
from devices.meter import MeterPool, Quality, Reading
from devices.profile import GENERIC, available_profiles
from devices.sim import SimMeter, SimServer

CPU_TARGET_PCT = 10.0
# A poll counts as on time if it completes within 1.5 periods of the previous one.
LATE_FACTOR = 1.5


def _plan(devices: int, seed: int) -> list[tuple[str, dict[str, float]]]:
    """Profile and starting values per device, from a fixed seed."""
    rng = random.Random(seed)
    profiles = [p for p in available_profiles() if p != GENERIC]
    plan = []
    for _ in range(devices):
        phase_kw = [round(rng.uniform(0.0, 30.0), 2) for _ in range(3)]
        plan.append(
            (
                rng.choice(profiles),
                {
                    "power_l1": phase_kw[0],
                    "power_l2": phase_kw[1],
                    "power_l3": phase_kw[2],
                    "power_total": round(sum(phase_kw), 2),
                    "current_l1": round(phase_kw[0] / 0.23, 2),
                    "current_l2": round(phase_kw[1] / 0.23, 2),
                    "current_l3": round(phase_kw[2] / 0.23, 2),
                    "energy_import": round(rng.uniform(1e3, 1e6), 1),
                },
            )
        )
    return plan


def _serve(plan: list[tuple[str, dict[str, float]]], seed: int, conn: Connection) -> None:
    """Child process: serve every device until the parent says stop."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def main() -> None:
        rng = random.Random(seed + 1)
        meters = [SimMeter(profile, values=values) for profile, values in plan]
        servers = [SimServer([m]) for m in meters]
        for s in servers:
            await s.start()
        conn.send([s.port for s in servers])
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(conn.fileno(), stop.set)
        energy = [values["energy_import"] for _, values in plan]
        while not stop.is_set():
            # Values drift like a live site: a small random walk every second.
            for i, m in enumerate(meters):
                energy[i] += rng.uniform(0.0, 0.02)
                kw = rng.uniform(0.0, 90.0)
                amps = round(kw / 3 / 0.23, 2)  # balanced at 230 V: P within V·I (plausible)
                m.update(
                    energy_import=round(energy[i], 3),
                    power_total=round(kw, 2),
                    current_l1=amps,
                    current_l2=amps,
                    current_l3=amps,
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
        for s in servers:
            await s.stop()

    asyncio.run(main())


async def _poll(
    devices: list[tuple[int, str]], period: float, duration: float
) -> tuple[list[Reading], float, float]:
    """Poll every device with a MeterPool; return readings in the window, wall and CPU time."""
    specs = [
        DeviceSpec(
            f"m{i:03d}",
            profile,
            TcpTransport("127.0.0.1", port),
            unit_id=1,
            poll_period_s=period,
            timeout_s=min(0.5, period / 2),
            retries=1,
        )
        for i, (port, profile) in enumerate(devices)
    ]
    readings: list[Reading] = []
    pool = MeterPool(specs, readings.append)
    task = asyncio.create_task(pool.run())
    # Let every device connect and complete one poll before measuring.
    warmup_end = time.monotonic() + 2 * period
    await asyncio.sleep(warmup_end - time.monotonic())
    readings.clear()
    t0, cpu0 = time.monotonic(), time.process_time()
    await asyncio.sleep(duration)
    t1, cpu1 = time.monotonic(), time.process_time()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return [r for r in readings if t0 <= r.mono < t1], t1 - t0, cpu1 - cpu0


def main() -> int:
    """Run the benchmark; return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    # pymodbus warns when a response arrives for a request we cancelled at shutdown; noise here.
    logging.getLogger("pymodbus").setLevel(logging.ERROR)

    plan = _plan(args.devices, args.seed)
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(
        target=_serve, args=(plan, args.seed, child), daemon=True
    )
    proc.start()
    try:
        if not parent.poll(60):
            print("simulator did not start", file=sys.stderr)
            return 2
        ports = parent.recv()
        devices = list(zip(ports, [p for p, _ in plan], strict=True))
        readings, wall, cpu = asyncio.run(_poll(devices, args.period, args.duration))
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.terminate()

    expected_per_device = int(args.duration / args.period)
    names = [f"m{i:03d}" for i in range(args.devices)]
    ok_by_device = {
        n: [r for r in readings if r.device == n and r.quality is Quality.OK] for n in names
    }
    achieved = sum(min(len(v), expected_per_device) for v in ok_by_device.values())
    expected = expected_per_device * args.devices
    bad = [r for r in readings if r.quality is not Quality.OK]
    late = 0
    for v in ok_by_device.values():
        late += sum(
            1 for a, b in itertools.pairwise(v) if b.mono - a.mono > LATE_FACTOR * args.period
        )
    misses = expected - achieved + late
    latencies = sorted(r.poll_s * 1000 for r in readings if r.poll_s is not None)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    cpu_pct = 100.0 * cpu / wall
    rate = len([r for r in readings if r.ok]) / wall

    rows = [
        ("devices", f"{args.devices}"),
        ("poll period", f"{args.period:g} s"),
        ("duration", f"{wall:.1f} s"),
        ("polls expected", f"{expected}"),
        ("polls achieved (ok)", f"{achieved}"),
        ("non-ok readings", f"{len(bad)}"),
        ("late (> 1.5 periods apart)", f"{late}"),
        ("misses", f"{misses}"),
        ("achieved poll rate", f"{rate:.1f} /s"),
        ("poll latency p50", f"{p50:.2f} ms"),
        ("poll latency p99", f"{p99:.2f} ms"),
        ("CPU of polling process", f"{cpu_pct:.2f} % of one core"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"bench/modbus.py  seed={args.seed}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    for r in bad[:5]:
        print(f"  e.g. {r.device}: {r.quality.value}: {r.error}")
    passed = misses == 0 and cpu_pct < CPU_TARGET_PCT
    print(f"  target: no misses, CPU < {CPU_TARGET_PCT:g} %  ->  {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
