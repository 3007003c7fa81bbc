"""The webhook the VTN calls on a subscribed change: a notification makes the VEN read again.

An aiohttp endpoint of its own (``grid_signals.openadr.webhook``). The VTN authenticates with
the bearer token sitectl put in the subscription (a random one per start); a notification is
only a hint — what counts is what the next read of the VTN says, so a forged or garbled one
can at worst cause one more read.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Callable

import openadr3
from aiohttp import web

from sitectl.config import OpenAdrWebhook

__all__ = ["NotificationEndpoint"]

log = logging.getLogger(__name__)

#: Object types whose change means the limits or prices may have changed.
_RELEVANT = {"EVENT", "PROGRAM"}


class NotificationEndpoint:
    """The webhook listener; `start` binds it, `callback_url` is what the VTN is told.

    Args:
        config: the ``webhook`` section.
        on_notification: called (on the event loop) for every accepted notification.
    """

    def __init__(self, config: OpenAdrWebhook, on_notification: Callable[[str], None]) -> None:
        self.config = config
        self.on_notification = on_notification
        self.bearer_token = secrets.token_urlsafe(32)
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def callback_url(self) -> str:
        """The configured callback URL, else this listener's own address."""
        if self.config.callback_url:
            return self.config.callback_url
        host = self.config.listen_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}{self.config.path}"

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post(self.config.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen_host, self.config.listen_port)
        await site.start()
        addresses = self._runner.addresses
        self.port = addresses[0][1] if addresses else self.config.listen_port
        log.info("OpenADR: notifications on %s", self.callback_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        expected = f"Bearer {self.bearer_token}"
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("OpenADR: notification from %s without our token: refused", request.remote)
            return web.json_response({"title": "Unauthorized", "status": 401}, status=401)
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict) or not openadr3.is_notification(body):
                raise ValueError("not a notification object")
            notification = openadr3.coerce_notification(body)
        except Exception as exc:  # the library meets garbage in many ways; none may stop us
            log.warning("OpenADR: bad notification refused (%s: %s)", type(exc).__name__, exc)
            return web.json_response(
                {"title": "Bad Request", "status": 400, "detail": "not an OpenADR notification"},
                status=400,
            )
        self.received += 1
        kind = notification.object_type
        log.info("OpenADR: notification %s %s", notification.operation, kind)
        if kind in _RELEVANT:
            self.on_notification(kind)
        return web.json_response({})
