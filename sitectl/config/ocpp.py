"""The OCPP server chargers connect to, the upstream CSMS, and offline behaviour."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from sitectl.config.base import FilePath, _check_identity, _Model, _resolve_path


class OfflineConfig(_Model):
    """What sitectl does while a charger's CSMS connection is down (see README, deviation)."""

    mode: Literal["hold", "close"] = Field(
        "hold", description="hold: keep chargers connected and answer locally; close: the spec."
    )
    unknown_id_policy: Literal["reject", "accept"] = "reject"
    never_accepted_boot: Literal["pending", "rejected", "accepted"] = "pending"
    local_id_tags: list[str] = Field(default_factory=list)
    journal_max_messages: int = Field(200_000, ge=100)
    message_attempts: int = Field(3, ge=1, le=100)
    retry_interval_s: float = Field(60.0, gt=0)


class OcppConfig(_Model):
    """The OCPP server chargers connect to and the upstream CSMS."""

    listen_host: str = "0.0.0.0"
    listen_port: int = Field(9000, ge=1, le=65535)
    path: str = Field("/ocpp", description="URL path before the identity: ws://host:port/ocpp/ID")
    security_profile: Literal[0, 1, 2, 3] = Field(
        1, description="0 none (lab only), 1 Basic, 2 TLS + Basic, 3 TLS + client certificate."
    )
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    tls_ca_file: FilePath | None = Field(None, description="CA of charger client certificates.")
    upstream_url: str | None = Field(None, description="CSMS base URL; identity is appended.")
    upstream_ca_file: FilePath | None = None
    upstream_cert_file: FilePath | None = None
    upstream_key_file: FilePath | None = None
    cert_warn_days: float = Field(
        30.0,
        gt=0,
        description="Warn (alarm certificate_expiring) when a configured certificate has fewer "
        "days left than this.",
    )
    cert_critical_days: float = Field(
        7.0, ge=0, description="The same alarm turns critical with fewer days left than this."
    )
    local_controller_identity: str | None = Field(
        None, description="Optional own identity toward the CSMS (OCPP 2.0.1 Part 1 §8.3)."
    )
    local_controller_password: SecretStr | None = Field(
        None, description="Basic-auth password of that identity, if the CSMS asks for one."
    )
    local_controller_password_file: FilePath | None = None
    ping_interval_s: float = Field(30.0, gt=0)
    ping_timeout_s: float = Field(30.0, gt=0)
    call_timeout_s: float = Field(30.0, gt=0, description="Timeout of sitectl's own calls.")
    upstream_call_timeout_s: float = Field(60.0, gt=0)
    upstream_reconnect_max_s: float = Field(
        60.0, ge=1, description="Longest wait between attempts to reach the CSMS again."
    )
    max_frame_bytes: int = Field(1_048_576, ge=4096)
    profile_stack_levels: tuple[int, int] = Field(
        (7, 8), description="Stack levels sitectl uses: (fail-safe, dynamic)."
    )
    profile_id_base: int = Field(
        900_000, ge=1, description="sitectl's charging profile ids start here (reserved range)."
    )
    meter_values_interval_s: int = Field(
        10,
        ge=0,
        description="Each charger's MeterValues interval during a transaction (1.6 "
        "MeterValueSampleInterval, 2.0.1 SampledDataCtrlr.TxUpdatedInterval) is lowered to this "
        "at every connection when it is longer or unset: a draw older than "
        "control.ev_measurement_max_age_s is not trusted, and an untrusted draw counts as "
        "building load. 0: leave the chargers' own setting alone.",
    )
    offline: OfflineConfig = Field(default_factory=OfflineConfig)

    _paths = field_validator(
        "tls_cert_file",
        "tls_key_file",
        "tls_ca_file",
        "upstream_ca_file",
        "upstream_cert_file",
        "upstream_key_file",
        "local_controller_password_file",
    )(classmethod(lambda cls, v: _resolve_path(v)))

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        return value.rstrip("/") or "/"

    @field_validator("upstream_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"upstream_url '{value}' must be a ws:// or wss:// URL with a host")
        return value.rstrip("/")

    @field_validator("local_controller_identity")
    @classmethod
    def _lc_identity(cls, value: str | None) -> str | None:
        return None if value is None else _check_identity(value)

    @model_validator(mode="after")
    def _tls(self) -> OcppConfig:
        self._secrets_from_files("local_controller_password")
        if self.security_profile >= 2 and (self.tls_cert_file is None or self.tls_key_file is None):
            raise ValueError(
                f"security_profile {self.security_profile} needs tls_cert_file and tls_key_file"
            )
        if self.security_profile == 3 and self.tls_ca_file is None:
            raise ValueError("security_profile 3 needs tls_ca_file to check charger certificates")
        failsafe, dynamic = self.profile_stack_levels
        if not 0 <= failsafe < dynamic:
            raise ValueError(
                "profile_stack_levels must be (fail-safe, dynamic) with 0 <= fail-safe < dynamic"
            )
        return self
