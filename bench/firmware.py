"""Benchmark the firmware file server: many chargers fetch one image from sitectl at once.

Two processes on loopback: this one (the clients: aiohttp, each with its own per-charger token
URL) and sitectl's `FirmwareServer` on its own aiohttp server (``--role server``), so that
sitectl's memory is measured alone. The image (random bytes, fixed seed) is put into a real
`FirmwareCache` on disk first; the clients then start together and each reads the whole image.

Measured: aggregate throughput (all bytes / time from the first request to the last byte), the
slowest client, every client's length and the first client's SHA-256, and sitectl's RSS growth
over its idle baseline (sampled every 20 ms while the clients run).

Targets (issue #8): ≥ 200 MB/s aggregate; RSS growth ≤ 50 MB (images are streamed from disk
with sendfile, never held in memory). Exits 1 on a miss or a wrong byte count.

    python bench/firmware.py [--clients 50] [--mb 100]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import free_ports, print_table, raise_fd_limit

SEED = 8
THROUGHPUT_TARGET_MB_S = 200.0
RSS_TARGET_MB = 50.0
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------
# Role: sitectl's firmware server (its own process)


async def server_main(workdir: Path, port: int, image: Path, clients: int) -> None:
    from sitectl.config import Config
    from sitectl.firmware import FIRMWARE_MIGRATION, FirmwareCache, FirmwareServer
    from sitectl.store import MIGRATIONS, Store

    raise_fd_limit()
    config = Config.model_validate(
        {
            "site": {"id": "bench", "limit_kw": 1000, "phase_limit_a": 2000},
            "firmware": {
                "cache_dir": str(workdir / "cache"),
                "cache_max_mb": 4096,
                "base_url": f"http://127.0.0.1:{port}",
            },
            "mqtt": {"enabled": False},
            "http": {"enabled": False},
        }
    )
    store = Store(workdir / "bench.sqlite", migrations=(*MIGRATIONS, FIRMWARE_MIGRATION))
    cache = FirmwareCache(store, config.firmware)
    cached = await cache.import_file(image, "http://vendor.example/fw/bench-image.bin")
    files = FirmwareServer(cache, config)
    runner = await files.start("127.0.0.1", port)
    urls = [files.local_url(f"BENCH-{i:03d}", cached) for i in range(clients)]
    print(json.dumps({"sha256": cached.sha256, "urls": urls}), flush=True)
    try:
        # Serve until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await runner.cleanup()
        await cache.close()
        store.close()


# ------------------------------------------------------------------------------------------------
# Role: the clients (this process)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def fetch(session, url: str, verify: bool) -> tuple[int, str | None, float]:
    """Read one whole image: (bytes, SHA-256 if verified, seconds)."""
    started = time.perf_counter()
    digest = hashlib.sha256() if verify else None
    size = 0
    async with session.get(url) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        while chunk := await response.content.readany():
            size += len(chunk)
            if digest is not None:
                digest.update(chunk)
    return size, digest.hexdigest() if digest else None, time.perf_counter() - started


async def clients_main(args: argparse.Namespace) -> int:
    import aiohttp

    raise_fd_limit()
    size = args.mb * MB
    with tempfile.TemporaryDirectory(prefix="sitectl-bench-fw-") as tmp:
        workdir = Path(tmp)
        image = workdir / "image.bin"
        rng = random.Random(SEED)
        with open(image, "wb") as f:
            for _ in range(args.mb):
                f.write(rng.randbytes(MB))
        (port,) = free_ports(1)
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--role",
            "server",
            "--dir",
            str(workdir),
            "--port",
            str(port),
            "--image",
            str(image),
            "--clients",
            str(args.clients),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert server.stdout is not None
            line = await asyncio.wait_for(server.stdout.readline(), 120)
            if not line:
                raise SystemExit("the firmware server did not start")
            ready = json.loads(line)
            baseline = rss_mb(server.pid)
            peak = baseline
            sampling = True

            async def sample() -> None:
                nonlocal peak
                while sampling:
                    peak = max(peak, rss_mb(server.pid))
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(fetch(session, url, i == 0) for i, url in enumerate(ready["urls"])),
                    return_exceptions=True,
                )
                elapsed = time.perf_counter() - started
            sampling = False
            await sampler
        finally:
            if server.stdin is not None:
                server.stdin.close()
            try:
                await asyncio.wait_for(server.wait(), 10)
            except TimeoutError:
                server.kill()
    failures = [r for r in results if isinstance(r, BaseException)]
    done = [r for r in results if not isinstance(r, BaseException)]
    complete = sum(1 for r in done if r[0] == size)
    first_ok = bool(done) and done[0][1] in (None, ready["sha256"])
    total = sum(r[0] for r in done)
    aggregate = total / MB / elapsed
    slowest = max((r[2] for r in done), default=float("nan"))
    growth = peak - baseline
    return print_table(
        [
            ("clients × image", f"{args.clients} × {args.mb} MB", "-", True),
            (
                "aggregate throughput",
                f"{aggregate:,.0f} MB/s",
                f"≥ {THROUGHPUT_TARGET_MB_S:.0f}",
                aggregate >= THROUGHPUT_TARGET_MB_S,
            ),
            ("wall time / slowest client", f"{elapsed:.2f} s / {slowest:.2f} s", "-", True),
            (
                "complete downloads (SHA-256 of #1)",
                f"{complete}/{args.clients}{', ok' if first_ok else ', WRONG'}",
                "all",
                complete == args.clients and first_ok and not failures,
            ),
            (
                "sitectl RSS growth",
                f"+{growth:.1f} MB (idle {baseline:.0f} MB)",
                f"≤ {RSS_TARGET_MB:.0f} MB",
                growth <= RSS_TARGET_MB,
            ),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--mb", type=int, default=100, help="image size in MB")
    parser.add_argument("--role", choices=["clients", "server"], default="clients")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--port", type=int)
    parser.add_argument("--image", type=Path)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(server_main(args.dir, args.port, args.image, args.clients))
        return 0
    return asyncio.run(clients_main(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
