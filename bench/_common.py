"""What the benchmarks share: ports, file limits, and the result table."""

from __future__ import annotations

import resource
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["REPO", "free_ports", "print_table", "raise_fd_limit", "wait_port"]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sitectl.sim.ports import free_ports  # noqa: E402 - after the path above

Row = tuple[str, str, str, bool]  # metric, value, target, met


def raise_fd_limit() -> None:
    """Thousands of sockets need more than the usual 1024 descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def wait_port(port: int, timeout: float) -> None:
    """Block until something listens on a loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


def print_table(rows: Sequence[Row]) -> int:
    """Print the results; returns the exit code (1 when a target is missed)."""
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    target_width = max(6, *(len(r[2]) for r in rows))
    print(f"\n{'metric':<{width}}  {'value':>{value_width}}  {'target':>{target_width}}  ok")
    for name, value, target, ok in rows:
        print(
            f"{name:<{width}}  {value:>{value_width}}  {target:>{target_width}}  "
            f"{'yes' if ok else 'NO'}"
        )
    return 0 if all(r[3] for r in rows) else 1
