"""The installer's configuration: one YAML file describing a whole depot.

Rules of this package:

- The YAML file is the source; environment variables ``SITECTL_<FIELD>__<FIELD>...`` override any
  field. A list item is addressed by its position or by its ``id``/``name``
  (``SITECTL_CHARGERS__CP001__PASSWORD``). Values are parsed as YAML scalars or flow lists.
- Secrets (``SecretStr`` fields) may also come from a file named by the sibling ``*_file`` field,
  and are never printed: not in ``repr``, not in error messages, not in logs
  (`secret_values` feeds the log redaction filter).
- Every check that involves more than one field lives here, not at run time (`checks`):
  unknown references, cycles, impossible limits, a fail-safe that could overload a circuit.
- `load_config` returns a valid `Config` or raises `ConfigError` with *every* problem found,
  each located by path and, where possible, YAML line.
- Relative paths are relative to the directory of the config file.

Units are in field names (``_a``, ``_kw``, ``_s``). Phases are the site's L1, L2, L3; a charger's
``phase_rotation`` says which site phase each of its own phases is wired to.

The modules, by what they hold: `errors` (Problem, ConfigError), `base` (constants, value types,
the base model), `site` (grid connection, circuits), `chargers`, `devices` (Modbus), `ocpp`,
`control` (control loop, fleet, tariff), `services` (firmware, MQTT, HTTP, storage),
`signals` (grid operator signals: the §14a dimming contact; `openadr`: the OpenADR 3 VEN), `env`
(environment overrides), `model` (the whole `Config`), `checks` (cross-field checks),
`secretchecks` (placeholder secrets, world-readable secret files) and `loading`
(`load_config`). Import from ``sitectl.config``, not from the modules.
"""

from __future__ import annotations

from sitectl.config.base import ENV_DELIMITER, ENV_PREFIX, GRID, PHASE_NAMES, parse_phase_rotation
from sitectl.config.chargers import ChargerConfig
from sitectl.config.control import ControlConfig, ObjectiveWeights, TariffConfig, TariffPeriod
from sitectl.config.devices import DeviceConfig
from sitectl.config.env import apply_env_overrides
from sitectl.config.errors import ConfigError, Problem
from sitectl.config.fleet import FleetConfig, VdvConfig, VehicleConfig
from sitectl.config.loading import load_config, secret_values
from sitectl.config.model import Config
from sitectl.config.ocpp import OcppConfig, OfflineConfig
from sitectl.config.openadr import OpenAdrConfig, OpenAdrProgram, OpenAdrWebhook
from sitectl.config.services import (
    FirmwareConfig,
    HttpConfig,
    MqttConfig,
    StorageConfig,
    UtilizationConfig,
)
from sitectl.config.signals import Dimming14aConfig, GridSignalsConfig
from sitectl.config.site import CircuitConfig, SiteConfig

__all__ = [
    "ENV_DELIMITER",
    "ENV_PREFIX",
    "GRID",
    "PHASE_NAMES",
    "ChargerConfig",
    "CircuitConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DeviceConfig",
    "Dimming14aConfig",
    "FirmwareConfig",
    "FleetConfig",
    "GridSignalsConfig",
    "HttpConfig",
    "MqttConfig",
    "ObjectiveWeights",
    "OcppConfig",
    "OfflineConfig",
    "OpenAdrConfig",
    "OpenAdrProgram",
    "OpenAdrWebhook",
    "Problem",
    "SiteConfig",
    "StorageConfig",
    "TariffConfig",
    "TariffPeriod",
    "UtilizationConfig",
    "VdvConfig",
    "VehicleConfig",
    "apply_env_overrides",
    "load_config",
    "parse_phase_rotation",
    "secret_values",
]
