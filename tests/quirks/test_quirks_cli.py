"""`sitectl quirks` lists the quirk files; a charger's `quirks:` pin is checked by check-config."""

from __future__ import annotations

from sitectl.cli import main
from sitectl.config import Config
from tests.helpers import MINIMAL_CONFIG


def test_quirks_lists_every_file_with_its_sources(capsys) -> None:
    assert main(["quirks"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("default (")
    assert "abb-terra-ac: ABB Terra AC" in out
    assert "  max_stack_level: 0" in out
    assert "refuses_zero_a: True (unsure)" in out
    assert "https://github.com/evcc-io/evcc/issues/17836" in out


def test_quirks_shows_one_and_an_unknown_name_is_an_error(capsys) -> None:
    assert main(["quirks", "go-e"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("go-e:") and "abb" not in out
    assert main(["quirks", "nope"]) == 1
    assert "no quirks 'nope'" in capsys.readouterr().err


def test_check_config_accepts_a_known_pin_and_names_an_unknown_one(write_config, capsys) -> None:
    pinned = MINIMAL_CONFIG.replace(
        "    max_current_a: 32\n", "    max_current_a: 32\n    quirks: go-e\n"
    )
    assert main(["check-config", str(write_config(pinned))]) == 0
    wrong = pinned.replace("quirks: go-e", "quirks: go-x")
    assert main(["check-config", str(write_config(wrong, "wrong.yaml"))]) == 1
    err = capsys.readouterr().err
    assert "chargers[0].quirks (line 12): unknown quirks 'go-x'" in err
    assert "go-e" in err  # the known names are offered


def test_the_pin_is_in_the_config_model() -> None:
    assert "quirks" in Config.model_json_schema()["$defs"]["ChargerConfig"]["properties"]
