"""Operator commands: validation and effect, independent of the transport.

The MQTT uplink calls `handle_command` for ``<prefix>/cmd/<name>``; the local HTTP API can call
it the same way. Rules:

- A command never raises: whatever the payload (not JSON, wrong types, too big, unknown name),
  the caller gets a reply ``{"ok": false, "error": ..., "field": ...}`` naming what is wrong;
  ``field`` is the offending field's path (``limit_a``, ``departure``) or ``null``.
- Payloads are validated with pydantic in strict JSON mode: unknown fields are errors, ``true``
  is not a number, times need a UTC offset (``Z`` or ``+01:00``).
- Commands only change SiteState on the event-loop thread (the caller's), and announce the
  change with ``state.notify`` so that the control loop can react at once.
- Overrides may only lower a limit: they are windows on the limit board (source
  ``operator:<transport>``, `sitectl.limits.OperatorOverrides`) and the control loop applies
  the least of the configured rating and every window (control/snapshot.py); a value above
  the configured rating is refused rather than silently ignored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from sitectl.config import Config
from sitectl.control.phase_test import PhaseTestBusy, PhaseTests
from sitectl.firmware.rollout import RolloutError
from sitectl.state import LimitOverride, SiteState
from sitectl.uplink.messages import iso

__all__ = [
    "COMMANDS",
    "MAX_AHEAD",
    "MAX_COMMAND_BYTES",
    "ClearOverrideCommand",
    "CommandConflict",
    "CommandError",
    "DetectPhasesCommand",
    "FirmwareCommand",
    "ModelTarget",
    "OverrideCommand",
    "RepublishCommand",
    "Rollouts",
    "Services",
    "SessionNeedsCommand",
    "command_schemas",
    "handle_command",
    "write_command_schemas",
]

log = logging.getLogger(__name__)

#: Larger payloads are refused before parsing (every valid command is well under 1 KiB).
MAX_COMMAND_BYTES = 16 * 1024
#: How far ahead an override may expire or a departure may lie. An override that outlives a
#: week is a configuration change, not an operator action.
MAX_AHEAD = timedelta(days=7)


class CommandError(Exception):
    """A command that is well-formed but cannot be carried out (the requester's fault).

    Args:
        message: what is wrong, for the reply.
        field: the offending field's name, or ``None``.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class CommandConflict(CommandError):
    """A command that clashes with one under way (HTTP 409); the reply has ``conflict``."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Amps = Annotated[float, Field(ge=0, le=100_000)]
ChargerId = Annotated[str, Field(min_length=1, max_length=48)]


class OverrideCommand(_Command):
    """``override``: a temporary lower limit on the site (``grid``) or a circuit."""

    node: str = Field(min_length=1, max_length=64, description="'grid' or a circuit id.")
    limit_a: Annotated[
        list[Amps],
        Field(
            min_length=3,
            max_length=3,
            description="One value for all phases or [L1, L2, L3], in A.",
        ),
        WithJsonSchema(
            {
                "description": "One value for all phases or [L1, L2, L3], in A.",
                "oneOf": [
                    {"type": "number", "minimum": 0, "maximum": 100_000},
                    {
                        "type": "array",
                        "items": {"type": "number", "minimum": 0, "maximum": 100_000},
                        "minItems": 3,
                        "maxItems": 3,
                    },
                ],
            }
        ),
    ]
    expires_in_s: float | None = Field(None, gt=0, description="Seconds from now.")
    expires_at: AwareDatetime | None = Field(None, description="Absolute expiry (with offset).")

    @field_validator("limit_a", mode="before")
    @classmethod
    def _limit_shape(cls, value: Any) -> Any:
        # One number means the same on every phase; anything else gets one clear message
        # instead of pydantic's one per union member.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return [value, value, value]
        if isinstance(value, list) and len(value) == 3:
            return value
        raise ValueError("must be a number or a list of three numbers [L1, L2, L3] (A)")


class ClearOverrideCommand(_Command):
    """``clear_override``: remove the override on a node."""

    node: str = Field(min_length=1, max_length=64)


class SessionNeedsCommand(_Command):
    """``session_needs``: a vehicle's departure and/or energy need for the running session."""

    charger: str = Field(min_length=1, max_length=48)
    connector: int = Field(ge=1, le=1000, description="Connector (1.6) or EVSE (2.0.1) id.")
    session_id: str | None = Field(
        None, max_length=128, description="Refuse if the running session is another one."
    )
    departure: AwareDatetime | None = None
    energy_kwh: float | None = Field(None, gt=0, le=10_000)
    vehicle: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Bind the session to this fleet.vehicles id (its SoC targets, priority).",
    )


class RepublishCommand(_Command):
    """``republish``: send the status, every charger's state and a summary again."""


class ModelTarget(_Command):
    """Every charger of one model (as it reported at boot, else as configured)."""

    model: str = Field(min_length=1, max_length=64)


class FirmwareCommand(_Command):
    """``firmware``: start, stop or look at a local rollout.

    ``start`` needs ``url`` and ``targets``; ``stop`` and ``status`` need ``rollout_id``;
    ``list`` takes nothing else.
    """

    action: Literal["start", "stop", "status", "list"]
    url: str | None = Field(
        None, min_length=1, max_length=2048, description="Where the image comes from."
    )
    targets: Literal["all"] | list[ChargerId] | ModelTarget | None = Field(
        None, description="'all', a list of charger ids, or {'model': ...}."
    )
    md5: str | None = Field(
        None, pattern="^[0-9a-fA-F]{32}$", description="The image's MD5, checked before use."
    )
    sha256: str | None = Field(
        None,
        pattern="^[0-9a-fA-F]{64}$",
        description="The image's SHA-256, checked before use (preferred to the MD5).",
    )
    # Lengths: OCPP 1.6 security whitepaper SignedUpdateFirmware, 2.0.1 FirmwareType (F3, F4).
    signature: str | None = Field(None, min_length=1, max_length=800)
    signing_certificate: str | None = Field(None, min_length=1, max_length=5500)
    rollout_id: int | None = Field(None, ge=1, le=2**63 - 1, description="For stop and status.")


class DetectPhasesCommand(_Command):
    """``detect_phases``: check a charger's phase rotation now, or see how the check went.

    ``start`` steps the charger's limit down and back (other chargers under the same meter
    held) until the meter shows which site phase its vehicle draws on; the reply is the test
    at once, its answer comes with ``status`` (or the alarm ``phase_rotation_mismatch``).
    """

    charger: ChargerId
    action: Literal["start", "status"] = "start"
    timeout_s: float | None = Field(
        None, ge=5, le=3600, description="Give up after this (default: from the control timing)."
    )


_MODELS: dict[str, type[_Command]] = {
    "override": OverrideCommand,
    "clear_override": ClearOverrideCommand,
    "session_needs": SessionNeedsCommand,
    "republish": RepublishCommand,
    "firmware": FirmwareCommand,
    "detect_phases": DetectPhasesCommand,
}
#: The command names, as they appear in ``<prefix>/cmd/<name>``.
COMMANDS = tuple(_MODELS)


#: Where the committed schemas live (``schemas/commands/<name>.json``).
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas" / "commands"


def command_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every command payload, generated from the pydantic models."""
    return {
        name: {"$id": f"urn:sitectl:uplink:cmd:{name}", **model.model_json_schema()}
        for name, model in _MODELS.items()
    }


def write_command_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write `command_schemas` as ``<name>.json`` files (run after changing a model).

    Returns:
        The files written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in command_schemas().items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def handle_command(
    state: SiteState,
    config: Config,
    name: str,
    payload: bytes | str | Mapping[str, Any] | None,
    *,
    republish: Callable[[], Mapping[str, Any]] | None = None,
    rollouts: Rollouts | None = None,
    phase_tests: PhaseTests | None = None,
    origin: str = "mqtt",
) -> dict[str, Any]:
    """Validate and carry out one command; never raises.

    Args:
        state: the site state (changed in place).
        config: ratings, circuits, chargers.
        name: the command name (the last topic level).
        payload: the raw payload (JSON text or bytes; empty means ``{}``), or a parsed object.
        republish: does the republish and returns details for the reply; ``None`` if the
            transport cannot republish (the command is then refused).
        rollouts: the firmware rollouts; ``None`` if this site has none (``firmware`` is then
            refused).
        phase_tests: the on-demand phase tests (the control loop's); ``None`` refuses
            ``detect_phases``.
        origin: the transport it came by ("mqtt", "http"): an override's limit source is
            ``operator:<origin>``.

    Returns:
        ``{"ok": true, "command": name, ...}`` or
        ``{"ok": false, "command": name, "error": "...", "field": "..." | null}``.
    """
    try:
        model = _MODELS.get(name)
        if model is None:
            raise CommandError(f"unknown command '{name}' (known: {', '.join(COMMANDS)})")
        command = model.model_validate_json(_text(payload))
        services = Services(republish, rollouts, phase_tests, origin)
        result = _HANDLERS[name](state, config, command, services)
    except CommandConflict as exc:
        return {
            "ok": False,
            "command": name,
            "error": exc.message,
            "field": exc.field,
            "conflict": True,
        }
    except CommandError as exc:
        return {"ok": False, "command": name, "error": exc.message, "field": exc.field}
    except ValidationError as exc:
        message, where = _first_error(exc)
        return {"ok": False, "command": name, "error": message, "field": where}
    except Exception as exc:  # a bug of ours must not take the uplink down
        log.exception("command %s failed", name)
        return {"ok": False, "command": name, "error": f"internal error: {exc}", "field": None}
    return {"ok": True, "command": name, **result}


# ------------------------------------------------------------------------------------------------
# Parsing


def _text(payload: bytes | str | Mapping[str, Any] | None) -> str:
    if payload is None:
        return "{}"
    if isinstance(payload, Mapping):
        return json.dumps(payload)
    size = len(payload)
    if size > MAX_COMMAND_BYTES:
        raise CommandError(f"payload is {size} bytes; a command is at most {MAX_COMMAND_BYTES}")
    if isinstance(payload, bytes | bytearray):
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandError(f"payload is not UTF-8 (byte {exc.start})") from None
    return payload if payload.strip() else "{}"


def _first_error(exc: ValidationError) -> tuple[str, str | None]:
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error.get("loc", ())]
    message = str(error.get("msg", "invalid"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error.get("type") == "json_invalid":
        return f"payload is not valid JSON: {error.get('ctx', {}).get('error', message)}", None
    if error.get("type") == "model_type":
        return "payload must be a JSON object", None
    if error.get("type") == "extra_forbidden":
        return f"unknown field '{'.'.join(loc)}'", ".".join(loc) or None
    where = ".".join(loc) or None
    return (f"{where}: {message}" if where else message), where


# ------------------------------------------------------------------------------------------------
# Handlers


class Rollouts(Protocol):
    """What the ``firmware`` command needs of the rollout manager (`RolloutManager`)."""

    def start(
        self,
        url: str,
        targets: Any,
        md5: str | None = None,
        *,
        sha256: str | None = None,
        signature: str | None = None,
        signing_certificate: str | None = None,
    ) -> int: ...

    def stop(self, rollout_id: int) -> bool: ...

    def status(self, rollout_id: int) -> dict[str, Any] | None: ...

    def list(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Services:
    """What some commands act through; ``None`` where this interface or site lacks it."""

    republish: Callable[[], Mapping[str, Any]] | None = None
    rollouts: Rollouts | None = None
    phase_tests: PhaseTests | None = None
    origin: str = "mqtt"  # the transport: "mqtt" or "http"


def _nodes(config: Config) -> dict[str, tuple[float, float, float]]:
    return config.circuit_limits_a()


def _known_node(config: Config, node: str) -> tuple[float, float, float]:
    limits = _nodes(config)
    if node not in limits:
        raise CommandError(f"unknown node '{node}' (known: {', '.join(sorted(limits))})", "node")
    return limits[node]


def _override(
    state: SiteState, config: Config, command: OverrideCommand, services: Services
) -> dict[str, Any]:
    rating = _known_node(config, command.node)
    value = command.limit_a
    limit = (float(value[0]), float(value[1]), float(value[2]))
    for phase, (wanted, rated) in enumerate(zip(limit, rating, strict=True), start=1):
        if wanted > rated:
            raise CommandError(
                f"limit_a {wanted:g} A on L{phase} is above the rating of '{command.node}' "
                f"({rated:g} A); an override can only lower a limit",
                "limit_a",
            )
    now = state.clock()
    if (command.expires_in_s is None) == (command.expires_at is None):
        raise CommandError("give exactly one of expires_in_s and expires_at", "expires_in_s")
    if command.expires_in_s is not None:
        if command.expires_in_s > MAX_AHEAD.total_seconds():
            raise CommandError(
                f"expires_in_s {command.expires_in_s:g} is beyond {MAX_AHEAD.days} days",
                "expires_in_s",
            )
        expires_at = now + timedelta(seconds=command.expires_in_s)
    else:
        assert command.expires_at is not None
        expires_at = command.expires_at
        if expires_at <= now:
            raise CommandError(f"expires_at {iso(expires_at)} is in the past", "expires_at")
        if expires_at - now > MAX_AHEAD:
            raise CommandError(
                f"expires_at {iso(expires_at)} is beyond {MAX_AHEAD.days} days", "expires_at"
            )
    state.overrides[command.node] = LimitOverride(
        command.node, limit, expires_at, source=services.origin, set_at=now
    )
    log.info(
        "limit override on %s by %s: %s A until %s",
        command.node,
        services.origin,
        list(limit),
        iso(expires_at),
    )
    state.notify("override", command.node)
    return {"node": command.node, "limit_a": list(limit), "expires_at": iso(expires_at)}


def _clear_override(
    state: SiteState, config: Config, command: ClearOverrideCommand, _: Services
) -> dict[str, Any]:
    _known_node(config, command.node)
    cleared = state.overrides.pop(command.node, None) is not None
    if cleared:
        log.info("limit override on %s cleared", command.node)
        state.notify("override", command.node)
    return {"node": command.node, "cleared": cleared}


def _session_needs(
    state: SiteState, config: Config, command: SessionNeedsCommand, _: Services
) -> dict[str, Any]:
    charger = state.chargers.get(command.charger)
    if charger is None:
        raise CommandError(f"unknown charger '{command.charger}'", "charger")
    connector = charger.connectors.get(command.connector)
    if connector is None:
        raise CommandError(
            f"charger '{command.charger}' has no connector {command.connector} "
            f"(it has {', '.join(str(n) for n in sorted(charger.connectors)) or 'none'})",
            "connector",
        )
    session = connector.session
    if session is None:
        raise CommandError(
            f"no session on charger '{command.charger}' connector {command.connector}",
            "connector",
        )
    if command.session_id is not None and command.session_id != session.session_id:
        raise CommandError(
            f"the session on that connector is '{session.session_id}', not '{command.session_id}'",
            "session_id",
        )
    if command.departure is None and command.energy_kwh is None and command.vehicle is None:
        raise CommandError("give departure, energy_kwh, vehicle or several", "departure")
    if command.vehicle is not None:
        known = [v.id for v in config.fleet.vehicles]
        if command.vehicle not in known:
            raise CommandError(
                f"unknown vehicle '{command.vehicle}' (fleet.vehicles: "
                f"{', '.join(known) or 'none'})",
                "vehicle",
            )
    now = state.clock()
    departure: datetime | None = command.departure
    if departure is not None:
        if departure <= now:
            raise CommandError(f"departure {iso(departure)} is in the past", "departure")
        if departure - now > MAX_AHEAD:
            raise CommandError(
                f"departure {iso(departure)} is beyond {MAX_AHEAD.days} days", "departure"
            )
        session.departure = departure
        session.departure_source = "command"
    if command.energy_kwh is not None:
        session.energy_wanted_kwh = command.energy_kwh
        session.need_source = "command"
    log.info(
        "session needs for %s: departure %s, energy %s kWh",
        session.session_id,
        iso(session.departure),
        session.energy_wanted_kwh,
    )
    key = f"{command.charger}/{command.connector}"
    if command.vehicle is not None:
        session.vehicle_id = command.vehicle
        log.info("session %s bound to vehicle %s", session.session_id, command.vehicle)
        state.notify("vehicle_bound", key)  # the fleet works out its need (control/fleet.py)
    # The same notification the OCPP observer sends for 2.0.1 charging needs.
    state.notify("session_needs", key)
    reply = {
        "session_id": session.session_id,
        "departure": iso(session.departure),
        "energy_kwh": session.energy_wanted_kwh,
    }
    if command.vehicle is not None:
        reply["vehicle"] = session.vehicle_id
    return reply


def _republish(
    state: SiteState, config: Config, command: RepublishCommand, services: Services
) -> dict[str, Any]:
    if services.republish is None:
        raise CommandError("republish is not available over this interface")
    return dict(services.republish())


def _firmware(
    state: SiteState, config: Config, command: FirmwareCommand, services: Services
) -> dict[str, Any]:
    rollouts = services.rollouts
    if rollouts is None:
        raise CommandError(
            "firmware rollouts are not available: firmware or the local HTTP server is "
            "disabled in this site's configuration"
        )
    if command.action == "list":
        return {"rollouts": rollouts.list()}
    if command.action == "start":
        if command.url is None:
            raise CommandError("start needs the image's url", "url")
        if command.targets is None:
            raise CommandError(
                "start needs targets: 'all', a list of ids or {'model': ...}", "targets"
            )
        targets: Any = command.targets
        if isinstance(targets, ModelTarget):
            targets = targets.model_dump()
        try:
            rollout_id = rollouts.start(
                command.url,
                targets,
                command.md5,
                sha256=command.sha256,
                signature=command.signature,
                signing_certificate=command.signing_certificate,
            )
        except RolloutError as exc:
            raise CommandError(str(exc), exc.field) from None
        return {"rollout": rollouts.status(rollout_id)}
    if command.rollout_id is None:
        raise CommandError(f"{command.action} needs rollout_id", "rollout_id")
    status = rollouts.status(command.rollout_id)
    if status is None:
        raise CommandError(f"no rollout {command.rollout_id}", "rollout_id")
    if command.action == "stop" and not rollouts.stop(command.rollout_id):
        raise CommandError(
            f"rollout {command.rollout_id} is {status['state']}: nothing to stop", "rollout_id"
        )
    return {"rollout": rollouts.status(command.rollout_id)}


def _detect_phases(
    state: SiteState, config: Config, command: DetectPhasesCommand, services: Services
) -> dict[str, Any]:
    tests = services.phase_tests
    if tests is None:
        raise CommandError("phase tests are not available: this sitectl runs no control loop")
    if command.charger not in state.chargers:
        raise CommandError(f"unknown charger '{command.charger}'", "charger")
    if command.action == "status":
        test = tests.get(command.charger)
        if test is None:
            return {"test": None}
    else:
        try:
            test = tests.start(command.charger, command.timeout_s)
        except PhaseTestBusy as exc:
            raise CommandConflict(str(exc)) from None
        log.info("phase test of %s: %s (%s)", command.charger, test.outcome, test.text)
        state.notify("phase_test", command.charger)
    view = test.view()
    for key in ("requested_at", "finished_at"):
        view[key] = iso(view[key])
    return {"test": view}


_HANDLERS: dict[str, Callable[[SiteState, Config, Any, Services], dict[str, Any]]] = {
    "override": _override,
    "clear_override": _clear_override,
    "session_needs": _session_needs,
    "republish": _republish,
    "firmware": _firmware,
    "detect_phases": _detect_phases,
}
