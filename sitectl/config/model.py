"""`Config`: the whole depot, built from every section, with the cross-field checks."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sitectl.config.base import _ENVIRON, ENV_DELIMITER, ENV_PREFIX, GRID
from sitectl.config.chargers import ChargerConfig
from sitectl.config.checks import _cross_check
from sitectl.config.control import ControlConfig, TariffConfig
from sitectl.config.devices import DeviceConfig
from sitectl.config.env import _env, _PreparedSource, apply_env_overrides
from sitectl.config.errors import _CrossCheckError
from sitectl.config.fleet import FleetConfig
from sitectl.config.ocpp import OcppConfig
from sitectl.config.services import FirmwareConfig, HttpConfig, MqttConfig, StorageConfig
from sitectl.config.signals import GridSignalsConfig
from sitectl.config.site import CircuitConfig, SiteConfig


class Config(BaseSettings):
    """A whole depot: grid connection, circuits, chargers, devices and sitectl's own services."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    site: SiteConfig
    circuits: list[CircuitConfig] = Field(default_factory=list)
    charger_defaults: dict[str, Any] = Field(
        default_factory=dict, description="Fields applied to every charger that does not set them."
    )
    chargers: list[ChargerConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    ocpp: OcppConfig = Field(default_factory=OcppConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    firmware: FirmwareConfig = Field(default_factory=FirmwareConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    tariff: TariffConfig = Field(default_factory=TariffConfig)
    grid_signals: GridSignalsConfig = Field(default_factory=GridSignalsConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `load_config` merges the environment itself (list items by id, with locations for
        # errors); pydantic-settings' own env source cannot address list items.
        data = getattr(init_settings, "init_kwargs", {})
        merged, _, _ = apply_env_overrides(data, _env(_ENVIRON.get()))
        return (_PreparedSource(settings_cls, merged),)

    @model_validator(mode="before")
    @classmethod
    def _apply_charger_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = data.get("charger_defaults") or {}
        chargers = data.get("chargers")
        if isinstance(defaults, dict) and defaults and isinstance(chargers, list):
            data = dict(data)
            data["chargers"] = [
                {**defaults, **item} if isinstance(item, dict) else item for item in chargers
            ]
        return data

    @model_validator(mode="after")
    def _cross(self) -> Config:
        problems = [p for p in _cross_check(self) if not p.warning]
        if problems:
            raise _CrossCheckError(problems)
        return self

    # Convenience views used by the rest of sitectl.

    def charger(self, identity: str) -> ChargerConfig | None:
        """The charger with this identity, or ``None``."""
        return self._chargers_by_id().get(identity)

    def _chargers_by_id(self) -> dict[str, ChargerConfig]:
        return {c.id: c for c in self.chargers}

    def circuit_parent(self) -> dict[str, str | None]:
        """Parent of every circuit id; the grid connection's parent is ``None``."""
        parents: dict[str, str | None] = {GRID: None}
        parents.update({c.id: c.parent for c in self.circuits})
        return parents

    def circuit_path(self, circuit_id: str) -> list[str]:
        """Circuit ids from `circuit_id` up to and including the grid connection."""
        parents = self.circuit_parent()
        path: list[str] = []
        node: str | None = circuit_id
        while node is not None and node not in path:
            path.append(node)
            node = parents.get(node)
        return path

    def circuit_limits_a(self) -> dict[str, tuple[float, float, float]]:
        """Per-phase current limit of every node, the grid connection included."""
        limits = {GRID: self.site.phase_limit_a}
        limits.update({c.id: c.limit_a for c in self.circuits})
        return limits

    @property
    def topic_prefix(self) -> str:
        """MQTT topic prefix in force."""
        return self.mqtt.topic_prefix or f"sitectl/{self.site.id}"
