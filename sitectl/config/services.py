"""sitectl's own services: firmware cache, MQTT uplink, local HTTP, storage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from sitectl.config.base import FilePath, _check_host, _Model, _parse_time_of_day, _resolve_path


class FirmwareConfig(_Model):
    """Firmware image cache and local roll-outs."""

    enabled: bool = Field(
        True, description="Cache images, serve them on the LAN (needs http) and run rollouts."
    )
    cache_dir: FilePath = Path("firmware-cache")
    cache_max_mb: int = Field(4096, ge=16)
    base_url: str | None = Field(
        None, description="URL chargers use to reach sitectl's HTTP server (advertised)."
    )
    max_parallel: int = Field(2, ge=1)
    canary_count: int = Field(1, ge=0)
    halt_failure_share: float = Field(0.2, ge=0, le=1)
    session_wait_max_s: float = Field(12 * 3600, ge=0)
    allow_https_downgrade: bool = False
    token_lifetime_s: float = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long a charger's download URL stays valid (s): long enough for its "
        "retries and a retrieveDate in the next days, not a key for ever (issue #22.6).",
    )

    _paths = field_validator("cache_dir")(classmethod(lambda cls, v: _resolve_path(v)))

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url '{value}' must be an http:// or https:// URL")
        return value.rstrip("/")


class MqttConfig(_Model):
    """The operator's MQTT broker (summaries, alarms, commands)."""

    enabled: bool = True
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    tls: bool = False
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: FilePath | None = None
    client_id: str | None = None
    topic_prefix: str | None = Field(None, description="Default: sitectl/<site id>.")
    qos: Literal[0, 1] = Field(1, description="QoS 2 is not offered: many cloud brokers lack it.")
    keepalive_s: int = Field(30, ge=5, le=3600)
    summary_period_s: float = Field(10.0, gt=0)
    outage_summary_period_s: float = Field(60.0, gt=0)
    outbox_max_messages: int = Field(100_000, ge=100)
    outbox_max_bytes: int = Field(64 * 1024 * 1024, ge=65536)
    commands_enabled: bool = True
    reply_topic_prefixes: list[str] | None = Field(
        None,
        description="Command replies go only to a ResponseTopic equal to or below one of these "
        "(others are refused: sitectl must not be made to publish on someone else's topics). "
        "Default: <topic_prefix>/reply.",
    )
    republish_min_interval_s: float = Field(
        10.0,
        ge=0,
        description="At most one `republish` per this many seconds; requests in between are "
        "coalesced into one at the end of the interval.",
    )
    max_packet_size: int = Field(
        64 * 1024,
        ge=1024,
        le=268_435_455,
        description="MQTT 5 Maximum Packet Size sent on CONNECT: the broker drops larger "
        "messages for sitectl instead of delivering them.",
    )

    _paths = field_validator("ca_file", "cert_file", "key_file", "password_file")(
        classmethod(lambda cls, v: _resolve_path(v))
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and (
            not value
            or any(c in value for c in "+#")
            or value.startswith("/")
            or value.endswith("/")
        ):
            raise ValueError(
                "topic_prefix must be non-empty, without '+', '#' or a leading or trailing '/'"
            )
        return value

    @field_validator("reply_topic_prefixes")
    @classmethod
    def _reply_prefixes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("reply_topic_prefixes needs at least one prefix (or leave it unset)")
        for prefix in value:
            if not prefix or any(c in prefix for c in "+#\0") or prefix.endswith("/"):
                raise ValueError(
                    f"reply topic prefix '{prefix}' must be non-empty, without '+', '#' or a "
                    "trailing '/'"
                )
        return value

    @model_validator(mode="after")
    def _secret(self) -> MqttConfig:
        self._secrets_from_files("password")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file for a client certificate")
        return self


class HttpConfig(_Model):
    """Local HTTP: dashboard, JSON API, metrics and firmware files."""

    enabled: bool = True
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(8080, ge=1, le=65535)
    token: SecretStr | None = Field(
        None, description="Bearer token for write endpoints (it also reads, raw frames too)."
    )
    token_file: FilePath | None = None
    read_token: SecretStr | None = Field(
        None,
        description="Bearer token for reads only (a monitoring system; also signs the "
        "dashboard in): never writes, never raw frames. Not the same as `token`.",
    )
    read_token_file: FilePath | None = None
    open_reads: bool = Field(
        True,
        description="Serve read endpoints without a token. With false, reads need a bearer "
        "token (`token` or `read_token`) or a dashboard session (`POST /api/login`).",
    )
    session_idle_s: float = Field(
        3600.0,
        ge=60,
        description="A dashboard session ends after this long without a request (s); an open "
        "dashboard polls every 2 s and keeps it alive.",
    )
    session_lifetime_s: float = Field(
        12 * 3600.0,
        ge=60,
        description="A dashboard session ends this long after its sign-in (s), in use or not.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the open reads answer to, besides IP addresses, localhost and "
        "this machine's name (a read without the token under another name is refused: DNS "
        "rebinding).",
    )
    tls: bool = Field(
        False, description="Serve HTTPS with the site certificate (ocpp.tls_cert_file/key_file)."
    )

    _paths = field_validator("token_file", "read_token_file")(
        classmethod(lambda cls, v: _resolve_path(v))
    )

    _host = field_validator("listen_host")(classmethod(lambda cls, v: _check_host(v)))

    @model_validator(mode="after")
    def _secret(self) -> HttpConfig:
        self._secrets_from_files("token", "read_token")
        return self


class UtilizationConfig(_Model):
    """What the store keeps for the utilization report (`sitectl report`, sitectl/utilization).

    Measurements are kept as 1-minute buckets for `minute_days`, then as `rollup_min` buckets
    until `retention_days`; status changes and sessions for `retention_days`. The defaults keep
    a year of a 100-connector depot in a few hundred MB (bench/store_size.py).
    """

    enabled: bool = Field(True, description="Record status changes, measurements and sessions.")
    sample_period_s: float = Field(
        10.0, ge=1, le=60, description="How often measurements are read from the site state."
    )
    flush_period_s: float = Field(
        60.0, ge=1, le=600, description="How often what was recorded is written (one batch)."
    )
    minute_days: float = Field(14.0, ge=1, le=366, description="1-minute buckets kept (days).")
    rollup_min: Literal[5, 10, 15, 30, 60] = Field(
        15, description="Bucket length (minutes) after `minute_days`."
    )
    retention_days: int = Field(400, ge=7, le=3660, description="Everything kept (days).")
    night_starts_at: str = Field(
        "12:00",
        description="Local time a night begins: a session belongs to the night its plug-in "
        "falls in (named by the local date of its start).",
    )
    daily_message: bool = Field(
        True, description="Publish the previous day's utilization over MQTT after midnight."
    )
    daily_delay_s: float = Field(
        120.0, ge=0, le=3600, description="How long after local midnight it is published."
    )

    @field_validator("night_starts_at")
    @classmethod
    def _night(cls, value: str) -> str:
        hour, minute = _parse_time_of_day(value)
        return f"{hour:02d}:{minute:02d}"

    @model_validator(mode="after")
    def _tiers(self) -> UtilizationConfig:
        if self.minute_days > self.retention_days:
            raise ValueError("minute_days must not exceed retention_days")
        return self


class StorageConfig(_Model):
    """Where sitectl keeps what must survive a restart."""

    path: FilePath = Path("sitectl.sqlite")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL: every commit survives power loss (journal guarantee)."
    )
    utilization: UtilizationConfig = Field(default_factory=UtilizationConfig)

    _paths = field_validator("path")(classmethod(lambda cls, v: _resolve_path(v)))
