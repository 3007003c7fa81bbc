"""The ``sitectl`` command as an installer runs it: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import wait_for_sync

REPO = Path(__file__).resolve().parent.parent
SECRET = "cp1-password-0123456789"


def sitectl(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "sitectl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def test_check_config_valid_prints_summary_and_exits_0() -> None:
    result = sitectl("check-config", "configs/example.yaml")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("configs/example.yaml: OK")
    assert "├─ feeder-a (feeder) 400 A — 5 chargers: BUS-01" in out
    assert "chargers: 10 (8 AC, 2 DC; OCPP 1.6: 8, 2.0.1: 2)" in out
    assert len(out.splitlines()) <= 25  # one screen


def test_check_config_invalid_lists_problems_and_exits_1(write_config) -> None:
    path = write_config(
        "site:\n  id: d\n  limit_kw: 10\n  phase_limit_a: 32\nchargers:\n"
        "  - id: A\n    circuit: feeder-9\n    max_current_a: 16\n"
        "    password: abcdefghijklmnop\n"
    )
    result = sitectl("check-config", str(path))
    assert result.returncode == 1
    assert "chargers[0].circuit (line 7): unknown circuit 'feeder-9'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("target", ["missing.yaml", ".", "empty.yaml"])
def test_check_config_unreadable_file_is_one_line(tmp_path: Path, target: str) -> None:
    (tmp_path / "empty.yaml").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "sitectl", "check-config", target],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")


def test_check_config_never_prints_secrets(write_config) -> None:
    path = write_config()
    result = sitectl("check-config", str(path))
    assert result.returncode == 0
    assert SECRET not in result.stdout + result.stderr
    # Not even when the secret is the value that is wrong.
    bad = write_config(
        path.read_text().replace(
            "max_current_a: 32", "max_current_a: 32\n    upstream_password: [1, 2]"
        ),
        "bad.yaml",
    )
    result = sitectl("check-config", str(bad))
    assert result.returncode == 1
    assert "chargers[0].upstream_password" in result.stderr
    assert "[1, 2]" not in result.stderr


def test_check_config_takes_c_file_like_every_other_command(write_config) -> None:
    path = str(write_config())
    for args in (["-c", path], ["--config", path], [path], [path, "-c", path]):
        result = sitectl("check-config", *args)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.startswith(f"{path}: OK"), args
    neither = sitectl("check-config")
    assert neither.returncode == 2
    assert "check-config -c FILE" in neither.stderr
    two = sitectl("check-config", path, "-c", "other.yaml")
    assert two.returncode == 2
    assert "two files given" in two.stderr


def test_check_config_shows_a_yaml_syntax_error_with_a_caret(write_config) -> None:
    path = write_config("site:\n  id: depot\n  name: North: bus depot\n")
    result = sitectl("check-config", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: 1 problem found",
        "  line 3, column 14: YAML syntax error: a ':' where none can be: quote a value that "
        "contains ': ', or check this line's indentation and the ':' after the key above",
        "    3 |   name: North: bus depot",
        "      |              ^",
    ]


def test_schema_command_prints_the_committed_schema() -> None:
    result = sitectl("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout) == json.loads(
        (REPO / "configs" / "sitectl.schema.json").read_text()
    )


def test_usage_error_exits_2() -> None:
    assert sitectl("frobnicate").returncode == 2
    assert sitectl("run").returncode == 2  # -c is required


class Reader:
    """Collects a process's stderr lines in a thread so tests can wait on them."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


def test_run_stops_cleanly_on_sigterm_and_logs_no_secret(write_config) -> None:
    path = write_config()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sitectl",
            "--log-format",
            "json",
            "--log-level",
            "DEBUG",
            "run",
            "-c",
            str(path),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    reader = Reader(process)
    try:
        wait_for_sync(
            lambda: "sitectl 0.1.0 started" in reader.text(), timeout=30, message="the started line"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    reader._thread.join(timeout=5)
    records = [json.loads(line) for line in reader.lines if line.startswith("{")]
    messages = [r["msg"] for r in records]
    assert "received SIGTERM, shutting down" in messages
    assert messages[-1] == "sitectl stopped cleanly"
    assert SECRET not in reader.text()


def test_run_with_invalid_config_exits_1_without_traceback(write_config) -> None:
    path = write_config("site: {id: d}\n")
    result = sitectl("run", "-c", str(path))
    assert result.returncode == 1
    assert "site.limit_kw (line 1): required field is missing" in result.stderr
    assert "Traceback" not in result.stderr
