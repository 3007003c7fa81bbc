"""Run the MQTT uplink alone in a process, for the tests that SIGKILL it.

    python -m tests.uplink.runner CONFIG

Builds a `SiteState` and an `Uplink` on the config (its store is ``storage.path``) and runs
until SIGTERM or end of input. Commands, one per line on stdin:

- ``alarms START COUNT``: raise alarms ``tick:START`` … ``tick:START+COUNT-1``; once they are
  committed to the outbox, print ``queued <messages in the outbox>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from sitectl.config import load_config
from sitectl.state import Severity, SiteState
from sitectl.store import Store
from sitectl.uplink.uplink import Uplink
from tests.helpers import wait_for


async def main(config_path: str) -> None:
    config, _ = load_config(config_path)
    store = Store(config.storage.path, config.storage.synchronous)
    state = SiteState(config)
    uplink = Uplink(config, state, store, reconnect_delay_s=(0.1, 0.5))
    task = asyncio.create_task(uplink.run())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    try:
        while not task.done():
            line = (await reader.readline()).decode()
            if not line:
                break
            words = line.split()
            if words[:1] == ["alarms"]:
                start, count = int(words[1]), int(words[2])
                for n in range(start, start + count):
                    state.raise_alarm("tick", str(n), Severity.INFO, f"tick {n}")
                # The outbox commits once the loop has turned.
                await wait_for(
                    lambda: not uplink._pending, timeout=30, interval=0.001, message="commit"
                )
                print(f"queued {uplink.outbox.count}", flush=True)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(sys.argv[1]))
