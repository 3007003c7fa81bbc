"""Connections over the HTTP caps are refused quietly (issue #22.2, found by bench/slow_http.py).

Aborted inside aiohttp's connection hook, each one made aiohttp's handler task fail on an
assertion: a traceback per refused connection, 112,000 log lines in 20 s at 400 slow clients.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from tests.helpers import wait_for
from tests.http.test_hardening import running  # noqa: F401 - the fixture


async def test_refused_connections_leave_no_traceback_and_few_lines(running, caplog) -> None:  # noqa: F811
    caplog.set_level(logging.WARNING)
    server = await running(max_connections=4, max_connections_per_client=100)
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
    await wait_for(lambda: len(server.connections.open) == 4, message="four held")
    extra = []
    for k in range(60):
        source = f"127.0.2.{k + 1}"
        extra.append(
            await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
        )
    await wait_for(lambda: server.connections.refused == 60, message="sixty refused")
    for reader, _ in extra:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    for _, writer in extra + held:
        writer.close()
    gc.collect()  # a failed task is reported when it is collected
    await asyncio.sleep(0)
    assert "Task exception was never retrieved" not in caplog.text
    refusals = [r for r in caplog.records if "HTTP connection from" in r.getMessage()]
    assert 1 <= len(refusals) <= 3  # one budget for all addresses over the global cap
