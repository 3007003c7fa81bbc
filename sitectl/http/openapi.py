"""The OpenAPI 3.1 document of the JSON API, generated from the response models.

Served at ``/api/openapi.json`` and committed as ``configs/openapi.json`` (a test keeps the copy
current), so clients and schemathesis see exactly what the handlers produce.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sitectl import __version__
from sitectl.http.views import (
    AlarmView,
    ChargerDetail,
    ChargerView,
    ErrorView,
    HistoryView,
    SessionRecord,
    SiteView,
)

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"


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
    "401": _ok(_ref("ErrorView"), "A valid bearer token is required."),
    "403": _ok(_ref("ErrorView"), "No token is configured: the endpoint is disabled."),
    "404": _ok(_ref("ErrorView"), "No such resource."),
    "422": _ok(_ref("ErrorView"), "A field is invalid; `field` names it."),
    "503": _ok(_ref("ErrorView"), "Commands are not available."),
}

_OVERRIDE = {
    "type": "object",
    "required": ["node"],
    "properties": {
        "node": {"type": "string", "description": "`grid` or a circuit id."},
        "limit_a": {
            "description": "New limit, A per phase (one number or three); at most "
            "the configured rating.",
            "anyOf": [
                {"type": "number"},
                {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
            ],
        },
        "expires_in_s": {"type": "number", "description": "Seconds until it expires."},
        "expires_at": {"type": "string", "format": "date-time"},
        "clear": {"type": "boolean", "description": "Remove the node's override instead."},
    },
}

_NEEDS = {
    "type": "object",
    "properties": {
        "departure": {"type": "string", "format": "date-time"},
        "energy_kwh": {"type": "number", "minimum": 0},
    },
}


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    secured = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sitectl local API",
            "version": __version__,
            "description": "The depot as sitectl sees it, and a few operator writes.",
        },
        "components": {
            "schemas": _schemas(
                SiteView,
                ChargerView,
                ChargerDetail,
                AlarmView,
                SessionRecord,
                HistoryView,
                ErrorView,
            ),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
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
                        }
                    ],
                    "responses": {
                        "200": _ok(_ref("ChargerDetail"), "The charger."),
                        "404": _ERRORS["404"],
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
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
                    "summary": "Grid power and limit over the last hour",
                    "responses": {
                        "200": _ok(_ref("HistoryView"), "One point per sample."),
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/overrides": {
                "post": {
                    "summary": "Set or clear a site or circuit limit override",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _OVERRIDE}},
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
                        "content": {"application/json": {"schema": _NEEDS}},
                    },
                    "responses": {
                        "200": _ok({"type": "object"}, "Applied."),
                        **{k: _ERRORS[k] for k in ("400", "401", "403", "404", "422", "503")},
                    },
                }
            },
        },
    }
