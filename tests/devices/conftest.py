"""Helpers for the devices tests: collect readings and wait on conditions with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

from devices.meter import Quality, Reading
from tests import helpers
from tests.helpers import wait_for


class Readings:
    """An ``on_reading`` callback that keeps every reading and lets a test wait for one."""

    def __init__(self) -> None:
        self.items: list[Reading] = []
        self._changed = asyncio.Event()

    def __call__(self, reading: Reading) -> None:
        self.items.append(reading)
        self._changed.set()

    def of(self, device: str) -> list[Reading]:
        """Readings of one device, oldest first."""
        return [r for r in self.items if r.device == device]

    async def wait(
        self,
        predicate: Callable[[Reading], bool],
        *,
        timeout: float = 5.0,
        since: int = 0,
    ) -> Reading:
        """Return the first reading at index >= ``since`` matching ``predicate``.

        Raises:
            AssertionError: none arrived within ``timeout`` (the message shows the last ones).
        """
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            for r in self.items[checked:]:
                if predicate(r):
                    return r
            checked = max(checked, len(self.items))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = [(r.device, r.quality.value, r.error) for r in self.items[-5:]]
                raise AssertionError(f"no matching reading within {timeout} s; last: {tail}")
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def wait_quality(
        self, device: str, quality: Quality, *, timeout: float = 5.0, since: int = 0
    ) -> Reading:
        """Wait for a reading of ``device`` with ``quality``."""
        return await self.wait(
            lambda r: r.device == device and r.quality is quality, timeout=timeout, since=since
        )


@pytest.fixture
def readings() -> Readings:
    """A fresh reading collector."""
    return Readings()


@pytest.fixture
def until() -> Callable[..., object]:
    """The suite's ``wait_for`` (poll a condition, fail after a timeout)."""
    return wait_for


@pytest.fixture
async def start_pool():
    """Run ``MeterPool.run()`` in a task; cancelled (and awaited) at teardown."""
    tasks: list[asyncio.Task] = []

    def start(pool) -> asyncio.Task:
        task = asyncio.create_task(pool.run())
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nobody listens on (bound once, then released)."""
    return helpers.free_port()
