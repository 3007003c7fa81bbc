"""The container image builds, runs read-only as a non-root user and turns healthy.

Needs a working docker daemon (and a registry for the base image); skipped otherwise, because
the image is an optional way to install. The static checks below run everywhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers import MINIMAL_CONFIG, wait_for_sync

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_dockerfile_is_multi_stage_non_root_with_volume_and_healthcheck() -> None:
    assert DOCKERFILE.count("\nFROM ") + DOCKERFILE.startswith("FROM ") >= 2
    assert "\nUSER sitectl" in DOCKERFILE
    assert "\nVOLUME /var/lib/sitectl" in DOCKERFILE
    assert "\nHEALTHCHECK " in DOCKERFILE and "/api/site" in DOCKERFILE
    assert "--require-hashes -r requirements/runtime.txt" in DOCKERFILE
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def _docker_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # a hanging client, an odd environment
        return False
    return result.returncode == 0


def _docker(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr[-2000:]}"
    return result.stdout.strip()


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not _docker_ready(), reason="no docker daemon here")
def test_image_runs_read_only_and_turns_healthy(tmp_path: Path) -> None:
    tag = f"sitectl-test:{uuid.uuid4().hex[:8]}"
    _docker("build", "-t", tag, str(REPO), timeout=1100)
    config = tmp_path / "sitectl.yaml"
    config.write_text(
        textwrap.dedent(MINIMAL_CONFIG).replace(
            "http:\n  enabled: false", "http:\n  enabled: true\n  listen_port: 8080"
        )
    )
    config.chmod(0o644)
    volume = f"sitectl-test-{uuid.uuid4().hex[:8]}"
    name = f"sitectl-test-{uuid.uuid4().hex[:8]}"
    try:
        _docker(
            "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
            "-v", f"{volume}:/var/lib/sitectl", "-v", f"{config}:/etc/sitectl/sitectl.yaml:ro",
            "-p", "127.0.0.1::8080",
            "--health-interval", "2s", "--health-start-period", "5s",
            tag,
        )  # fmt: skip
        seen = {"health": ""}

        def settled() -> bool:
            state = json.loads(_docker("inspect", "--format", "{{json .State}}", name))
            seen["health"] = state.get("Health", {}).get("Status", "")
            return seen["health"] == "healthy" or not state["Running"]

        wait_for_sync(settled, timeout=120, interval=1, message="the container to be healthy")
        assert seen["health"] == "healthy", _docker("logs", name)
        port = _docker("port", name, "8080/tcp").splitlines()[0].rsplit(":", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/site", timeout=5) as r:
            assert json.load(r)
        assert _docker("exec", name, "id", "-u") != "0"
        assert "sitectl.sqlite" in _docker("exec", name, "ls", "/var/lib/sitectl")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "volume", "rm", volume], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", tag], capture_output=True, timeout=120)
