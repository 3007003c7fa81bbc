"""The daily utilization message: yesterday's numbers to the cloud, without a query.

Once a local day is over (``storage.utilization.daily_delay_s`` after local midnight, by the
state's clock, so tests inject theirs), the recorder writes what it holds, the report over that
day is computed (worker thread, own read-only connection) and published on
``<prefix>/utilization`` (retained) through the uplink's outbox: durable like every message,
and never dropped for room (only summaries and superseded charger states are). The last day
sent is kept in the store's ``meta``, so a restart neither repeats nor skips a day; days missed
while sitectl was down are sent on its return, at most `CATCH_UP_DAYS` of them. A new store
begins with the day it was made (nothing before it to report).

The message carries per charger its shares and energy (connectors through the local API), per
node its time at the limit and deferred energy, and the nights that ended during the day.
Schema: ``sitectl/uplink/schemas/utilization.json``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sitectl.config import Config
from sitectl.state import SiteState
from sitectl.store import Store
from sitectl.uplink.messages import Kind, Message, Topics, iso
from sitectl.utilization.report import ReportError, nights_report, open_store, utilization_report
from sitectl.utilization.times import local_midnight

__all__ = ["CATCH_UP_DAYS", "SENT_META_KEY", "DailyUtilization", "daily_body"]

log = logging.getLogger(__name__)

#: The meta key of the last local day sent.
SENT_META_KEY = "utilization.daily_sent"
#: Days missed while sitectl was down that are still sent on its return.
CATCH_UP_DAYS = 7


def daily_body(
    report: dict[str, Any], nights: list[dict[str, Any]], day: date, now: datetime
) -> dict[str, Any]:
    """The message of one day from its report (`utilization_report`) and the nights that
    ended during it (`nights_report`)."""
    return {
        "ts": iso(now),
        "site": report["site"],
        "day": day.isoformat(),
        "timezone": report["timezone"],
        "from": report["from"],
        "to": report["to"],
        "window_s": report["window_s"],
        "recorded_s": report["recorded_s"],
        "totals": {
            k: report["totals"][k]
            for k in ("connectors", "sessions", "energy_kwh", "mean_power_kw", "shares")
        },
        "chargers": [
            {
                k: c[k]
                for k in (
                    "charger",
                    "connectors",
                    "sessions",
                    "energy_kwh",
                    "peak_power_kw",
                    "shares",
                )
            }
            for c in report["chargers"]
        ],
        "circuits": [
            {
                k: c[k]
                for k in (
                    "node",
                    "lowest_limit_a",
                    "share_at_limit",
                    "at_limit_s",
                    "deferred_kwh",
                    "peak_current_a",
                )
            }
            for c in report["circuits"]
        ],
        "nights": nights,
    }


class DailyUtilization:
    """Publishes the previous day's utilization once after local midnight.

    Args:
        config: the configuration (``storage.utilization``, the time zone, the topic prefix).
        state: the site state (its clock decides the day).
        store: the store (``meta`` keeps the last day sent).
        publish: queues a message in the uplink's outbox (`Uplink.publish`).
        flush: writes what the recorder holds (`UtilizationRecorder.flush`), if it runs.
        check_period_s: how often the clock is looked at.
    """

    name = "utilization-daily"

    def __init__(
        self,
        config: Config,
        state: SiteState,
        store: Store,
        publish: Callable[[Message], None],
        flush: Callable[[], Awaitable[None]] | None = None,
        check_period_s: float = 30.0,
    ) -> None:
        self.config = config
        self.state = state
        self.store = store
        self.publish = publish
        self.flush = flush
        self.check_period_s = check_period_s
        self.zone = ZoneInfo(config.site.timezone)
        self.topic = Topics(config.topic_prefix).utilization
        self.sent: list[date] = []  # days published by this process

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except ReportError as exc:  # no store file (yet): said once a check, not fatal
                log.warning("daily utilization not sent: %s", exc)
            except Exception:  # a bad value must not end the component (charging goes on)
                log.exception("daily utilization failed")
            await asyncio.sleep(self.check_period_s)

    def due(self, now: datetime) -> list[date]:
        """The days whose message is due now and not sent yet."""
        today = now.astimezone(self.zone).date()
        text = self.store.get_meta(SENT_META_KEY)
        if text is None:
            # A new store: nothing to report before it; the first message is for today.
            self.store.set_meta(SENT_META_KEY, (today - timedelta(days=1)).isoformat())
            return []
        try:
            last = date.fromisoformat(text)
        except ValueError:
            log.warning("ignoring unreadable %s in the store: %r", SENT_META_KEY, text)
            last = today - timedelta(days=2)
        first = max(last + timedelta(days=1), today - timedelta(days=CATCH_UP_DAYS))
        delay = timedelta(seconds=self.config.storage.utilization.daily_delay_s)
        days = []
        day = first
        while day < today:
            if now >= local_midnight(day + timedelta(days=1), self.zone) + delay:
                days.append(day)
            day += timedelta(days=1)
        return days

    async def tick(self) -> list[date]:
        """Send every message that is due; returns the days sent."""
        days = self.due(self.state.clock())
        if not days:
            return []
        if self.flush is not None:
            await self.flush()
        for day in days:
            now = self.state.clock()
            body = await asyncio.to_thread(self.body, day, now)
            self.publish(Message(Kind.UTILIZATION, self.topic, body, retain=True))
            # The outbox commits at the end of this loop turn; the day counts as sent after
            # that (a crash in between sends it again: at least once, like every message).
            await asyncio.sleep(0)
            self.store.set_meta(SENT_META_KEY, day.isoformat())
            self.sent.append(day)
            log.info("daily utilization of %s published on %s", day, self.topic)
        return days

    def body(self, day: date, now: datetime) -> dict[str, Any]:
        """The message of one local day (worker thread: its own connection)."""
        start = local_midnight(day, self.zone)
        end = local_midnight(day + timedelta(days=1), self.zone)
        conn = open_store(self.config.storage.path)
        try:
            report = utilization_report(conn, self.config, start, end, now)
            # The nights that ended during the day began at most a day before it.
            nights = [
                n
                for n in nights_report(conn, self.config, start - timedelta(days=1), end, now)
                if start < datetime.fromisoformat(n["end"].replace("Z", "+00:00")) <= end
            ]
        finally:
            conn.close()
        return daily_body(report, nights, day, now)
