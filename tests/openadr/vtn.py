"""A stub OpenADR 3 VTN built from the official OpenAPI document (spec/openadr3.yaml, 3.1.0).

An aiohttp server on a free port that serves the document's routes a VEN uses — OAuth2 client
credentials (``/auth/server``, ``/auth/token``), ``/programs``, ``/events``, ``/vens``,
``/subscriptions``, ``/reports`` — with ``skip``/``limit`` paging (pages capped at
``page_max``), and error answers with the spec's problem body. Every request sitectl sends and
every answer the stub gives is checked against the document with openapi-core; what fails is
collected in ``errors`` (a test asserts it stays empty). Answers that are bad on purpose
(`garble`) are exempt. Subscriptions are called back with notifications checked against the
document's ``notification`` schema.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from jsonschema_path import SchemaPath
from openapi_core import OpenAPI
from openapi_core.contrib.aiohttp import AIOHTTPOpenAPIWebRequest, AIOHTTPOpenAPIWebResponse
from openapi_schema_validator import OAS30Validator

SPEC_FILE = Path(__file__).parent / "spec" / "openadr3.yaml"
BASE_PATH = "/openadr3/3.1.0"

_SPEC_CACHE: dict[str, Any] = {}


def load_spec() -> dict[str, Any]:
    """The vendored document as data, with its known defects mended (spec/README.md)."""
    if "spec" not in _SPEC_CACHE:
        spec = yaml.safe_load(SPEC_FILE.read_text())
        schemas = spec["components"]["schemas"]
        # A stray '-' makes this default the string "null          -".
        schemas["BlVenRequest"]["properties"]["targets"]["default"] = None
        # ven/resource = allOf(objectMetadata, Bl*Request): their objectType enums
        # (VEN/RESOURCE vs BL_VEN_REQUEST/BL_RESOURCE_REQUEST) exclude each other.
        schemas["BlVenRequest"]["properties"]["objectType"]["enum"].append("VEN")
        schemas["BlResourceRequest"]["properties"]["objectType"]["enum"].append("RESOURCE")
        # Discriminators without a mapping name schemas after their objectType values
        # ("EVENT_PAYLOAD_DESCRIPTOR", "EVENT"), which are not the schemas' names.
        descriptors = schemas["programRequest"]["properties"]["payloadDescriptors"]["items"]
        descriptors["discriminator"]["mapping"] = {
            "EVENT_PAYLOAD_DESCRIPTOR": "#/components/schemas/eventPayloadDescriptor",
            "REPORT_PAYLOAD_DESCRIPTOR": "#/components/schemas/reportPayloadDescriptor",
        }
        schemas["notification"]["properties"]["object"]["discriminator"]["mapping"] = {
            name.upper(): f"#/components/schemas/{name}"
            for name in ("program", "report", "event", "subscription", "ven", "resource")
        }
        spec["servers"] = [{"url": BASE_PATH}]
        _SPEC_CACHE["spec"] = spec
    return copy.deepcopy(_SPEC_CACHE["spec"])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def problem(status: int, title: str, detail: str = "", **extra: Any) -> web.Response:
    """The spec's problem body."""
    body = {"type": "about:blank", "title": title, "status": status, **extra}
    if detail:
        body["detail"] = detail
    return web.json_response(body, status=status)


@dataclass
class Fault:
    """The next ``times`` requests whose path starts with ``prefix`` get ``status``."""

    status: int
    times: int = 1
    prefix: str = ""
    garbage: bool = False  # answer 200 with a body that is not JSON (bad on purpose)


@dataclass
class StubVtn:
    """The stub VTN. ``await start()``; ``base_url`` is what the VEN is configured with."""

    client_id: str = "depot-ven"
    client_secret: str = "depot-ven-secret-0123456789"
    token_lifetime_s: float = 3600.0
    page_max: int = 50
    programs: dict[str, dict] = field(default_factory=dict)
    events: dict[str, dict] = field(default_factory=dict)
    vens: dict[str, dict] = field(default_factory=dict)
    subscriptions: dict[str, dict] = field(default_factory=dict)
    reports: list[dict] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)
    tokens_issued: int = 0
    refuse_tokens: bool = False
    notifications_sent: int = 0
    port: int | None = None

    def __post_init__(self) -> None:
        self.spec = load_spec()
        if "api" not in _SPEC_CACHE:  # checks the document itself (once: it takes a while)
            _SPEC_CACHE["api"] = OpenAPI(SchemaPath.from_dict(self.spec))
        self.api = _SPEC_CACHE["api"]
        self.notification_validator = OAS30Validator(
            {"$ref": "#/components/schemas/notification", "components": self.spec["components"]}
        )
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # Life.

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_PATH}"

    async def start(self, port: int | None = None) -> None:
        """Listen on `port` (default: the last one, else a free one)."""
        app = web.Application(middlewares=[self._checked])
        p = BASE_PATH
        app.router.add_get(f"{p}/auth/server", self._auth_server)
        app.router.add_post(f"{p}/auth/token", self._token)
        app.router.add_get(f"{p}/programs", self._search("programs"))
        app.router.add_get(f"{p}/programs/{{oid}}", self._one("programs"))
        app.router.add_get(f"{p}/events", self._search("events"))
        app.router.add_get(f"{p}/events/{{oid}}", self._one("events"))
        app.router.add_get(f"{p}/vens", self._search("vens"))
        app.router.add_post(f"{p}/vens", self._create_ven)
        app.router.add_get(f"{p}/subscriptions", self._search("subscriptions"))
        app.router.add_post(f"{p}/subscriptions", self._create_subscription)
        app.router.add_put(f"{p}/subscriptions/{{oid}}", self._update_subscription)
        app.router.add_post(f"{p}/reports", self._create_report)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port or 0, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop answering (connections refused), as a VTN that went away."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # What the tests set up.

    def _meta(self, object_type: str, data: dict) -> dict:
        now = _now()
        return {
            "id": f"{object_type.lower()}-{next(self._ids)}",
            "createdDateTime": now,
            "modificationDateTime": now,
            "objectType": object_type,
            **data,
        }

    def add_program(self, name: str, **fields: Any) -> dict:
        program = self._meta("PROGRAM", {"programName": name, **fields})
        self.programs[program["id"]] = program
        return program

    def add_event(self, program_id: str, intervals: list[dict], **fields: Any) -> dict:
        event = self._meta("EVENT", {"programID": program_id, "intervals": intervals, **fields})
        self.events[event["id"]] = event
        return event

    def update_event(self, event_id: str, **fields: Any) -> dict:
        event = self.events[event_id]
        event.update(fields, modificationDateTime=_now())
        return event

    def expire_tokens(self) -> None:
        """Every token issued so far is expired (the next request gets 401)."""
        self.tokens.clear()

    def fail(self, status: int, times: int = 1, prefix: str = "") -> None:
        self.faults.append(Fault(status, times, prefix))

    def garble(self, prefix: str, times: int = 1) -> None:
        self.faults.append(Fault(200, times, prefix, garbage=True))

    def requests(self, method: str, route: str) -> list[dict[str, str]]:
        """The query of every request to `route` (path below the base), in order."""
        return [q for m, r, q in self.seen if m == method and r == route]

    # The checks.

    @web.middleware
    async def _checked(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        route = request.path.removeprefix(BASE_PATH)
        self.seen.append((request.method, route, dict(request.query)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openapi-core: "Unsupported scheme type" (oauth2)
            try:
                self.api.validate_request(AIOHTTPOpenAPIWebRequest(request, body=body))
            except Exception as exc:
                self.errors.append(f"request {request.method} {route}: {exc!r} {exc.__cause__!r}")
        fault = self._fault(route)
        if fault is not None and fault.garbage:
            return web.Response(body=b"<html>proxy error</html>", content_type="application/json")
        if fault is not None:
            response: web.StreamResponse = problem(fault.status, "Injected", f"{fault.status}")
        else:
            response = await handler(request)
        assert isinstance(response, web.Response)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.api.validate_response(
                    AIOHTTPOpenAPIWebRequest(request, body=body),
                    AIOHTTPOpenAPIWebResponse(response),
                )
            except Exception as exc:
                self.errors.append(
                    f"answer {request.method} {route} {response.status}: {exc!r} {exc.__cause__!r}"
                )
        return response

    def _fault(self, route: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and route.startswith(fault.prefix):
                fault.times -= 1
                return fault
        return None

    def _authorized(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        expiry = self.tokens.get(token)
        if not header.startswith("Bearer ") or expiry is None or expiry < time.monotonic():
            return problem(401, "Unauthorized", "missing, unknown or expired token")
        return None

    # Routes.

    async def _auth_server(self, request: web.Request) -> web.Response:
        return web.json_response({"tokenURL": f"{self.base_url}/auth/token"})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return problem(400, "Bad Request", "grant_type", error="unsupported_grant_type")
        if (
            self.refuse_tokens
            or form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return problem(401, "Unauthorized", "invalid client", error="invalid_client")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.token_lifetime_s
        self.tokens_issued += 1
        return web.json_response(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": int(self.token_lifetime_s),
            }
        )

    def _page(self, request: web.Request, items: list[dict]) -> web.Response:
        try:
            skip = int(request.query.get("skip", 0))
            limit = int(request.query.get("limit", 50))
        except ValueError:
            return problem(400, "Bad Request", "skip and limit are integers")
        if skip < 0 or not 0 <= limit <= 50:
            return problem(400, "Bad Request", "skip >= 0, 0 <= limit <= 50")
        return web.json_response(items[skip : skip + min(limit, self.page_max)])

    def _search(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            refused = self._authorized(request)
            if refused is not None:
                return refused
            items = list(getattr(self, kind).values())
            query = request.query
            for key in ("programID", "venName", "clientName"):
                if key in query:
                    items = [i for i in items if i.get(key) == query[key]]
            return self._page(request, items)

        return handler

    def _one(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            refused = self._authorized(request)
            if refused is not None:
                return refused
            item = getattr(self, kind).get(request.match_info["oid"])
            if item is None:
                return problem(404, "Not Found", request.match_info["oid"])
            return web.json_response(item)

        return handler

    async def _json(self, request: web.Request) -> dict | web.Response:
        try:
            data = json.loads(await request.read())
        except ValueError:
            return problem(400, "Bad Request", "not JSON")
        return data if isinstance(data, dict) else problem(400, "Bad Request", "not an object")

    async def _create_ven(self, request: web.Request) -> web.Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        data = await self._json(request)
        if isinstance(data, web.Response):
            return data
        if any(v["venName"] == data.get("venName") for v in self.vens.values()):
            return problem(409, "Conflict", "venName exists")
        ven = self._meta("VEN", {"venName": data.get("venName"), "clientID": self.client_id})
        self.vens[ven["id"]] = ven
        return web.json_response(ven, status=201)

    async def _create_subscription(self, request: web.Request) -> web.Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        data = await self._json(request)
        if isinstance(data, web.Response):
            return data
        subscription = self._meta("SUBSCRIPTION", {**data, "clientID": self.client_id})
        self.subscriptions[subscription["id"]] = subscription
        return web.json_response(subscription, status=201)

    async def _update_subscription(self, request: web.Request) -> web.Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        current = self.subscriptions.get(request.match_info["oid"])
        if current is None:
            return problem(404, "Not Found", request.match_info["oid"])
        data = await self._json(request)
        if isinstance(data, web.Response):
            return data
        current.update(data, modificationDateTime=_now())
        return web.json_response(current)

    async def _create_report(self, request: web.Request) -> web.Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        data = await self._json(request)
        if isinstance(data, web.Response):
            return data
        report = self._meta("REPORT", {**data, "clientID": self.client_id})
        self.reports.append(report)
        return web.json_response(report, status=201)

    # Notifications.

    async def notify(self, object_type: str, operation: str, obj: dict) -> list[int]:
        """Call back every subscription that asks for this; returns the HTTP statuses."""
        notification = {"objectType": object_type, "operation": operation, "object": obj}
        for problem_found in self.notification_validator.iter_errors(notification):
            self.errors.append(f"notification: {problem_found.message}")
        statuses = []
        async with aiohttp.ClientSession() as session:
            for subscription in self.subscriptions.values():
                if subscription.get("programID") not in (None, obj.get("programID")):
                    continue
                for op in subscription["objectOperations"]:
                    if object_type not in op["objects"] or operation not in op["operations"]:
                        continue
                    headers = {"Authorization": f"Bearer {op.get('bearerToken')}"}
                    async with session.post(
                        op["callbackUrl"], json=notification, headers=headers
                    ) as response:
                        statuses.append(response.status)
                        self.notifications_sent += 1
        return statuses
