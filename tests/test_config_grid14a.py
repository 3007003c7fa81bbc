"""`grid_signals.dimming_14a` and digital I/O devices in the site file: what loads, and what
check-config says, at which path and line, about a wrong device, input or node."""

from __future__ import annotations

from pathlib import Path

import pytest

from sitectl.config import ConfigError, load_config
from sitectl.summary import render_summary

BASE = """\
site:
  id: depot
  limit_kw: 200
  phase_limit_a: 300
  meter: grid-meter
circuits:
  - id: feeder-1
    limit_a: 150
    chargers_only: true
chargers:
  - id: CP1
    circuit: feeder-1
    max_current_a: 32
    password: password-cp1-0000
devices:
  - name: grid-meter
    profile: eastron-sdm630
    host: 127.0.0.1
  - name: dso-box
    profile: moxa-iologik-e1210
    host: 127.0.0.1
    unit_id: 3
grid_signals:
  dimming_14a:
    device: dso-box
    input: di0
    node: feeder-1
storage:
  path: s.sqlite
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return load_config(path, environ={})


def signal_warnings(warnings) -> list[str]:
    return [str(w) for w in warnings if w.path[:1] == ("grid_signals",)]


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, f"test case does not apply: {old!r}"
    return text.replace(old, new, 1)


def line_of(text: str, marker: str) -> int:
    return text[: text.index(marker)].count("\n") + 1


def test_a_dimming_contact_on_an_io_module_loads(tmp_path) -> None:
    config, warnings = load(tmp_path, BASE)
    dimming = config.grid_signals.dimming_14a
    assert dimming is not None and dimming.active_when == "closed" and dimming.hold_s == 0
    assert dimming.dimming_kw == pytest.approx(4.2) and dimming.unknown_after_s == 10
    assert [d.name for d in config.devices if d.is_io] == ["dso-box"]
    assert signal_warnings(warnings) == []
    summary = render_summary(config, "site.yaml", warnings)
    assert "dso-box: moxa-iologik-e1210 (digital I/O), tcp 127.0.0.1:502, unit 3" in summary


def test_the_limit_follows_the_number_of_devices_or_the_configured_total(tmp_path) -> None:
    config, _ = load(
        tmp_path, edit("    node: feeder-1\n", "    node: feeder-1\n    controllable_devices: 3\n")
    )
    assert config.grid_signals.dimming_14a.dimming_kw == pytest.approx(9.45)
    config, _ = load(
        tmp_path,
        edit(
            "    node: feeder-1\n",
            "    node: feeder-1\n    controllable_devices: 3\n    limit_kw: 30\n",
        ),
    )
    assert config.grid_signals.dimming_14a.dimming_kw == 30


def test_a_modbus_di_device_with_its_inputs_inline(tmp_path) -> None:
    text = edit(
        "    profile: moxa-iologik-e1210\n",
        "    profile: modbus-di\n    inputs:\n"
        "      - {name: dim, table: holding, address: 100, bit: 2}\n",
    )
    config, _ = load(tmp_path, edit("    input: di0\n", "    input: dim\n", text))
    assert config.devices[1].to_spec().inline_inputs == [
        {"name": "dim", "table": "holding", "address": 100, "bit": 2}
    ]


# (case id, config text, path, marker of the expected line, message part)
CASES = [
    (
        "unknown-device",
        edit("    device: dso-box\n", "    device: dso-bx\n"),
        "grid_signals.dimming_14a.device",
        "device: dso-bx",
        "unknown device 'dso-bx' (did you mean 'dso-box'?)",
    ),
    (
        "a-meter-as-the-contact",
        edit("    device: dso-box\n", "    device: grid-meter\n"),
        "grid_signals.dimming_14a.device",
        "device: grid-meter",
        "device 'grid-meter' is a meter (profile eastron-sdm630), not a digital I/O device "
        "(I/O profiles: modbus-di, moxa-iologik-e1210)",
    ),
    (
        "unknown-input",
        edit("    input: di0\n", "    input: dl0\n"),
        "grid_signals.dimming_14a.input",
        "input: dl0",
        "device 'dso-box' has no input 'dl0' (did you mean 'di0'?); its inputs: di0, di1, di2, "
        "di3, di4, di5, di6, di7, … (16 in all)",
    ),
    (
        "unknown-node",
        edit("    node: feeder-1\n", "    node: feeder-2\n"),
        "grid_signals.dimming_14a.node",
        "node: feeder-2",
        "unknown circuit 'feeder-2' (did you mean 'feeder-1'?)",
    ),
    (
        "bad-active-when",
        edit("    input: di0\n", "    input: di0\n    active_when: high\n"),
        "grid_signals.dimming_14a.active_when",
        "active_when: high",
        "Input should be 'closed' or 'open'",
    ),
    (
        "io-module-as-site-meter",
        edit("  meter: grid-meter\n", "  meter: dso-box\n"),
        "site.meter",
        "meter: dso-box",
        "device 'dso-box' is a digital I/O module (profile moxa-iologik-e1210), not a meter",
    ),
    (
        "modbus-di-without-inputs",
        edit("    profile: moxa-iologik-e1210\n", "    profile: modbus-di\n"),
        "devices[1]",
        "  - name: dso-box",
        "profile 'modbus-di' needs an inline `inputs` list",
    ),
    (
        "inputs-on-a-shipped-profile",
        edit("    unit_id: 3\n", "    unit_id: 3\n    inputs: [{name: x, address: 1}]\n"),
        "devices[1]",
        "  - name: dso-box",
        "`inputs` is only for profile 'modbus-di'",
    ),
    (
        "modbus-di-bad-input",
        edit(
            "    profile: moxa-iologik-e1210\n",
            "    profile: modbus-di\n    inputs:\n      - {name: di0, table: coil, address: 1, "
            "bit: 4}\n",
        ),
        "devices[1].inputs",
        "    inputs:",
        "profile 'modbus-di:dso-box': inputs[0].bit: only for an input in a holding or input "
        "register",
    ),
]


@pytest.mark.parametrize(
    ("text", "where", "marker", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_check_config_names_the_problem_and_its_line(tmp_path, text, where, marker, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    rendered = info.value.render()
    expected = f"{where} (line {line_of(text, marker)}): "
    assert any(expected in line and message in line for line in rendered.splitlines()), rendered


def test_a_configured_limit_below_the_minimum_is_a_warning(tmp_path) -> None:
    text = edit(
        "    node: feeder-1\n", "    node: feeder-1\n    controllable_devices: 2\n    limit_kw: 5\n"
    )
    _, warnings = load(tmp_path, text)
    [warning] = signal_warnings(warnings)
    assert warning.startswith("grid_signals.dimming_14a.limit_kw (line ")
    assert "5 kW is below the §14a minimum for 2 controllable device(s) (6.72 kW" in warning


def test_other_load_behind_the_node_above_the_limit_is_a_warning(tmp_path) -> None:
    # On the grid node the limit counts the building: 20 A per phase is 13.8 kW > 4.2 kW.
    text = edit("    node: feeder-1\n", "    node: grid\n")
    text = edit("  meter: grid-meter\n", "  meter: grid-meter\n  non_ev_max_a: 20\n", text)
    _, warnings = load(tmp_path, text)
    [warning] = signal_warnings(warnings)
    assert warning.startswith("grid_signals.dimming_14a.node (line ")
    assert "worst-case non-EV load on 'grid' (13.8 kW) is above the dimming limit (4.2 kW)" in (
        warning
    )
