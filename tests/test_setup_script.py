"""scripts/_setup.sh installs only when pyproject.toml, the lock or the script changed.

The script runs for real in a temporary copy: a tiny project beside a copy of the script, a lock
that pins only the build backend, and a ``.venv`` whose ``.pth`` file adds this interpreter's
site-packages (so the backend is already there and nothing needs a registry). Every pip call
appends to the file named by ``PIP_LOG``, so "no pip call" is checked directly, with the index
pointed at a dead address and pip's configuration files ignored in case a call slipped through.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "setup-probe"
version = "0.0.1"

[tool.setuptools]
py-modules = ["setup_probe"]
"""


def _backend_pin() -> str:
    """The setuptools entry of the real lock, hashes and all."""
    lock = (REPO / "requirements" / "lock.txt").read_text()
    match = re.search(r"^setuptools==\S+(?: \\\n\s+--hash=\S+)+", lock, flags=re.M)
    assert match, "requirements/lock.txt pins no setuptools (the editable build needs it)"
    return match.group(0) + "\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "_setup.sh").write_text((REPO / "scripts" / "_setup.sh").read_text())
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "lock.txt").write_text(_backend_pin())
    (tmp_path / "pyproject.toml").write_text(PROBE_PYPROJECT)
    (tmp_path / "setup_probe.py").write_text("ANSWER = 42\n")
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    # The venv's bundled setuptools would shadow the pinned one the outer site-packages holds.
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "setuptools"],
        check=True,
        timeout=120,
    )
    # Behind the venv's own site-packages, so what pip installs there still comes first.
    (Path(site) / "zz-outer.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return tmp_path


def _setup(project: Path, log: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "SITECTL_", "VIRTUAL_"))
    }
    environ.update(
        PYTHON=sys.executable,
        PIP_CONFIG_FILE=os.devnull,  # no index, find-links or constraints from the machine
        PIP_INDEX_URL="http://127.0.0.1:9/simple",  # discard port: nothing answers
        PIP_RETRIES="0",
        PIP_TIMEOUT="2",
        PIP_LOG=str(project / log),
        **env,
    )
    return subprocess.run(
        ["bash", "-c", "source scripts/_setup.sh"],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_second_run_calls_no_pip_and_a_changed_lock_reinstalls(project: Path) -> None:
    first = _setup(project, "pip-1.log")
    assert first.returncode == 0, first.stderr
    assert (project / "pip-1.log").exists(), "the first run must install"
    stamp = project / ".venv" / ".sitectl-installed"
    assert stamp.exists()
    probe = subprocess.run(
        [str(project / ".venv" / "bin" / "python"), "-c", "import setup_probe"],
        cwd="/",
        timeout=60,
    )
    assert probe.returncode == 0, "the project is not installed into .venv"

    second = _setup(project, "pip-2.log")
    assert second.returncode == 0, second.stderr
    assert not (project / "pip-2.log").exists(), "nothing changed, yet the second run called pip"

    lock = project / "requirements" / "lock.txt"
    lock.write_text(lock.read_text() + "# changed\n")
    third = _setup(project, "pip-3.log")
    assert third.returncode == 0, third.stderr
    assert (project / "pip-3.log").exists(), "the lock changed, yet nothing was installed"


def test_a_changed_pyproject_reinstalls(project: Path) -> None:
    assert _setup(project, "pip-1.log").returncode == 0
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("0.0.1", "0.0.2"))
    again = _setup(project, "pip-2.log")
    assert again.returncode == 0, again.stderr
    assert (project / "pip-2.log").exists()


def test_unknown_extras_are_refused(project: Path) -> None:
    result = _setup(project, "pip.log", SITECTL_EXTRAS="everything")
    assert result.returncode == 2
    assert "SITECTL_EXTRAS" in result.stderr
    assert not (project / "pip.log").exists()
