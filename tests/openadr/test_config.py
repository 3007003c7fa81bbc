"""The ``grid_signals.openadr`` section: what check-config refuses, warns about, never prints."""

from __future__ import annotations

import pytest

from sitectl.app import build_components
from sitectl.config import ConfigError, load_config
from sitectl.state import SiteState
from sitectl.store import Store
from tests.helpers import MINIMAL_CONFIG

SECRET = "vtn-client-secret-7f3k9q2m"
SECTION = f"""\
grid_signals:
  openadr:
    enabled: true
    vtn_url: https://vtn.dso.example/openadr3/3.1.0
    client_id: depot-north
    client_secret: {SECRET}
    programs:
      - name: flex-connection
        heartbeat: true
    failsafe_kw: 60
    simple_levels_kw: {{1: 80, 2: 60, 3: 40}}
"""


def problems(write_config, section: str = SECTION, environ=None) -> list[str]:
    path = write_config(MINIMAL_CONFIG + section)
    try:
        _, warnings = load_config(path, environ=environ or {})
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return [str(w) for w in warnings]


def test_a_complete_section_loads_with_its_defaults(write_config) -> None:
    cfg, _ = load_config(write_config(MINIMAL_CONFIG + SECTION), environ={})
    oadr = cfg.grid_signals.openadr
    assert oadr.client_secret.get_secret_value() == SECRET
    assert oadr.node == "grid" and oadr.ven_name is None and oadr.unreachable_after_s == 300
    assert oadr.simple_levels_kw == {1: 80.0, 2: 60.0, 3: 40.0}
    assert oadr.programs[0].heartbeat and not oadr.webhook.enabled


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (("    client_secret: " + SECRET + "\n", ""), "the OpenADR VEN needs client_secret"),
        (("    failsafe_kw: 60\n", ""), "must leave a limit: set failsafe_kw"),
        (("{1: 80, 2: 60, 3: 40}", "{4: 10}"), "SIMPLE levels are 1, 2 and 3"),
        (("        heartbeat: true\n", "      - name: flex-connection\n"), "is named twice"),
        (("    failsafe_kw: 60\n", "    failsafe_kw: 60\n    node: feder\n"),
         "unknown node 'feder' (did you mean 'feeder'?)"),
        (("    failsafe_kw: 60\n", "    failsafe_kw: 60\n    webhook: {enabled: true}\n"),
         "the VTN cannot call back 0.0.0.0: set callback_url"),
        (("https://vtn", "ftp://vtn"), "must be an http:// or https:// URL"),
    ],
    ids=["no-secret", "no-failsafe", "level-4", "twice", "node", "callback", "url"],
)  # fmt: skip
def test_what_cannot_run_is_an_error_at_its_field(write_config, change, said) -> None:
    found = problems(write_config, SECTION.replace(*change))
    assert any(said in p and "grid_signals.openadr" in p for p in found), found
    assert all(SECRET not in p for p in found)


def test_what_is_probably_wrong_is_a_warning(write_config) -> None:
    section = (
        SECTION.replace("https://vtn.dso.example", "http://vtn.dso.example")
        .replace("failsafe_kw: 60", "failsafe_kw: 100")
        .replace(SECRET, "change-me-example-secret")
    )
    found = problems(write_config, section)
    assert any("vtn_url" in w and "in clear" in w for w in found)
    assert any("failsafe_kw" in w and "changes nothing" in w for w in found)
    assert any("client_secret" in w and "placeholder" in w for w in found)
    assert any("reports" in w and "no site.meter" in w for w in found)


def test_the_secret_comes_from_a_file_or_the_environment(write_config, tmp_path) -> None:
    (tmp_path / "oadr.secret").write_text(SECRET + "\n")
    (tmp_path / "oadr.secret").chmod(0o600)
    section = SECTION.replace(f"client_secret: {SECRET}", "client_secret_file: oadr.secret")
    cfg, _ = load_config(write_config(MINIMAL_CONFIG + section), environ={})
    assert cfg.grid_signals.openadr.client_secret.get_secret_value() == SECRET
    environ = {"SITECTL_GRID_SIGNALS__OPENADR__CLIENT_SECRET": "from-the-environment-123456"}
    cfg, _ = load_config(write_config(MINIMAL_CONFIG + SECTION), environ=environ)
    assert cfg.grid_signals.openadr.client_secret.get_secret_value().startswith("from-the-env")


def test_the_app_runs_the_ven_only_when_enabled(write_config, tmp_path) -> None:
    for section, expected in ((SECTION, True), ("", False)):
        cfg, _ = load_config(write_config(MINIMAL_CONFIG + section), environ={})
        store = Store(tmp_path / "s.sqlite")
        try:
            names = [c.name for c in build_components(cfg, SiteState(cfg), store)]
        finally:
            store.close()
        assert ("openadr" in names) is expected
