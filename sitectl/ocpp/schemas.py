"""Validate sitectl's own OCPP messages against the official JSON schemas.

The schemas are the ones shipped in the ``ocpp`` package (``ocpp/v16/schemas``,
``ocpp/v201/schemas``, ``ocpp/v21/schemas``), found by action name, compiled once and cached by
``ocpp.messages.get_validator``. Numbers are checked as decimals: ``limit`` has ``multipleOf 0.1``
and the float 13.8 is not a multiple of 0.1 in binary (reference S1).

Forwarded traffic is never validated here: sitectl passes on what it cannot judge (vendor
extensions, ``customData``) and the receiving side decides.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from jsonschema.exceptions import ValidationError
from ocpp.messages import MessageType, get_validator

__all__ = ["validate_call", "validate_result"]


def _check(message_type: int, version: str, action: str, payload: dict[str, Any]) -> str | None:
    try:
        validator = get_validator(message_type, action, version, parse_float=Decimal)
    except (FileNotFoundError, ValueError):
        return f"no OCPP {version} schema for action '{action}'"
    instance = json.loads(json.dumps(payload), parse_float=Decimal)
    try:
        validator.validate(instance)
    except ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(payload)"
        return f"{where}: {exc.message}"
    return None


def validate_call(version: str, action: str, payload: dict[str, Any]) -> str | None:
    """Return why a request payload is invalid for `action` in `version`, or ``None``."""
    return _check(MessageType.Call, version, action, payload)


def validate_result(version: str, action: str, payload: dict[str, Any]) -> str | None:
    """Return why a response payload is invalid for `action` in `version`, or ``None``."""
    return _check(MessageType.CallResult, version, action, payload)
