"""Local HTTP: the installer's dashboard, the JSON API and Prometheus metrics.

One aiohttp application on ``http.listen_host:listen_port``; the firmware cache adds its file
routes to the same application. Rules:

- Read endpoints are open to the LAN when ``http.open_reads`` is set, otherwise they need a
  bearer token (``http.token`` or the read-only ``http.read_token``) or the dashboard's session
  cookie (``POST /api/login``); writes and raw frames need ``http.token`` always. Without it
  every write is refused. The rules and why: `sitectl.http.auth`.
- Bad input gets a 4xx with ``{"error": ..., "field": ...}``; nothing a client sends can crash
  the server (an unexpected exception is a 500 with a log line).
- Write endpoints validate with the same code as the MQTT commands
  (`sitectl.uplink.commands.handle_command`), so both accept and refuse exactly the same things.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from aiohttp import web

from sitectl.config import Config
from sitectl.control.fleet import Fleet
from sitectl.control.limit_watch import limit_history
from sitectl.control.phase_test import PhaseTests
from sitectl.control.timetable import apply_timetable
from sitectl.firmware.cache import FirmwareCache, safe_url
from sitectl.firmware.rollout import RolloutManager
from sitectl.firmware.tracker import FirmwareTracker
from sitectl.http.auth import HttpAuth, wants_raw
from sitectl.http.limit_views import history_view
from sitectl.http.metrics import StateCollector, render_metrics
from sitectl.http.openapi import openapi_document
from sitectl.http.views import (
    AlarmView,
    CachedImageView,
    CacheView,
    ErrorView,
    FirmwareView,
    HistoryView,
    PhaseTestView,
    RolloutView,
    SessionRecord,
    charger_view,
    grid_limit_kw,
    session_plan_view,
    site_view,
)
from sitectl.ocpp.budget import LogBudget, quiet_accept_errors
from sitectl.sessions import SessionLog
from sitectl.state import SiteState
from sitectl.store import Store
from sitectl.utilization.api import UtilizationApi

__all__ = ["CommandHandler", "HttpServer", "PowerHistory"]

log = logging.getLogger(__name__)

#: (name, payload) -> the reply dict of sitectl's command handling ({"ok": ...}).
CommandHandler = Callable[[str, dict[str, Any]], dict[str, Any]]


def _site_tls(config: Config) -> ssl.SSLContext | None:
    """HTTPS with the site certificate (the one chargers see on the OCPP port), if asked for."""
    ocpp = config.ocpp
    if not config.http.tls or ocpp.tls_cert_file is None or ocpp.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ocpp.tls_cert_file, ocpp.tls_key_file)
    return context


def _rollout_id(request: web.Request) -> int | None:
    """The rollout number in the path (digits by the route), or None if absurdly long."""
    text = request.match_info["rollout_id"]
    return int(text) if len(text) <= 18 else None  # int() refuses over 4,300 digits


#: Sent with every response. The dashboard loads only its own scripts and styles (its bars are
#: sized by style attributes, hence 'unsafe-inline' for styles only) and is never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Server": "sitectl",  # no versions for a prober to look up
}


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body = ErrorView(error=message, field=field).model_dump_json(exclude_none=True)
    return web.Response(status=status, text=body, content_type="application/json")


def _refused(reply: dict[str, Any]) -> web.Response:
    """A command's refusal: 409 for a clash, 422 for a named field, else 400."""
    status = 409 if reply.get("conflict") else 422 if reply.get("field") else 400
    return _error(status, str(reply.get("error", "refused")), reply.get("field"))


def _json(model: Any) -> web.Response:
    if isinstance(model, list):
        text = "[" + ",".join(m.model_dump_json() for m in model) + "]"
    else:
        text = model.model_dump_json()
    return web.Response(text=text, content_type="application/json")


#: Seconds a client has for its request head (and an idle keep-alive connection is kept).
HEAD_TIMEOUT_S = 10.0


def default_max_connections() -> int:
    """HTTP connections at once: a quarter of the descriptors at most, the rest kept for the
    chargers, the meters, MQTT and the store (a fd-starved OCPP handshake fails)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(8, min(256, soft // 4))


class ConnectionGuard:
    """Caps the connections of an aiohttp server, in all and per client address.

    Hooks the server's connection bookkeeping (`aiohttp.web.Server.connection_made`, which
    every new connection passes): one over a cap is aborted at once, before it reads a byte.
    """

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.open: dict[Any, str] = {}  # handler -> client address
        self.per_client: dict[str, int] = {}
        self.refused = 0
        self._log = LogBudget(lines=3, window_s=60.0)

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            count = self.per_client.get(address, 0)
            if len(self.open) >= self.max_total or count >= self.max_per_client:
                self.refused += 1
                # Over the global cap the log budget is one for all addresses (a prober with
                # many addresses must not buy itself log lines); over the per-client cap, its own.
                full = len(self.open) >= self.max_total
                note = self._log.allow("*" if full else address)
                if note is not None:
                    log.warning(
                        "HTTP connection from %s refused: %d open (%d from there; at most %d, "
                        "%d per client)%s",
                        address,
                        len(self.open),
                        count,
                        self.max_total,
                        self.max_per_client,
                        note,
                    )
                # Not at once: aiohttp starts the handler's task right after this hook, and a
                # connection lost before it runs makes the task fail on an assertion (a
                # traceback per refused connection: a log flood at 400 slow clients). Read
                # nothing meanwhile; abort on the next turn of the loop, as a client reset.
                with contextlib.suppress(Exception):
                    transport.pause_reading()
                asyncio.get_running_loop().call_soon(transport.abort)
                return
            self.open[handler] = address
            self.per_client[address] = count + 1

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            address = self.open.pop(handler, None)
            if address is not None:
                left = self.per_client.get(address, 1) - 1
                if left > 0:
                    self.per_client[address] = left
                else:
                    self.per_client.pop(address, None)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]


class PowerHistory:
    """The grid connection's power and limit, sampled every few seconds for an hour."""

    def __init__(
        self, state: SiteState, config: Config, period_s: float = 5.0, span_s: float = 3600.0
    ) -> None:
        self.state = state
        self.config = config
        self.period_s = period_s
        self.samples: deque[tuple[datetime, float | None, float]] = deque(
            maxlen=int(span_s / period_s)
        )

    def sample(self) -> None:
        reading = self.state.readings.get(self.config.site.meter or "")
        power = reading.power_total_kw if getattr(reading, "ok", False) else None
        now = self.state.clock()
        # The limit in force (a grid operator's window lowers it), as the chart shows it.
        self.samples.append((now, power, grid_limit_kw(self.state, self.config, now)))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period_s)

    def view(self) -> HistoryView:
        return HistoryView(
            at=[s[0] for s in self.samples],
            power_kw=[s[1] for s in self.samples],
            limit_kw=[s[2] for s in self.samples],
        )


class HttpServer:
    """The local HTTP server component.

    Args:
        config: the validated configuration.
        state: the site state.
        sessions: the session history (for ``/api/sessions``), if kept.
        commands: command handling shared with MQTT; ``None`` refuses every write.
        extra_metrics: more gauges for ``/metrics`` (journal and outbox lengths...).
        routes: functions that add routes to the application (the firmware cache's).
        tracker: firmware and security events per charger, for ``/api/chargers/{id}``.
        cache: the firmware image cache, for ``/api/firmware``.
        rollouts: the firmware rollouts, for ``/api/firmware`` and its rollout endpoints
            (their writes go through `commands`, like the MQTT ``firmware`` command).
        port: override the configured port (tests; 0 picks a free one).
        ssl_context: serve HTTPS (default: from the site certificate when ``http.tls``).
        raw_frames: unredacted frames per charger (`StateObserver.raw_frames`), served by
            ``/api/chargers/{id}?raw=true`` to the token's holder only.
        phase_tests: the on-demand phase tests, for ``/api/chargers/{id}/detect-phases``
            (started through `commands`, like the MQTT ``detect_phases`` command).
        fleet: the fleet vehicles, for ``POST /api/fleet/timetable`` (``sitectl fleet import``).
        store: the store, for ``/api/limits/history`` (without it: the events of this run).
        session_clock: monotonic seconds for the dashboard sessions' expiry (tests).
    """

    name = "http"

    def __init__(
        self,
        config: Config,
        state: SiteState,
        sessions: SessionLog | None = None,
        commands: CommandHandler | None = None,
        extra_metrics: dict[str, tuple[str, Callable[[], float]]] | None = None,
        routes: list[Callable[[web.Application], None]] | None = None,
        tracker: FirmwareTracker | None = None,
        cache: FirmwareCache | None = None,
        rollouts: RolloutManager | None = None,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        raw_frames: Mapping[str, Sequence[tuple[datetime, str, str, str]]] | None = None,
        max_connections: int | None = None,
        max_connections_per_client: int = 16,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        phase_tests: PhaseTests | None = None,
        fleet: Fleet | None = None,
        store: Store | None = None,
        session_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.fleet = fleet
        self.phase_tests = phase_tests
        self.raw_frames = raw_frames
        self.connections = ConnectionGuard(
            max_connections or default_max_connections(), max_connections_per_client
        )
        self.head_timeout_s = head_timeout_s
        self.state = state
        self.sessions = sessions
        self.commands = commands
        self.tracker = tracker
        self.cache = cache
        self.rollouts = rollouts
        self._ssl = ssl_context if ssl_context is not None else _site_tls(config)
        self.history = PowerHistory(state, config)
        self.collector = StateCollector(state, config, extra_metrics)
        self._port = config.http.listen_port if port is None else port
        self.auth = HttpAuth(config, state, secure=self._ssl is not None, clock=session_clock)
        self.logins = self.auth.logins  # wrong tokens and sign-ins, per client address
        self.utilization = UtilizationApi(config, state.clock)  # from the store (issue #21)
        self.app = self.make_app(routes or [])
        self.ready = asyncio.Event()
        self.port: int | None = None

    # The application.

    def make_app(self, routes: list[Callable[[web.Application], None]]) -> web.Application:
        app = web.Application(
            middlewares=[self._errors, self.auth.middleware], client_max_size=64 * 1024
        )
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", self._dashboard)
        app.router.add_get("/api/openapi.json", self._openapi)
        self.auth.add_routes(app)
        app.router.add_get("/api/site", self._site)
        app.router.add_get("/api/chargers", self._chargers)
        app.router.add_get("/api/chargers/{charger_id}", self._charger)
        app.router.add_get("/api/chargers/{charger_id}/detect-phases", self._phase_test)
        app.router.add_post("/api/chargers/{charger_id}/detect-phases", self._phase_test_start)
        app.router.add_get("/api/sessions", self._sessions)
        app.router.add_get("/api/alarms", self._alarms)
        app.router.add_get("/api/history", self._history)
        app.router.add_get("/api/limits/history", self._limit_history)
        app.router.add_get("/api/firmware", self._firmware)
        app.router.add_post("/api/firmware/rollouts", self._rollout_start)
        app.router.add_get("/api/firmware/rollouts/{rollout_id:[0-9]+}", self._rollout)
        app.router.add_post("/api/firmware/rollouts/{rollout_id:[0-9]+}/stop", self._rollout_stop)
        app.router.add_post("/api/overrides", self._override)
        app.router.add_post("/api/sessions/{session_id:.+}/needs", self._needs)
        app.router.add_get("/api/sessions/{session_id:.+}/plan", self._session_plan)
        app.router.add_get("/api/plans", self._plans)
        app.router.add_post("/api/fleet/timetable", self._timetable)
        app.router.add_get("/api/reports/utilization", self.utilization.handle)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_static(
            "/static", str(resources.files("sitectl.http") / "static"), append_version=False
        )
        for add in routes:
            add(app)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400 and request.path.startswith("/api/"):
                response = _error(exc.status, exc.reason)
                # Keep what the status needs, e.g. `Allow` on a 405 (RFC 9110 §15.5.6).
                for name in ("Allow", "WWW-Authenticate", "Retry-After"):
                    if name in exc.headers:
                        response.headers[name] = exc.headers[name]
                return response
            raise
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return _error(500, "internal error (see sitectl's log)")

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value

    # Reads.

    async def _dashboard(self, request: web.Request) -> web.StreamResponse:
        page = resources.files("sitectl.http") / "static" / "index.html"
        return web.Response(text=page.read_text(encoding="utf-8"), content_type="text/html")

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.config))

    async def _site(self, request: web.Request) -> web.Response:
        return _json(site_view(self.state, self.config))

    def _updates(self) -> dict[str, str]:
        """Chargers with a firmware update in flight, and its step."""
        if self.rollouts is None:
            return {}
        installing = self.rollouts.installing()
        return {
            c: "installing" if c in installing else "downloading"
            for c in self.rollouts.in_progress()
        }

    async def _chargers(self, request: web.Request) -> web.Response:
        updates = self._updates()
        return _json(
            [
                charger_view(
                    c, self.config, state=self.state, firmware_update=updates.get(c.charger_id)
                )
                for c in self.state.chargers.values()
            ]
        )

    async def _charger(self, request: web.Request) -> web.Response:
        charger = self.state.chargers.get(request.match_info["charger_id"])
        if charger is None:
            return _error(404, f"no charger {request.match_info['charger_id']!r}", "charger_id")
        identity = charger.charger_id
        raw = None
        if wants_raw(request):  # the write token was checked (`HttpAuth.middleware`)
            raw = list((self.raw_frames or {}).get(identity, ()))
        return _json(
            charger_view(
                charger,
                self.config,
                detail=True,
                state=self.state,
                firmware_update=self._updates().get(identity),
                firmware_events=self.tracker.firmware(identity) if self.tracker else (),
                security_events=self.tracker.security(identity) if self.tracker else (),
                raw_frames=raw,
            )
        )

    async def _sessions(self, request: web.Request) -> web.Response:
        since_text = request.query.get("since")
        since = datetime.now(UTC) - timedelta(days=1)
        if since_text is not None:
            try:
                since = datetime.fromisoformat(since_text.replace("Z", "+00:00"))
            except ValueError:
                return _error(
                    400, "since must be an ISO 8601 time, e.g. 2026-11-27T00:00:00Z", "since"
                )
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
        rows = self.sessions.since(since) if self.sessions is not None else []
        return _json([SessionRecord(**row) for row in rows])

    def _session_ids(self) -> dict[str, str]:
        """ "charger/connector" -> the session id in progress there."""
        return {
            f"{charger.charger_id}/{connector.connector_id}": connector.session.session_id
            for charger in self.state.chargers.values()
            for connector in charger.connectors.values()
            if connector.session is not None
        }

    async def _session_plan(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        plans = self.state.control.sessions
        for key, found in self._session_ids().items():
            if found == session_id and key in plans:
                return _json(session_plan_view(plans[key], key, session_id))
        return _error(404, f"no plan for a session {session_id[:100]!r}", "session_id")

    async def _plans(self, request: web.Request) -> web.Response:
        ids = self._session_ids()
        plans = self.state.control.sessions
        keys = [  # in the order of the configuration, connectors in their order
            f"{charger.charger_id}/{number}"
            for charger in self.state.chargers.values()
            for number in sorted(charger.connectors)
        ]
        return _json([session_plan_view(plans[k], k, ids.get(k)) for k in keys if k in plans])

    async def _alarms(self, request: web.Request) -> web.Response:
        return _json(
            [
                AlarmView(
                    code=a.code,
                    subject=a.subject,
                    severity=str(a.severity),
                    text=a.text,
                    raised_at=a.raised_at,
                )
                for a in self.state.alarms.values()
            ]
        )

    async def _history(self, request: web.Request) -> web.Response:
        return _json(self.history.view())

    async def _limit_history(self, request: web.Request) -> web.Response:
        text = request.query.get("limit", "200")
        if not text.isdigit() or not 1 <= int(text) <= 1000:
            return _error(422, "limit must be a whole number from 1 to 1000", "limit")
        since = None
        if "since" in request.query:
            try:
                since = datetime.fromisoformat(request.query["since"])
            except ValueError:
                return _error(422, "since must be an ISO 8601 time with offset", "since")
            if since.tzinfo is None:
                return _error(422, "since must be an ISO 8601 time with offset", "since")
        events = limit_history(self.store, self.state, int(text), since)
        return _json(history_view(events))

    async def _firmware(self, request: web.Request) -> web.Response:
        cache = None
        if self.cache is not None:
            cache = CacheView(
                used_bytes=self.cache.used_bytes,
                max_bytes=self.cache.max_bytes,
                downloading=self.cache.downloading(),
                images=[
                    CachedImageView(
                        sha256=image.sha256,
                        md5=image.md5,
                        size_bytes=image.size,
                        source_url=safe_url(image.source_url),
                        pinned=self.cache.pinned(image.sha256),
                    )
                    for image in self.cache.images()
                ],
            )
        rollouts = self.rollouts.list() if self.rollouts is not None else []
        return _json(
            FirmwareView(
                enabled=self.rollouts is not None,
                base_url=self.config.firmware.base_url,
                cache=cache,
                rollouts=[RolloutView.model_validate(r) for r in rollouts],
            )
        )

    async def _rollout(self, request: web.Request) -> web.Response:
        rollout_id = _rollout_id(request)
        status = None
        if self.rollouts is not None and rollout_id is not None:
            status = self.rollouts.status(rollout_id)
        if status is None:
            return _error(404, f"no rollout {request.match_info['rollout_id'][:20]}", "rollout_id")
        return _json(RolloutView.model_validate(status))

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(render_metrics, self.collector)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    # Writes: the same validation as the MQTT commands.

    async def _payload(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            payload = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return _error(400, "the body must be a JSON object")
        if not isinstance(payload, dict):
            return _error(400, "the body must be a JSON object")
        return payload

    def _command(self, name: str, payload: dict[str, Any]) -> web.Response:
        if self.commands is None:
            return _error(503, "commands are not available")
        reply = self.commands(name, payload)
        if reply.get("ok"):
            return web.json_response(reply)
        return _refused(reply)

    async def _phase_test_start(self, request: web.Request) -> web.Response:
        charger_id = request.match_info["charger_id"]
        if charger_id not in self.state.chargers:
            return _error(404, f"no charger {charger_id[:64]!r}", "charger_id")
        payload: dict[str, Any] | web.Response = {}
        if request.body_exists:
            payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        for field in ("charger", "action"):
            if field in payload:
                return _error(422, f"unknown field '{field}'", field)
        if self.commands is None:
            return _error(503, "commands are not available")
        reply = self.commands("detect_phases", {**payload, "charger": charger_id})
        if not reply.get("ok"):
            return _refused(reply)
        # Running: 202 (ask GET for the answer); answered at once (no session...): 200.
        test = PhaseTestView.model_validate(reply["test"])
        response = _json(test)
        response.set_status(202 if test.state == "running" else 200)
        return response

    async def _override(self, request: web.Request) -> web.Response:
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        clear = payload.get("clear", False)
        if clear is not True and clear is not False:
            return _error(422, "clear must be true or false", "clear")
        payload = {k: v for k, v in payload.items() if k != "clear"}
        return self._command("clear_override" if clear else "override", payload)

    async def _rollout_start(self, request: web.Request) -> web.Response:
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        if "action" in payload or "rollout_id" in payload:
            field = "action" if "action" in payload else "rollout_id"
            return _error(422, f"unknown field '{field}'", field)
        response = self._command("firmware", {**payload, "action": "start"})
        if response.status == 200:
            response.set_status(201)
        return response

    async def _rollout_stop(self, request: web.Request) -> web.Response:
        rollout_id = _rollout_id(request)
        if rollout_id is None or self.rollouts is None or self.rollouts.status(rollout_id) is None:
            return _error(404, f"no rollout {request.match_info['rollout_id'][:20]}", "rollout_id")
        return self._command("firmware", {"action": "stop", "rollout_id": rollout_id})

    async def _needs(self, request: web.Request) -> web.Response:
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        session_id = request.match_info["session_id"]
        for charger in self.state.chargers.values():
            for connector in charger.connectors.values():
                if connector.session is not None and connector.session.session_id == session_id:
                    payload = {
                        **payload,
                        "charger": charger.charger_id,
                        "connector": connector.connector_id,
                    }
                    return self._command("session_needs", payload)
        return _error(404, f"no session {session_id!r} in progress", "session_id")

    async def _timetable(self, request: web.Request) -> web.Response:
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        if self.fleet is None:
            return _error(503, "the fleet is not available")
        reply = apply_timetable(self.fleet, self.config, payload, self.state.clock())
        if reply.get("ok"):
            return web.json_response(reply)
        return _refused(reply)

    async def _phase_test(self, request: web.Request) -> web.Response:
        charger_id = request.match_info["charger_id"]
        if charger_id not in self.state.chargers:
            return _error(404, f"no charger {charger_id[:64]!r}", "charger_id")
        if self.phase_tests is None:
            return _error(503, "phase tests are not available (no control loop)")
        test = self.phase_tests.get(charger_id)
        if test is None:
            return _json(
                PhaseTestView(
                    charger=charger_id,
                    state="none",
                    done=True,
                    text="no phase test of this charger since sitectl started",
                )
            )
        return _json(PhaseTestView.model_validate(test.view()))

    # Running.

    async def run(self) -> None:
        """Serve until cancelled."""
        quiet_accept_errors(asyncio.get_running_loop())
        # aiohttp keeps a connection that never completes its head for an hour (its
        # keep-alive timer, armed at connect and after each response, is the head deadline).
        runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=self.head_timeout_s)
        await runner.setup()
        assert runner.server is not None
        self.connections.install(runner.server)
        # asyncio accepts up to `backlog` connections per wake-up, each a descriptor before
        # the cap can refuse it: a burst of 1,024 at a 256-fd limit starves the OCPP port.
        backlog = max(8, min(128, self.connections.max_total // 2))
        site = web.TCPSite(
            runner, self.config.http.listen_host, self._port, ssl_context=self._ssl, backlog=backlog
        )
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info(
            "dashboard and API on %s://%s:%d/",
            "https" if self._ssl else "http",
            self.config.http.listen_host,
            self.port,
        )
        self.ready.set()
        history = asyncio.create_task(self.history.run())
        try:
            await asyncio.Future()
        finally:
            history.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await history
            await runner.cleanup()
