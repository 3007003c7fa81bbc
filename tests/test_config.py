"""A full valid depot configuration, environment overrides, secrets and the committed schema."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sitectl.config import GRID, Config, ConfigError, load_config, secret_values
from sitectl.logs import RedactingFormatter, set_secrets
from sitectl.sim import DEMO_CONFIG
from tests.helpers import MINIMAL_CONFIG

REPO = Path(__file__).resolve().parent.parent


def test_example_depot_loads_with_every_section_understood() -> None:
    config, warnings = load_config(REPO / "configs" / "example.yaml", environ={})
    # The example's secrets are placeholders an installer must replace, and say so (once per
    # file); whether the checkout made them world-readable depends on its umask.
    placeholders = [str(w) for w in warnings if "looks like a placeholder" in w.message]
    assert [p.split(" (line")[0] for p in placeholders] == [
        "charger_defaults.password_file",
        "mqtt.password_file",
        "http.token_file",
    ]
    others = [w for w in warnings if "looks like a placeholder" not in w.message]
    # Security profile 1 on the LAN (most chargers offer no more) is said, not hidden.
    allowed = ("can be read by every user", "crosses the depot network in clear")
    assert all(any(a in w.message for a in allowed) for w in others), others
    assert any(allowed[1] in w.message for w in others)
    assert config.site.id == "depot-north"
    assert config.site.phase_limit_a == (1600.0, 1600.0, 1600.0)
    # The tree: grid → transformer → feeders.
    assert config.circuit_path("feeder-b") == ["feeder-b", "transformer", GRID]
    assert config.circuit_limits_a()["feeder-b"] == (250.0, 250.0, 250.0)
    chargers = {c.id: c for c in config.chargers}
    assert len(chargers) == 10
    # charger_defaults apply unless a charger sets its own value.
    assert chargers["BUS-01"].failsafe_current_a == 10
    assert chargers["BUS-04"].failsafe_current_a == 16
    assert chargers["BUS-04"].ocpp_version == "2.0.1"
    assert chargers["BUS-01"].ocpp_version == "1.6"
    # Phase rotation maps charger phases onto site phases.
    assert chargers["BUS-02"].site_phases == (1, 2, 0)
    assert chargers["VAN-01"].site_phases == (1,)
    assert chargers["DC-01"].kind == "dc" and chargers["DC-01"].max_power_kw == 150
    # AC→DC efficiency: the default unless the charger (DC-02) sets its own.
    assert chargers["DC-01"].efficiency == 0.93
    assert chargers["DC-02"].efficiency == 0.95
    # Secrets come from files relative to the config file; upstream defaults to the same.
    secret = (REPO / "configs" / "secrets" / "charger.pass").read_text().strip()
    assert chargers["BUS-01"].password.get_secret_value() == secret
    assert chargers["BUS-01"].upstream_password.get_secret_value() == secret
    assert config.mqtt.password is not None and config.http.token is not None
    assert config.devices[1].serial_port == "/dev/ttyUSB0" and config.devices[1].parity == "E"
    assert config.ocpp.offline.mode == "hold"
    assert config.topic_prefix == "sitectl/depot-north"


def test_demo_depot_loads() -> None:
    config, _ = load_config(DEMO_CONFIG, environ={})
    assert len(config.chargers) == 12
    assert {c.ocpp_version for c in config.chargers} == {"1.6", "2.0.1"}


def test_relative_paths_resolve_against_the_config_file(write_config) -> None:
    path = write_config()
    config, _ = load_config(path, environ={})
    assert config.storage.path == path.parent / "state.sqlite"


def test_env_overrides_nested_field_and_list_item_by_id_and_index(write_config) -> None:
    path = write_config()
    env = {
        "SITECTL_SITE__LIMIT_KW": "80",
        "SITECTL_CONTROL__WEIGHTS__FAIRNESS": "0.5",
        "SITECTL_CHARGERS__CP1__MAX_CURRENT_A": "16",
        "SITECTL_CHARGERS__0__FAILSAFE_CURRENT_A": "8",
        "SITECTL_OCPP__OFFLINE__MODE": "close",
        "SITECTL_CIRCUITS__FEEDER__LIMIT_A": "[90, 95, 100]",
        "UNRELATED": "ignored",
    }
    config, _ = load_config(path, environ=env)
    assert config.site.limit_kw == 80
    assert config.control.weights.fairness == 0.5
    assert config.chargers[0].max_current_a == 16
    assert config.chargers[0].failsafe_current_a == 8
    assert config.ocpp.offline.mode == "close"
    assert config.circuits[0].limit_a == (90.0, 95.0, 100.0)


def test_env_override_of_a_secret_keeps_it_a_string(write_config) -> None:
    path = write_config()
    config, _ = load_config(path, environ={"SITECTL_CHARGERS__CP1__PASSWORD": "0123456789012345"})
    assert config.chargers[0].password.get_secret_value() == "0123456789012345"


def test_secret_from_file_strips_the_newline(write_config, tmp_path: Path) -> None:
    (tmp_path / "cp1.pass").write_text("from-a-file-0123\n")
    path = write_config(
        MINIMAL_CONFIG.replace(
            "    password: cp1-password-0123456789\n", "    password_file: cp1.pass\n"
        )
    )
    config, _ = load_config(path, environ={})
    assert config.chargers[0].password.get_secret_value() == "from-a-file-0123"


def test_secrets_are_not_in_repr_dump_or_json(write_config) -> None:
    config, _ = load_config(write_config(), environ={})
    secret = "cp1-password-0123456789"
    assert secret not in repr(config)
    assert secret not in str(config.model_dump())
    assert secret not in config.model_dump_json()
    assert secret_values(config) == [secret, secret]  # charger side and upstream


def test_log_lines_redact_configured_secrets(write_config) -> None:
    config, _ = load_config(write_config(), environ={})
    set_secrets(secret_values(config))
    try:
        record = logging.LogRecord(
            "t",
            logging.INFO,
            __file__,
            1,
            "auth header had %s",
            ("cp1-password-0123456789",),
            None,
        )
        assert RedactingFormatter().format(record).endswith("auth header had ***")
    finally:
        set_secrets([])


def test_yaml_12_scalars_installers_expect(write_config) -> None:
    # `ocpp_version: 1.6` is a float in YAML and `no`/`off` are not booleans here.
    text = MINIMAL_CONFIG.replace(
        "    max_current_a: 32\n", "    max_current_a: 32\n    ocpp_version: 1.6\n"
    )
    config, _ = load_config(write_config(text), environ={})
    assert config.chargers[0].ocpp_version == "1.6"


def test_warnings_do_not_block_loading(write_config) -> None:
    text = """\
    site: {id: d, limit_kw: 500, phase_limit_a: 100}
    circuits: [{id: f, limit_a: 200}]
    ocpp: {security_profile: 0}
    storage: {path: s.sqlite}
    """
    config, warnings = load_config(write_config(text), environ={})
    messages = [str(w) for w in warnings]
    assert any(
        m.startswith("circuits[0].limit_a (line 2): limit 200 A is above its parent")
        for m in messages
    )
    assert any("site.limit_kw" in m and "cannot flow" in m for m in messages)
    assert any("security_profile" in m for m in messages)
    assert config.circuits[0].id == "f"


def test_firmware_address_warnings(write_config) -> None:
    def warnings(extra: str) -> list[str]:
        text = MINIMAL_CONFIG.replace("http:\n  enabled: false\n", extra)
        found = [str(w) for w in load_config(write_config(text), environ={})[1]]
        return [w for w in found if w.startswith("firmware.")]

    [missing] = warnings("http:\n  listen_port: 8081\n")
    assert (
        missing.startswith("firmware.base_url (line 1): not set")
        and ":8081, or firmware" in missing
    )
    [wrong] = warnings("http:\n  listen_port: 8081\nfirmware:\n  base_url: http://10.0.0.5:8080\n")
    assert "does not match the local HTTP server (http, port 8081)" in wrong
    assert (
        warnings("http:\n  listen_port: 8081\nfirmware:\n  base_url: http://10.0.0.5:8081/\n") == []
    )
    assert warnings("http:\n  listen_port: 80\nfirmware:\n  base_url: http://10.0.0.5\n") == []
    assert warnings("http:\n  listen_port: 8081\nfirmware:\n  enabled: false\n") == []
    [no_http] = warnings("http:\n  enabled: false\nfirmware:\n  base_url: http://10.0.0.5:8080\n")
    assert "local HTTP server, which is disabled" in no_http


def test_programmatic_construction_runs_the_same_cross_checks() -> None:
    with pytest.raises(ValueError, match="unknown circuit 'nope'"):
        Config.model_validate(
            {
                "site": {"id": "d", "limit_kw": 10, "phase_limit_a": 32},
                "chargers": [
                    {
                        "id": "A",
                        "circuit": "nope",
                        "max_current_a": 16,
                        "password": "0123456789abcdef",
                    }
                ],
            }
        )


def test_committed_json_schema_is_current() -> None:
    committed = json.loads((REPO / "configs" / "sitectl.schema.json").read_text())
    assert committed == Config.model_json_schema(), (
        "configs/sitectl.schema.json is stale: run `sitectl schema > configs/sitectl.schema.json`"
    )


def test_schema_describes_phase_values_and_forbids_unknown_fields() -> None:
    schema = Config.model_json_schema()
    charger = schema["$defs"]["ChargerConfig"]
    assert charger["additionalProperties"] is False
    limit = schema["$defs"]["CircuitConfig"]["properties"]["limit_a"]
    assert [option["type"] for option in limit["anyOf"]] == ["number", "array"]
    assert "type" not in limit  # one number or three, not "must be an array"
    password = charger["properties"]["password"]["anyOf"][0]
    assert password == {"format": "password", "type": "string", "writeOnly": True}


def test_load_config_error_carries_every_problem(write_config) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config("site: {id: d}\nstorage: {path: s.sqlite}\n"), environ={})
    paths = sorted(str(p.path) for p in info.value.problems)
    assert paths == ["('site', 'limit_kw')", "('site', 'phase_limit_a')"]
