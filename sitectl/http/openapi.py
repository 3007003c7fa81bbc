"""The OpenAPI 3.1 document of the JSON API, generated from the response models.

Served at ``/api/openapi.json`` (with the site's circuits as the override nodes) and committed,
for no particular site, as ``configs/openapi.json`` (``sitectl openapi``; a test keeps it
current). Request bodies come from the pydantic models that validate the commands, responses
from the view models: the document is what the handlers do.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sitectl import __version__
from sitectl.config import GRID, Config
from sitectl.control.timetable import TimetableEntry, TimetableUpload
from sitectl.http.auth import SESSION_COOKIE, LoginRequest, LoginView
from sitectl.http.limit_views import LimitHistoryView
from sitectl.http.views import (
    PRECISION,
    AlarmView,
    ChargerDetail,
    ChargerView,
    ErrorView,
    FirmwareView,
    HistoryView,
    PhaseTestView,
    SessionPlanView,
    SessionRecord,
    SiteView,
)
from sitectl.uplink.commands import (
    ClearOverrideCommand,
    DetectPhasesCommand,
    FirmwareCommand,
    ModelTarget,
    OverrideCommand,
    SessionNeedsCommand,
)
from sitectl.utilization.api import MAX_WINDOW_DAYS
from sitectl.utilization.models import UtilizationReport
from sitectl.utilization.times import MOMENT_PATTERN

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"
_PRECISION_TEXT = (
    "Numbers are rounded to "
    + ", ".join(f"{10**-digits:g} {unit}" for unit, digits in PRECISION.items())
    + "."
)


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _ok(schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _ok(_ref("ErrorView"), "The request is malformed."),
    "401": _ok(_ref("ErrorView"), "A valid bearer token (or, for a read, a session) is required."),
    "403": _ok(
        _ref("ErrorView"),
        "No token is configured: the endpoint is disabled; or the read token, which only "
        "reads; or a read under a host name sitectl does not know (http.allowed_hosts).",
    ),
    "404": _ok(_ref("ErrorView"), "No such resource."),
    "409": _ok(_ref("ErrorView"), "It clashes with an operation under way."),
    "422": _ok(_ref("ErrorView"), "A field is invalid; `field` names it."),
    "503": _ok(_ref("ErrorView"), "Commands are not available."),
}

_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`http.token`: reads, writes and raw frames. `http.read_token`: reads "
        "only (a write or `?raw=true` with it is a 403).",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "The dashboard's session (`POST /api/login`): reads only, never writes, "
        "never raw frames. HttpOnly, SameSite=Strict, Secure under http.tls. Writes take only "
        "the bearer token, which a browser never sends by itself, so no other page can make "
        "this browser write (no CSRF).",
    },
}

# Reads: open with http.open_reads (under a known host name), else a token or the session.
_READS = [{}, {"bearer": []}, {"session": []}]


def _login_paths() -> dict[str, Any]:
    view = _ok(_ref("LoginView"), "What this browser may do now.")
    signed_in = {
        **_ok(_ref("LoginView"), "Signed in: the session cookie is set."),
        "headers": {
            "Set-Cookie": {
                "description": f"{SESSION_COOKIE}=<random id>; HttpOnly; SameSite=Strict; "
                "Path=/; Max-Age=<http.session_lifetime_s>; Secure under http.tls.",
                "schema": {"type": "string"},
            }
        },
    }
    login_body = _command_schema(LoginRequest)
    return {
        "/api/login": {
            "get": {
                "summary": "Whether this browser's session cookie is valid, and what it may do",
                "security": [{}],
                "responses": {"200": view},
            },
            "post": {
                "summary": "Sign the dashboard in with either token: a session cookie that "
                "reads only",
                "description": "Ends after http.session_idle_s without a request or "
                "http.session_lifetime_s after the sign-in. A wrong token counts with wrong "
                "bearer tokens toward the lockout of the address (429).",
                "security": [{}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": login_body}},
                },
                "responses": {
                    "200": signed_in,
                    "401": _ok(_ref("ErrorView"), "Wrong token."),
                    "403": _ok(
                        _ref("ErrorView"),
                        "No token is configured, or the host name is unknown (http.allowed_hosts).",
                    ),
                    "415": _ok(_ref("ErrorView"), "The body is not application/json."),
                    "422": _ok(_ref("ErrorView"), 'The body is not {"token": "..."}.'),
                    "429": _ok(
                        _ref("ErrorView"),
                        "Too many wrong tokens from this address: try after Retry-After.",
                    ),
                },
            },
        },
        "/api/logout": {
            "post": {
                "summary": "End this browser's session (the cookie is cleared)",
                "security": [{}],
                "responses": {"200": view},
            }
        },
    }


def _utilization_path() -> dict[str, Any]:
    moment = (
        "An ISO date (local midnight in site.timezone), an ISO date and time (local unless it "
        "has an offset or Z), now, today, yesterday, or relative to now: -7d, -12h, -30m, -2w."
    )
    return {
        "get": {
            "summary": "How the chargers and circuits were used over a window, from the store",
            "description": "Per connector and charger the share of time offline, available, "
            "charging, plugged in but idle (not drawing), faulted or unknown (sitectl not "
            "recording); sessions, energy, mean and peak power. Per node the share of the "
            "recorded time at its limit and the energy its limit deferred (an estimate). Per "
            "night (by the local date it starts on) the energy delivered against the stated "
            "needs and the departures met. The method: DESIGN.md, Utilization. Computed in a "
            "worker thread, one request at a time.",
            "parameters": [
                {
                    "name": "from",
                    "in": "query",
                    "required": False,
                    "description": f"Start (default: 7 days before `to`). {moment}",
                    "schema": {"type": "string", "pattern": MOMENT_PATTERN, "maxLength": 64},
                },
                {
                    "name": "to",
                    "in": "query",
                    "required": False,
                    "description": f"End (default: now). {moment}",
                    "schema": {"type": "string", "pattern": MOMENT_PATTERN, "maxLength": 64},
                },
            ],
            "responses": {
                "200": _ok(_ref("UtilizationReport"), "The report."),
                "400": _ok(_ref("ErrorView"), "A time that cannot be read; `field` names it."),
                "422": _ok(
                    _ref("ErrorView"),
                    f"`from` not before `to`, or a window longer than {MAX_WINDOW_DAYS} days.",
                ),
                "401": _ERRORS["401"],
                "403": _ERRORS["403"],
                "503": _ok(_ref("ErrorView"), "The store holds no utilization data (yet)."),
            },
        }
    }


def _command_schema(model: type[BaseModel], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A command's request body, from the pydantic model that validates it (no drift)."""
    schema = model.model_json_schema(ref_template=_REF)
    schema.pop("title", None)
    # Nested models are listed in the document's components (`openapi_document`).
    schema.pop("$defs", None)
    for name in drop:
        schema.get("properties", {}).pop(name, None)
        if name in schema.get("required", []):
            schema["required"].remove(name)
    return schema


def _override_body(nodes: list[str] | None) -> dict[str, Any]:
    override = _command_schema(OverrideCommand)
    clear = _command_schema(ClearOverrideCommand)
    clear["properties"]["clear"] = {"const": True, "description": "Remove the override."}
    clear["required"] = [*clear.get("required", []), "clear"]
    if nodes:
        for body in (override, clear):
            body["properties"]["node"] = {"enum": nodes, "description": "'grid' or a circuit."}
    return {
        "oneOf": [override, clear],
        "description": "Set a lower limit (at most the node's rating, 7 days at most), or "
        "clear one; limits above the rating are refused with 422.",
    }


def openapi_document(config: Config | None = None) -> dict[str, Any]:
    """The whole OpenAPI document (with the site's circuits as the override nodes, if given)."""
    nodes = [GRID, *(c.id for c in config.circuits)] if config is not None else None
    needs = _command_schema(SessionNeedsCommand, drop=("charger", "connector", "session_id"))
    timetable = _command_schema(TimetableUpload)
    rollout = _command_schema(FirmwareCommand, drop=("action", "rollout_id"))
    rollout["required"] = ["url", "targets"]
    rollout_id = {
        "name": "rollout_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
    detect = _command_schema(DetectPhasesCommand, drop=("charger", "action"))
    charger_id = {
        "name": "charger_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    secured = [{"bearer": []}]
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "sitectl local API",
            "version": __version__,
            "description": "The depot as sitectl sees it, and a few operator writes. "
            "Reads are open to the LAN with http.open_reads (the default), else they need a "
            "bearer token (http.token or http.read_token) or the dashboard's session "
            "(POST /api/login); writes need http.token. " + _PRECISION_TEXT,
        },
        "components": {
            "schemas": _schemas(
                SiteView,
                ChargerView,
                ChargerDetail,
                AlarmView,
                SessionRecord,
                SessionPlanView,
                HistoryView,
                LimitHistoryView,
                FirmwareView,
                PhaseTestView,
                ModelTarget,
                TimetableEntry,
                LoginView,
                UtilizationReport,
                ErrorView,
            ),
            "securitySchemes": _SECURITY_SCHEMES,
        },
        "security": _READS,
        "paths": {
            **_login_paths(),
            "/api/site": {
                "get": {
                    "summary": "Limits and measured values per circuit and phase, control health",
                    "responses": {
                        "200": _ok(_ref("SiteView"), "The site now."),
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/chargers": {
                "get": {
                    "summary": "Every charger",
                    "responses": {
                        "200": _ok(
                            {"type": "array", "items": _ref("ChargerView")}, "The chargers now."
                        ),
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/chargers/{charger_id}": {
                "get": {
                    "summary": "One charger with its latest frames",
                    "parameters": [
                        {
                            "name": "charger_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "raw",
                            "in": "query",
                            "required": False,
                            "description": "Frames unredacted (needs http.token even with "
                            "open_reads; never the read token or the session): credentials "
                            "and id tags in clear.",
                            "schema": {"type": "boolean", "default": False},
                        },
                    ],
                    "responses": {
                        "200": _ok(_ref("ChargerDetail"), "The charger."),
                        "404": _ERRORS["404"],
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/chargers/{charger_id}/detect-phases": {
                "get": {
                    "summary": "The charger's latest on-demand phase test",
                    "parameters": [charger_id],
                    "responses": {
                        "200": _ok(_ref("PhaseTestView"), "The test ('none' if never run)."),
                        **{k: _ERRORS[k] for k in ("401", "403", "404", "503")},
                    },
                },
                "post": {
                    "summary": "Check the charger's phase rotation now: steps its limit down "
                    "and back while the others under its meter hold, and judges the meter",
                    "security": secured,
                    "parameters": [charger_id],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": detect}},
                    },
                    "responses": {
                        "202": _ok(_ref("PhaseTestView"), "Running: GET it for the answer."),
                        "200": _ok(
                            _ref("PhaseTestView"),
                            "Answered at once: it cannot run (offline, no session, no meter).",
                        ),
                        **{k: _ERRORS[k] for k in ("400", "401", "403", "404", "409", "422")},
                        "503": _ERRORS["503"],
                    },
                },
            },
            "/api/sessions": {
                "get": {
                    "summary": "Sessions that ended since a time (default: the last day)",
                    "parameters": [
                        {
                            "name": "since",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "format": "date-time"},
                        }
                    ],
                    "responses": {
                        "200": _ok(
                            {"type": "array", "items": _ref("SessionRecord")},
                            "Ended sessions, oldest first.",
                        ),
                        "400": _ERRORS["400"],
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/sessions/{session_id}/plan": {
                "get": {
                    "summary": "A session's plan from the last control cycle: current and "
                    "power per step, energy to its departure, when it is ready, how short",
                    "parameters": [
                        {
                            "name": "session_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _ok(_ref("SessionPlanView"), "The plan."),
                        **{k: _ERRORS[k] for k in ("401", "403", "404")},
                    },
                }
            },
            "/api/plans": {
                "get": {
                    "summary": "Every connector's plan from the last control cycle (the "
                    "dashboard's plan view)",
                    "responses": {
                        "200": _ok(
                            {"type": "array", "items": _ref("SessionPlanView")},
                            "One per connector with a session or a floor, in the order of "
                            "the configuration.",
                        ),
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/reports/utilization": _utilization_path(),
            "/api/alarms": {
                "get": {
                    "summary": "Alarms currently raised",
                    "responses": {
                        "200": _ok({"type": "array", "items": _ref("AlarmView")}, "The alarms."),
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/history": {
                "get": {
                    "summary": "Grid power and the kW limit in force over the last hour",
                    "responses": {
                        "200": _ok(_ref("HistoryView"), "One point per sample."),
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/limits/history": {
                "get": {
                    "summary": "Limit interventions: every limit window (operator override, "
                    "grid operator signal) starting, changing or ending, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "description": "At most this many events.",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 1000,
                                "default": 200,
                            },
                        },
                        {
                            "name": "since",
                            "in": "query",
                            "required": False,
                            "description": "Only events from this time on (ISO 8601, offset).",
                            "schema": {"type": "string", "format": "date-time"},
                        },
                    ],
                    "responses": {
                        "200": _ok(_ref("LimitHistoryView"), "Kept limit_history_days."),
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                        "422": _ERRORS["422"],
                    },
                }
            },
            "/api/firmware": {
                "get": {
                    "summary": "The firmware cache and the local rollouts",
                    "responses": {
                        "200": _ok(_ref("FirmwareView"), "Cache and rollouts, newest first."),
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/firmware/rollouts": {
                "post": {
                    "summary": "Roll an image out to chargers (cached first, canary first, "
                    "never during a session)",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": rollout}},
                    },
                    "responses": {
                        "201": _ok(
                            {
                                "type": "object",
                                "properties": {"rollout": _ref("RolloutView")},
                            },
                            "Started.",
                        ),
                        **{k: _ERRORS[k] for k in ("400", "401", "403", "422", "503")},
                    },
                }
            },
            "/api/firmware/rollouts/{rollout_id}": {
                "get": {
                    "summary": "One rollout with each charger's progress",
                    "parameters": [rollout_id],
                    "responses": {
                        "200": _ok(_ref("RolloutView"), "The rollout."),
                        **{k: _ERRORS[k] for k in ("401", "403", "404")},
                    },
                }
            },
            "/api/firmware/rollouts/{rollout_id}/stop": {
                "post": {
                    "summary": "Stop a rollout: queued chargers are canceled, those in flight "
                    "are still followed",
                    "security": secured,
                    "parameters": [rollout_id],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {"rollout": _ref("RolloutView")},
                            },
                            "Stopped.",
                        ),
                        **{k: _ERRORS[k] for k in ("401", "403", "404", "422", "503")},
                    },
                }
            },
            "/api/overrides": {
                "post": {
                    "summary": "Set or clear a site or circuit limit override",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _override_body(nodes)}},
                    },
                    "responses": {
                        "200": _ok({"type": "object"}, "Applied."),
                        **{k: _ERRORS[k] for k in ("400", "401", "403", "422", "503")},
                    },
                }
            },
            "/api/fleet/timetable": {
                "post": {
                    "summary": "Import a fleet timetable: per vehicle its departure and target",
                    "description": "All or nothing: a bad row refuses the upload, naming it "
                    "(entries.3.target). A row applies at once to a vehicle charging now, "
                    "else when it plugs in (`sitectl fleet import FILE.csv`).",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": timetable}},
                    },
                    "responses": {
                        "200": _ok({"type": "object"}, "Applied."),
                        **{k: _ERRORS[k] for k in ("400", "401", "403", "422", "503")},
                    },
                }
            },
            "/api/sessions/{session_id}/needs": {
                "post": {
                    "summary": "Set a session's departure and energy need",
                    "security": secured,
                    "parameters": [
                        {
                            "name": "session_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": needs}},
                    },
                    "responses": {
                        "200": _ok({"type": "object"}, "Applied."),
                        **{k: _ERRORS[k] for k in ("400", "401", "403", "404", "422", "503")},
                    },
                }
            },
        },
    }
    return _with_lockouts(document)


#: The 429 of the per-address lockout (auth.py: 10 wrong tokens in 60 s, locked for 60 s).
_LOCKED = {
    "description": "Too many wrong tokens from this address (10 in 60 s): locked out for a "
    "while, even with the right token; try again after Retry-After.",
    "headers": {
        "Retry-After": {
            "description": "Seconds until this address may try again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    "content": {"application/json": {"schema": _ref("ErrorView")}},
}


def _with_lockouts(document: dict[str, Any]) -> dict[str, Any]:
    """Every operation that checks a token (it can answer 401) can answer 429 too: the
    lockout is checked before the token (`auth.HttpAuth.middleware`)."""
    for item in document["paths"].values():
        for operation in item.values():
            responses = operation.get("responses", {})
            if "401" in responses:
                responses.setdefault("429", _LOCKED)
    return document
