"""The fleet: vehicles (issue #19.1) and the depot system's VDV 463 interface (issue #19.3)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator

from sitectl.config.base import FilePath, _check_host, _Model, _parse_time_of_day, _resolve_path
from sitectl.config.errors import FieldError

__all__ = ["FleetConfig", "VdvConfig", "VehicleConfig"]

Soc = Field(None, ge=0, le=100)


class VehicleConfig(_Model):
    """A fleet vehicle: recognised by an id tag, a VDV 463 vehicleId or a command.

    With ``battery_kwh`` and a current SoC (the charger's ``SoC`` measurand, else the SoC at
    arrival a VDV 463 request gives) a SoC target becomes an energy need:
    ``(target − SoC) / 100 · battery_kwh``; without them, ``energy_kwh`` is the usual need.
    """

    id: str = Field(min_length=1, max_length=64)
    id_tags: list[str] = Field(
        default_factory=list, description="RFID/id tags (in clear; only their hash is kept)."
    )
    vdv_vehicle_id: str | None = Field(
        None, min_length=1, max_length=128, description="Its VDV 463 vehicleId (VDV 261)."
    )
    battery_kwh: float | None = Field(
        None, gt=0, le=10_000, description="Usable battery capacity (turns SoC into energy)."
    )
    departure: str | None = Field(None, description="Usual local departure time, 'HH:MM'.")
    energy_kwh: float | None = Field(
        None, ge=0, description="Usual need when no SoC-based need can be worked out."
    )
    min_target_soc: float | None = Field(
        None, ge=0, le=100, description="SoC (%) it must have at departure."
    )
    max_target_soc: float | None = Field(
        None, ge=0, le=100, description="SoC (%) it is charged to; the need's target."
    )
    priority: int = Field(1, ge=0, le=10)
    # The DC charging curve the plan assumes (issue #21): flat to taper_from_soc, then linear
    # to taper_share_at_full of its peak at 100 %; the defaults are a generic Li-ion pack's
    # constant-voltage phase, as the simulator's (`sitectl/whatif/physics.py`).
    taper_from_soc: float | None = Field(
        80.0,
        ge=0,
        lt=100,
        description="SoC (%) from which DC charging power falls (DC only); null: the plan "
        "assumes none (a vehicle known to take its peak to full).",
    )
    taper_share_at_full: float = Field(
        0.1, ge=0, lt=1, description="Share of its peak DC power it still takes at 100 % SoC."
    )

    preconditioning_kw: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="Power its automatic preconditioning draws (VDV 463 gives none for it).",
    )
    preconditioning_s: float = Field(
        1800, gt=0, le=86400, description="How long automatic preconditioning runs (s)."
    )

    @field_validator("departure")
    @classmethod
    def _departure(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_time_of_day(value)
        return value

    @model_validator(mode="after")
    def _targets(self) -> VehicleConfig:
        low, high = self.min_target_soc, self.max_target_soc
        if low is not None and high is not None and low > high:
            raise FieldError(
                "min_target_soc", f"min_target_soc {low:g} % is above max_target_soc {high:g} %"
            )
        if (low is not None or high is not None) and self.battery_kwh is None:
            field = "max_target_soc" if high is not None else "min_target_soc"
            raise FieldError(field, "a SoC target needs battery_kwh to become an energy need")
        return self


class VdvConfig(_Model):
    """The VDV 463 server: the depot management system (the "presystem") connects to it.

    Its own WebSocket listener, not a path on the local HTTP server: the presystem has its own
    HTTP Basic credentials (the API has a bearer token), its own port to open in the firewall,
    and it must work with ``http.enabled: false``.
    """

    enabled: bool = False
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(8463, ge=1, le=65535)
    path: str = Field("/vdv463", description="URL path of the endpoint.")
    username: str | None = Field(None, min_length=1, description="The presystem's Basic user.")
    password: SecretStr | None = None
    password_file: FilePath | None = None
    tls: bool = Field(
        False, description="Serve wss:// with the site certificate (ocpp.tls_cert_file/key_file)."
    )
    info_period_s: float = Field(
        15.0, ge=1, le=3600, description="ProvideChargingInformation period."
    )
    depot_id: str | None = Field(
        None, description="depotId (a URI); default 'urn:sitectl:depot:<site id>'."
    )
    source: str = Field("sitectl", min_length=1, description="Frame slot 2 of what sitectl sends.")

    _paths = field_validator("password_file")(classmethod(lambda cls, v: _resolve_path(v)))

    _host = field_validator("listen_host")(classmethod(lambda cls, v: _check_host(v)))

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "?# "):
            raise ValueError("path must start with '/' and hold no '?', '#' or space")
        return value

    @model_validator(mode="after")
    def _secret(self) -> VdvConfig:
        self._secrets_from_files("password")
        if self.enabled and (self.username is None or self.password is None):
            field = "username" if self.username is None else "password"
            raise FieldError(
                field, "the VDV 463 server needs the presystem's username and password"
            )
        return self


class FleetConfig(_Model):
    """Optional fleet: which vehicle needs what by when, and the depot system that says so."""

    vehicles: list[VehicleConfig] = Field(default_factory=list)
    vdv463: VdvConfig = Field(default_factory=VdvConfig)
