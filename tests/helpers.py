"""Helpers shared by the test suite: free ports and waiting on conditions (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sitectl.sim.ports import free_ports

__all__ = ["MINIMAL_CONFIG", "free_port", "free_ports", "loop_turn", "wait_for", "wait_for_sync"]

#: A small valid depot (one feeder, one charger) for tests that need any valid config.
MINIMAL_CONFIG = """\
site:
  id: test-depot
  limit_kw: 100
  phase_limit_a: 160
circuits:
  - id: feeder
    limit_a: 100
chargers:
  - id: CP1
    circuit: feeder
    max_current_a: 32
    password: cp1-password-0123456789
ocpp:
  listen_host: 127.0.0.1
storage:
  path: state.sqlite
mqtt:
  enabled: false
http:
  enabled: false
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    return free_ports(1, host)[0]


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition",
) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds.

    `message` may be a function, called at the timeout, to say what the state was then.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            said = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for {said}")
        await asyncio.sleep(interval)


async def loop_turn() -> None:
    """Let the event loop run what is ready, once (a yield, no waiting)."""
    loop = asyncio.get_running_loop()
    turned = loop.create_future()
    loop.call_soon(turned.set_result, None)
    await turned


def wait_for_sync(
    condition: Callable[[], bool],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str = "condition",
) -> None:
    """Blocking variant of `wait_for` for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            said = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for {said}")
        time.sleep(interval)
