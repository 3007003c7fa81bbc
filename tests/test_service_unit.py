"""The systemd unit in configs/ starts sitectl the way the CLI expects, hardened."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from sitectl.cli import build_parser

UNIT = Path(__file__).resolve().parent.parent / "configs" / "sitectl.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_commands_parse_with_our_cli() -> None:
    unit = directives()
    for key in ("ExecStart", "ExecStartPre"):
        argv = shlex.split(unit[key][0])
        assert argv[0].endswith("/sitectl")
        build_parser().parse_args(argv[1:])  # raises SystemExit on drift


def test_unit_runs_as_a_dedicated_user_restarts_and_is_hardened() -> None:
    unit = directives()
    assert unit["User"] == ["sitectl"]
    assert unit["Restart"] == ["always"]
    assert unit["Type"] == ["notify"]  # the app sends READY=1
    for key in (
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "RestrictAddressFamilies",
        "SystemCallFilter",
        "CapabilityBoundingSet",
    ):
        assert key in unit, key


def test_unit_is_watched_never_gives_up_and_survives_a_denied_call() -> None:
    unit = directives()
    # The loop pings after each cycle (sitectl/app.py watchdog_ping): a hung one is restarted.
    assert unit["WatchdogSec"] == ["30"] and unit["NotifyAccess"] == ["main"]
    assert unit["StartLimitIntervalSec"] == ["0"]  # an unattended site never stops retrying
    # Under the syscall allow-list a call outside it must fail, not kill the process:
    # adjtimex(2) (the clock check) is not in @system-service.
    assert unit["SystemCallErrorNumber"] == ["EPERM"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # systemd-analyze is part of every systemd host; the other tests above still ran.
        return
    sitectl = Path(sys.executable).with_name("sitectl")
    unit = UNIT.read_text().replace("/opt/sitectl/bin/sitectl", str(sitectl))
    path = tmp_path / "sitectl.service"
    path.write_text(unit)
    result = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "sitectl.service" in line
    ]
    assert problems == []
