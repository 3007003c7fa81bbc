"""Fleet vehicles and the VDV 463 server in the configuration (issue #19.1, #19.3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sitectl.config import ConfigError, load_config

BASE = """\
site:
  id: depot
  limit_kw: 200
  phase_limit_a: 300
circuits:
  - id: feeder-1
    limit_a: 150
    non_ev_max_a: 10
chargers:
  - id: CP1
    circuit: feeder-1
    max_current_a: 32
    password: password-cp1-0000
storage:
  path: s.sqlite
fleet:
  vehicles:
    - id: bus-17
      id_tags: ["04A1B2C3D4"]
      vdv_vehicle_id: "17"
      battery_kwh: 420
      departure: "05:10"
      min_target_soc: 60
      max_target_soc: 90
      priority: 3
    - id: bus-18
      battery_kwh: 350
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return load_config(path, environ={})[0]


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return [str(p) for p in info.value.problems if not p.warning]


def test_a_fleet_with_soc_targets_and_a_vdv_id_loads(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    bus = config.fleet.vehicles[0]
    assert (bus.battery_kwh, bus.min_target_soc, bus.max_target_soc) == (420, 60, 90)
    assert bus.vdv_vehicle_id == "17"
    assert config.fleet.vehicles[1].id_tags == []  # bound by VDV or a command only
    assert config.fleet.vdv463.enabled is False
    assert config.fleet.vdv463.info_period_s == 15.0


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        (
            "min_target_soc: 60",
            "min_target_soc: 95",
            "fleet.vehicles[0].min_target_soc",
            "min_target_soc 95 % is above max_target_soc 90 %",
        ),
        (
            "      battery_kwh: 420\n",
            "",
            "fleet.vehicles[0].max_target_soc",
            "a SoC target needs battery_kwh",
        ),
        (
            "max_target_soc: 90",
            "max_target_soc: 120",
            "fleet.vehicles[0].max_target_soc",
            "less than or equal to 100",
        ),
        (
            "battery_kwh: 350",
            "battery_kwh: 0",
            "fleet.vehicles[1].battery_kwh",
            "greater than 0",
        ),
        ("id: bus-18", "id: bus-17", "fleet.vehicles[1].id", "duplicate vehicle id"),
        (
            "      battery_kwh: 350\n",
            '      battery_kwh: 350\n      vdv_vehicle_id: "17"\n',
            "fleet.vehicles[1].vdv_vehicle_id",
            "duplicate VDV vehicleId '17' (also fleet.vehicles[0])",
        ),
        ('departure: "05:10"', 'departure: "5 past 5"', "fleet.vehicles[0].departure", "time"),
        (
            "      priority: 3\n",
            "      priority: 3\n      capacity: 3\n",
            "fleet.vehicles[0].capacity",
            "",
        ),
        (
            "      priority: 3\n",
            "      priority: 3\n      taper_from_soc: 100\n",
            "fleet.vehicles[0].taper_from_soc",
            "100",
        ),
        (
            "      priority: 3\n",
            "      priority: 3\n      taper_share_at_full: 1.5\n",
            "fleet.vehicles[0].taper_share_at_full",
            "1",
        ),
    ],
    ids=[
        "min-above-max",
        "soc-without-battery",
        "soc-over-100",
        "battery-zero",
        "dup-id",
        "dup-vdv-id",
        "bad-departure",
        "unknown-field",
        "taper-at-full",
        "taper-share-over-1",
    ],
)
def test_a_broken_vehicle_names_its_field(
    tmp_path: Path, old: str, new: str, where: str, message: str
) -> None:
    assert old in BASE
    found = problems(tmp_path, BASE.replace(old, new, 1))
    assert any(p.startswith(where) and message in p for p in found), found


VDV = "  vdv463:\n    enabled: true\n    username: bms\n"


def test_the_vdv_server_needs_the_presystems_credentials(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE + VDV)
    assert any(
        p.startswith("fleet.vdv463.password") and "username and password" in p for p in found
    ), found


def test_the_vdv_password_comes_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "vdv.pass").write_text("s3cret-presystem\n")
    config = load(tmp_path, BASE + VDV + "    password_file: vdv.pass\n    info_period_s: 5\n")
    vdv = config.fleet.vdv463
    assert vdv.password is not None and vdv.password.get_secret_value() == "s3cret-presystem"
    assert vdv.info_period_s == 5


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("    path: vdv463\n", "fleet.vdv463.path"),
        ("    info_period_s: 0\n", "fleet.vdv463.info_period_s"),
        ("    listen_port: 70000\n", "fleet.vdv463.listen_port"),
    ],
)
def test_bad_vdv_settings_name_their_field(tmp_path: Path, extra: str, where: str) -> None:
    found = problems(tmp_path, BASE + VDV + "    password: pw-presystem-1\n" + extra)
    assert any(p.startswith(where) for p in found), found
