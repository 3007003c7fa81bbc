"""``GET /api/reports/utilization?from=&to=``: the report over the local HTTP API.

``from`` and ``to`` take what ``sitectl report`` takes (`sitectl.utilization.times`); the
default is the last 7 days. The report is computed in a worker thread on its own read-only
connection to the store (a reader never blocks the writers), one at a time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from aiohttp import web

from sitectl.config import Config
from sitectl.http.views import ErrorView
from sitectl.utilization.models import UtilizationReport
from sitectl.utilization.report import ReportError, open_store, utilization_report
from sitectl.utilization.times import MOMENT_PATTERN, parse_moment

__all__ = ["MAX_WINDOW_DAYS", "UtilizationApi"]

#: The longest window one request may ask for (days).
MAX_WINDOW_DAYS = 800
#: The default window.
DEFAULT_DAYS = 7
_MOMENT = re.compile(MOMENT_PATTERN)
_HELP = (
    "give an ISO date (2026-03-01), date and time (2026-03-01T18:00, local unless it has an "
    "offset or Z), now, today, yesterday, or a relative time like -7d, -12h, -30m, -2w"
)


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body = ErrorView(error=message, field=field).model_dump_json(exclude_none=True)
    return web.Response(status=status, text=body, content_type="application/json")


class UtilizationApi:
    """The handler of the utilization report.

    Args:
        config: the configuration (the store's path, the time zone, chargers and circuits).
        clock: the current UTC time (the state's).
    """

    def __init__(self, config: Config, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.clock = clock
        self._one_at_a_time = asyncio.Lock()

    def window(self, query: dict[str, str]) -> tuple[datetime, datetime] | web.Response:
        """The window a query asks for, or the error that says what is wrong: 400 for a time
        that cannot be read, 422 for a window that cannot be (empty, too long)."""
        zone = ZoneInfo(self.config.site.timezone)
        now = self.clock()
        moments: dict[str, datetime] = {}
        for name in ("to", "from"):
            text = query.get(name)
            if text is not None and (len(text) > 64 or not _MOMENT.fullmatch(text)):
                return _error(400, f"{name}: {_HELP}", name)
            try:
                if text is not None:
                    moments[name] = parse_moment(text, zone, now)
                elif name == "to":
                    moments[name] = now
                else:
                    moments[name] = moments["to"] - timedelta(days=DEFAULT_DAYS)
            except ValueError as exc:
                return _error(400, f"{name}: {exc}", name)
            except OverflowError:
                return _error(422, f"{name}: the default window reaches before year 1", name)
        start, end = moments["from"], moments["to"]
        if start >= end:
            return _error(422, "from must be before to", "from")
        if end - start > timedelta(days=MAX_WINDOW_DAYS):
            return _error(422, f"the window is longer than {MAX_WINDOW_DAYS} days", "from")
        return start, end

    async def handle(self, request: web.Request) -> web.Response:
        window = self.window(dict(request.query))
        if isinstance(window, web.Response):
            return window
        start, end = window
        now = self.clock()
        async with self._one_at_a_time:
            try:
                report = await asyncio.to_thread(self._compute, start, end, now)
            except ReportError as exc:
                return _error(503, str(exc))
        return web.Response(
            text=report.model_dump_json(by_alias=True), content_type="application/json"
        )

    def _compute(self, start: datetime, end: datetime, now: datetime) -> UtilizationReport:
        conn = open_store(self.config.storage.path)
        try:
            data = utilization_report(conn, self.config, start, end, now)
        finally:
            conn.close()
        return UtilizationReport.model_validate(data)
