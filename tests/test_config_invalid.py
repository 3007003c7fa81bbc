"""Invalid depot configurations: each gets its own message at the right path and YAML line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sitectl.config import ConfigError, load_config

BASE = """\
site:
  id: depot
  limit_kw: 200
  phase_limit_a: 300
  meter: grid-meter
circuits:
  - id: tx
    kind: transformer
    limit_a: 300
  - id: feeder-1
    parent: tx
    limit_a: 150
chargers:
  - id: CP1
    circuit: feeder-1
    max_current_a: 32
    password: password-cp1-0000
  - id: CP2
    circuit: feeder-1
    max_current_a: 32
    phase_rotation: L2-L3-L1
    password: password-cp2-0000
devices:
  - name: grid-meter
    profile: eastron-sdm630
    host: 127.0.0.1
storage:
  path: s.sqlite
"""

CP1 = "  - id: CP1\n    circuit: feeder-1\n    max_current_a: 32\n"


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, f"test case does not apply: {old!r}"
    return text.replace(old, new, 1)


# (case id, config text, expected location prefix, marker whose line is expected, message part)
CASES = [
    (
        "unknown-circuit",
        edit(CP1, CP1.replace("feeder-1", "feeder-9")),
        "chargers[0].circuit",
        "circuit: feeder-9",
        "unknown circuit 'feeder-9' (did you mean 'feeder-1'?)",
    ),
    (
        "duplicate-charger",
        edit("id: CP2", "id: CP1"),
        "chargers[1].id",
        "  - id: CP1\n    circuit: feeder-1\n    max_current_a: 32\n    phase",
        "duplicate charger id 'CP1' (also chargers[0])",
    ),
    (
        "cycle",
        edit("    kind: transformer\n", "    kind: transformer\n    parent: feeder-1\n"),
        "circuits[0].parent",
        "parent: feeder-1",
        "cycle in the circuit tree: tx → feeder-1 → tx",
    ),
    (
        "unknown-parent",
        edit("parent: tx", "parent: tx-9"),
        "circuits[1].parent",
        "parent: tx-9",
        "unknown circuit 'tx-9'",
    ),
    (
        "rotation-not-permutation",
        edit("L2-L3-L1", "L2-L2-L1"),
        "chargers[1].phase_rotation",
        "phase_rotation",
        "is not a permutation of L1, L2, L3",
    ),
    (
        "rotation-garbage",
        edit("L2-L3-L1", "RST"),
        "chargers[1].phase_rotation",
        "phase_rotation",
        "is not a list of phases",
    ),
    (
        "failsafe-above-max",
        edit(CP1, CP1 + "    failsafe_current_a: 40\n"),
        "chargers[0]",
        "  - id: CP1",
        "failsafe_current_a 40.0 A is above max_current_a 32.0 A",
    ),
    (
        "failsafe-below-iec-floor",
        edit(CP1, CP1 + "    failsafe_current_a: 3\n"),
        "chargers[0]",
        "  - id: CP1",
        "between 0 and the 6.0 A minimum",
    ),
    (
        "failsafe-sum-over-circuit",
        edit("    limit_a: 150\n", "    limit_a: 10\n"),
        "circuits[1].limit_a",
        "limit_a: 10",
        "fail-safe limits of the chargers under 'feeder-1' add up to 12 A on L1",
    ),
    (
        "failsafe-sum-over-non-ev",
        edit("    limit_a: 150\n", "    limit_a: 150\n    non_ev_max_a: 140\n"),
        "circuits[1].limit_a",
        "limit_a: 150",
        "minus 140 A worst-case non-EV load",
    ),
    (
        "unknown-site-meter",
        edit("meter: grid-meter", "meter: gridmeter"),
        "site.meter",
        "meter: gridmeter",
        "unknown device 'gridmeter' (did you mean 'grid-meter'?)",
    ),
    (
        "duplicate-device",
        edit("storage:", "  - name: grid-meter\n    profile: x\n    host: h\nstorage:"),
        "devices[1].name",
        "  - name: grid-meter\n    profile: x",
        "duplicate device name",
    ),
    (
        "device-two-transports",
        edit("    host: 127.0.0.1\n", "    host: 127.0.0.1\n    serial_port: /dev/ttyUSB0\n"),
        "devices[0]",
        "  - name: grid-meter",
        "give exactly one of host",
    ),
    (
        "unknown-field",
        edit(CP1, CP1 + "    max_curent_a: 32\n"),
        "chargers[0].max_curent_a",
        "max_curent_a",
        "unknown field 'max_curent_a' (did you mean 'max_current_a'?)",
    ),
    (
        "wrong-type",
        edit("limit_kw: 200", "limit_kw: lots"),
        "site.limit_kw",
        "limit_kw: lots",
        "valid number",
    ),
    (
        "negative-limit",
        edit("    limit_a: 150\n", "    limit_a: -5\n"),
        "circuits[1].limit_a",
        "limit_a: -5",
        "must be a finite number >= 0",
    ),
    (
        "three-phase-values",
        edit("    limit_a: 150\n", "    limit_a: [100, 100]\n"),
        "circuits[1].limit_a",
        "limit_a: [100, 100]",
        "expected three values (L1, L2, L3), got 2",
    ),
    (
        "identity-too-long",
        edit("id: CP2", "id: " + "X" * 49),
        "chargers[1].id",
        "id: XXXX",
        "charge point identity is 49 characters; OCPP allows 48",
    ),
    (
        "identity-colon",
        edit("id: CP2", "id: 'CP:2'"),
        "chargers[1].id",
        "id: 'CP:2'",
        "must not contain ':'",
    ),
    (
        "ocpp-version",
        edit(CP1, CP1 + "    ocpp_version: '1.5'\n"),
        "chargers[0].ocpp_version",
        "ocpp_version",
        "'1.6' or '2.0.1'",
    ),
    (
        "tls-needs-certs",
        BASE + "ocpp:\n  security_profile: 2\n",
        "ocpp",
        "ocpp:",
        "security_profile 2 needs tls_cert_file and tls_key_file",
    ),
    (
        "password-missing",
        edit("    password: password-cp2-0000\n", ""),
        "chargers[1].password",
        "  - id: CP2",
        "security_profile 1 needs a password",
    ),
    ("mqtt-qos-2", BASE + "mqtt:\n  qos: 2\n", "mqtt.qos", "qos: 2", "0 or 1"),
    (
        "upstream-not-ws",
        BASE + "ocpp:\n  upstream_url: http://csms.example.com\n",
        "ocpp.upstream_url",
        "upstream_url",
        "must be a ws:// or wss:// URL",
    ),
    (
        "reserved-grid-id",
        edit("  - id: tx\n", "  - id: grid\n"),
        "circuits[0].id",
        "  - id: grid",
        "'grid' is reserved for the grid connection",
    ),
    (
        "validity-shorter-than-two-periods",
        BASE + "control:\n  period_s: 20\n  profile_validity_s: 30\n",
        "control",
        "control:",
        "profile_validity_s (30 s) must be at least two control periods",
    ),
    (
        "departure-time",
        BASE + "control:\n  default_departure: '25:00'\n",
        "control.default_departure",
        "default_departure",
        "'25:00' is not a time of day",
    ),
    (
        "time-zone",
        edit("  meter: grid-meter\n", "  meter: grid-meter\n  timezone: Mars/Base\n"),
        "site.timezone",
        "timezone",
        "unknown time zone 'Mars/Base'",
    ),
    (
        "min-above-max",
        edit(CP1, CP1 + "    min_current_a: 40\n"),
        "chargers[0]",
        "  - id: CP1",
        "min_current_a 40.0 A is above max_current_a 32.0 A",
    ),
    (
        "single-phase-rotation-on-3-phase",
        edit("L2-L3-L1", "L2"),
        "chargers[1]",
        "  - id: CP2",
        "names one phase but the charger has 3 phases",
    ),
    (
        "unknown-device-profile",
        edit("profile: eastron-sdm630", "profile: eastron-sdm999"),
        "devices[0].profile",
        "profile: eastron-sdm999",
        "profile 'eastron-sdm999': unknown profile",
    ),
    (
        "generic-map-invalid",
        edit(
            "    profile: eastron-sdm630\n",
            "    profile: generic\n    registers:\n"
            "      - {quantity: power_total, address: 0, decode: u24, unit: W}\n",
        ),
        "devices[0].registers",
        "    registers:",
        "registers[0].decode",
    ),
    (
        "generic-map-missing",
        edit("    profile: eastron-sdm630\n", "    profile: generic\n"),
        "devices[0]",
        "  - name: grid-meter",
        "profile 'generic' needs an inline `registers` map",
    ),
    (
        "efficiency-below-range",
        edit(CP1, CP1 + "    efficiency: 0.3\n"),
        "chargers[0].efficiency",
        "efficiency: 0.3",
        "greater than or equal to 0.5",
    ),
    (
        "efficiency-above-one",
        edit(CP1, CP1 + "    efficiency: 93\n"),
        "chargers[0].efficiency",
        "efficiency: 93",
        "less than or equal to 1",
    ),
    (
        "bad-http-listen-host",
        BASE + "http:\n  listen_host: 'not a host!'\n",
        "http.listen_host",
        "listen_host: 'not a host!'",
        "is neither an IP address nor a host name",
    ),
    (
        "duplicate-yaml-key",
        edit("  limit_kw: 200\n", "  limit_kw: 200\n  limit_kw: 300\n"),
        "line",
        "  limit_kw: 300",
        "key 'limit_kw' appears twice in this mapping (first on line 3)",
    ),
]


def line_of(text: str, marker: str) -> int:
    index = text.index(marker)
    # A marker that starts with the list dash points at its own line; others likewise.
    return text[:index].count("\n") + 1


@pytest.mark.parametrize(
    ("text", "where", "marker", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_config_reports_its_problem_at_its_line(
    tmp_path: Path, text: str, where: str, marker: str, message: str
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    rendered = info.value.render()
    line = line_of(text, marker)
    expected = f"line {line}" if where == "line" else f"{where} (line {line}): "
    matching = [str(p) for p in info.value.problems if message in str(p)]
    assert matching, f"no problem says {message!r}:\n{rendered}"
    assert any(m.startswith(expected) for m in matching), (
        f"expected {expected!r} before {message!r}:\n{rendered}"
    )


def test_the_base_of_the_invalid_cases_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BASE)
    config, _ = load_config(path, environ={})
    assert [c.id for c in config.chargers] == ["CP1", "CP2"]


def test_field_and_reference_problems_are_reported_together(tmp_path: Path) -> None:
    text = edit("limit_kw: 200", "limit_kw: lots", edit(CP1, CP1.replace("feeder-1", "nowhere")))
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    messages = [str(p) for p in info.value.problems]
    assert any("site.limit_kw" in m for m in messages)
    assert any("unknown circuit 'nowhere'" in m for m in messages)
    # Sorted by line, so the report reads top to bottom like the file.
    lines = [p.line for p in info.value.problems]
    assert lines == sorted(lines)


def test_missing_password_file_names_the_file_not_the_secret(tmp_path: Path) -> None:
    text = edit("    password: password-cp2-0000\n", "    password_file: nope.pass\n")
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    rendered = info.value.render()
    line = line_of(text, "password_file: nope.pass")
    assert (
        f"chargers[1].password_file (line {line}): cannot read '{tmp_path / 'nope.pass'}'"
        in rendered
    )


def test_env_var_for_an_unknown_list_item_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"SITECTL_CHARGERS__CP9__PASSWORD": "whatever-long"})
    assert "no list item 'CP9' to override" in info.value.render()
    assert "environment SITECTL_CHARGERS__CP9__PASSWORD" in info.value.render()


def test_env_override_with_bad_value_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"SITECTL_SITE__LIMIT_KW": "a lot"})
    problems = [str(p) for p in info.value.problems]
    assert problems == [
        "site.limit_kw (environment SITECTL_SITE__LIMIT_KW): Input should be a valid number, "
        "unable to parse string as a number (got 'a lot')"
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("   \n# only a comment\n", "has no settings (only comments)"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("site: [\n", "YAML syntax error"),
        ("site:\n\tid: x\n", "YAML syntax error"),
    ],
    ids=["empty", "comment-only", "top-level-list", "unclosed", "tab-indent"],
)
def test_unusable_files_give_one_clear_error(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert expected in info.value.render()
    assert "Traceback" not in info.value.render()


def test_not_utf8_and_directory_and_missing(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"site:\n  id: \xff\xfe\n")
    for path, expected in [
        (binary, "is not UTF-8 text"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing.yaml", "no such file"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        assert info.value.render().startswith("error: ")
        assert expected in info.value.render()


# (case id, text, line, column, installer words, the line shown)
YAML_CASES = [
    ("tab", "site:\n\tid: x\n", 2, 1, "a tab character: YAML indents with spaces only", "→id: x"),
    (
        "colon-in-value",
        "site:\n  id: depot\n  name: Depot: north\n",
        3,
        14,
        "a ':' where none can be: quote a value that contains ': '",
        "  name: Depot: north",
    ),
    (
        "misaligned-key",
        "site:\n  id: depot\n limit_kw: 3\n",
        3,
        2,
        "this line does not line up with the lines above it",
        " limit_kw: 3",
    ),
    (
        "unclosed-quote",
        "site:\n  id: depot\n  name: 'North\n  limit_kw: 3\n",
        3,
        9,
        "the quote opened here is never closed",
        "  name: 'North",
    ),
    (
        "key-without-colon",
        "site:\n  id: depot\n  limit_kw\n  name: a\n",
        3,
        3,
        "a key without ':'",
        "  limit_kw",
    ),
    (
        "unclosed-bracket",
        "site:\n  phase_limit_a: [100, 100\n  id: x\n",
        2,
        18,
        "the '[' opened here is not closed with ']'",
        "  phase_limit_a: [100, 100",
    ),
    (
        "text-after-quote",
        "site:\n  name: 'Bob's depot'\n",
        2,
        14,
        "more text after a quoted value",
        "  name: 'Bob's depot'",
    ),
    ("at-sign", "site:\n  id: @home\n", 2, 7, "a value cannot start with '@'", "  id: @home"),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "words", "shown"),
    [c[1:] for c in YAML_CASES],
    ids=[c[0] for c in YAML_CASES],
)
def test_yaml_syntax_errors_in_installer_words_with_the_line_and_a_caret(
    tmp_path: Path, text: str, line: int, column: int, words: str, shown: str
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    lines = info.value.render().splitlines()
    assert lines[0] == f"{path}: 1 problem found"
    assert lines[1].startswith(f"  line {line}, column {column}: YAML syntax error: {words}")
    gutter = f"    {line} | "
    assert lines[2] == gutter + shown
    assert lines[3] == " " * (len(gutter) - 2) + "| " + " " * (column - 1) + "^"
    # PyYAML's parser terms mean nothing to an installer.
    for jargon in ("mapping values", "block end", "scanning", "simple key", "token", "flow"):
        assert jargon not in lines[1]


DEFAULTS = """\
site: {id: depot, limit_kw: 200, phase_limit_a: 300}
charger_defaults:
  max_current_a: 32
  password_file: secrets/missing.pass
chargers:
"""


def test_a_bad_charger_defaults_file_is_one_problem_at_charger_defaults(tmp_path: Path) -> None:
    chargers = "".join(f"  - {{id: CP{n}, circuit: grid}}\n" for n in range(10))
    own = "  - {id: OWN, circuit: grid, password_file: own.pass}\n"
    path = tmp_path / "site.yaml"
    path.write_text(DEFAULTS + chargers + own)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    rendered = info.value.render()
    missing = tmp_path / "secrets" / "missing.pass"
    assert [str(p) for p in info.value.problems] == [
        f"charger_defaults.password_file (line 4): cannot read '{missing}': "
        "No such file or directory",
        # A charger that sets its own file is its own problem, at its own line.
        f"chargers[10].password_file (line 16): cannot read '{tmp_path / 'own.pass'}': "
        "No such file or directory",
    ], rendered


def test_a_bad_charger_default_value_is_reported_once_where_it_was_written(
    tmp_path: Path,
) -> None:
    text = DEFAULTS.replace("max_current_a: 32", "max_current_a: 2000").replace(
        "  password_file: secrets/missing.pass\n", "  password: long-enough-password\n"
    )
    chargers = "".join(f"  - {{id: CP{n}, circuit: grid}}\n" for n in range(3))
    path = tmp_path / "site.yaml"
    path.write_text(text + chargers + "  - {id: BIG, circuit: grid, max_current_a: 3000}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    paths = [str(p).split(":")[0] for p in info.value.problems]
    assert paths == [
        "charger_defaults.max_current_a (line 3)",
        "chargers[3].max_current_a (line 9)",
    ]
