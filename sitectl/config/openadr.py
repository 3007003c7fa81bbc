"""The OpenADR 3 VEN (`grid_signals.openadr`, issue #20.2): the grid operator's limits, prices."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from sitectl.config.base import (
    GRID,
    FilePath,
    PhaseValues,
    _check_host,
    _Model,
    _non_negative_phases,
    _phase_values,
    _resolve_path,
)
from sitectl.config.errors import FieldError

__all__ = ["OpenAdrConfig", "OpenAdrProgram", "OpenAdrWebhook"]


def _http_url(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} '{value}' must be an http:// or https:// URL")
    return value.rstrip("/")


class OpenAdrProgram(_Model):
    """A VTN program the site follows (found by its ``programName``)."""

    name: str = Field(min_length=1, max_length=128, description="The program's programName.")
    heartbeat: bool = Field(
        False,
        description="Conditional connection: the program's import-capacity events must keep "
        "covering the present; once they run out, the fail-safe applies as if the VTN were "
        "silent.",
    )


class OpenAdrWebhook(_Model):
    """Push notifications: a subscription on the VTN calling back an endpoint of sitectl's."""

    enabled: bool = False
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(8465, ge=0, le=65535, description="0: any free port.")
    path: str = Field("/openadr/notifications", description="URL path of the endpoint.")
    callback_url: str | None = Field(
        None,
        description="The URL the VTN calls (through NAT or a proxy); default "
        "http://<listen_host>:<port><path>, which needs a concrete listen_host.",
    )

    _host = field_validator("listen_host")(classmethod(lambda cls, v: _check_host(v)))

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "?# "):
            raise ValueError("path must start with '/' and hold no '?', '#' or space")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, value: str | None) -> str | None:
        return _http_url(value, "callback_url")

    @model_validator(mode="after")
    def _reachable(self) -> OpenAdrWebhook:
        if self.enabled and self.callback_url is None:
            try:
                unspecified = ipaddress.ip_address(self.listen_host).is_unspecified
            except ValueError:
                unspecified = False
            if unspecified:
                raise FieldError(
                    "callback_url",
                    f"the VTN cannot call back {self.listen_host}: set callback_url "
                    "(or a concrete listen_host)",
                )
        return self


class OpenAdrConfig(_Model):
    """The site as an OpenADR 3 VEN: import limits and prices from the grid operator's VTN.

    Event limits become hard limits on ``node`` (source ``openadr:<program>``), PRICE events
    replace the configured tariff where they apply. While the VTN cannot be read for
    ``unreachable_after_s`` (or a heartbeat program's events run out), the fail-safe limit
    applies for ``failsafe_duration_s`` and the alarm ``openadr_unreachable`` is raised.
    """

    enabled: bool = False
    vtn_url: str | None = Field(
        None, description="Base URL of the VTN's API, e.g. https://vtn.example/openadr3/3.1.0."
    )
    token_url: str | None = Field(
        None, description="OAuth2 token endpoint; default: the VTN's GET /auth/server."
    )
    client_id: str | None = Field(None, min_length=1, description="OAuth2 client id.")
    client_secret: SecretStr | None = None
    client_secret_file: FilePath | None = None
    ven_name: str | None = Field(
        None, min_length=1, max_length=128, description="venName; default: the site id."
    )
    programs: list[OpenAdrProgram] = Field(default_factory=list)
    node: str = Field(GRID, description="The node the limits apply to: 'grid' or a circuit id.")
    poll_interval_s: float = Field(60.0, ge=1, le=3600)
    request_timeout_s: float = Field(10.0, gt=0, le=120, description="Per HTTP request.")
    unreachable_after_s: float = Field(
        300.0,
        ge=1,
        description="How long after the last good read the fail-safe applies (the heartbeat "
        "tolerance).",
    )
    failsafe_kw: float | None = Field(None, ge=0, description="Fail-safe import limit (kW).")
    failsafe_a: PhaseValues | None = Field(None, description="Fail-safe current per phase (A).")
    failsafe_duration_s: float | None = Field(
        None, gt=0, description="How long the fail-safe holds; default: until the VTN answers."
    )
    simple_levels_kw: dict[int, float] = Field(
        default_factory=dict,
        description="SIMPLE event level (1-3) -> import limit (kW); level 0 is no limit.",
    )
    currency: str = Field("EUR", min_length=3, max_length=3, description="Of the tariff.")
    reports: bool = Field(True, description="Send the reports events ask for (USAGE, DEMAND).")
    webhook: OpenAdrWebhook = Field(default_factory=OpenAdrWebhook)

    _paths = field_validator("client_secret_file")(classmethod(lambda cls, v: _resolve_path(v)))

    @field_validator("failsafe_a", mode="before")
    @classmethod
    def _failsafe_phases(cls, value: object) -> object:
        return None if value is None else _non_negative_phases(_phase_values(value))

    @field_validator("vtn_url")
    @classmethod
    def _vtn(cls, value: str | None) -> str | None:
        return _http_url(value, "vtn_url")

    @field_validator("token_url")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        return _http_url(value, "token_url")

    @field_validator("simple_levels_kw")
    @classmethod
    def _levels(cls, value: dict[int, float]) -> dict[int, float]:
        for level, kw in value.items():
            if level not in (1, 2, 3):
                raise ValueError(f"SIMPLE levels are 1, 2 and 3 (0 is no limit), got {level}")
            if not kw >= 0 or kw == float("inf"):
                raise ValueError(f"level {level}: a limit in kW >= 0, got {kw}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> OpenAdrConfig:
        self._secrets_from_files("client_secret")
        if not self.enabled:
            return self
        for field in ("vtn_url", "client_id", "client_secret"):
            if getattr(self, field) is None:
                raise FieldError(field, f"the OpenADR VEN needs {field}")
        if not self.programs:
            raise FieldError("programs", "name at least one program to follow")
        if self.failsafe_kw is None and self.failsafe_a is None:
            raise FieldError(
                "failsafe_kw",
                "a VTN that goes silent must leave a limit: set failsafe_kw (or failsafe_a)",
            )
        names = [p.name for p in self.programs]
        for name in names:
            if names.count(name) > 1:
                raise FieldError("programs", f"program '{name}' is named twice")
        return self
