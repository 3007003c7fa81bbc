"""What pyproject.toml declares, the locks pin and a wheel ships agree.

* every declared dependency is pinned, with hashes, at a version its range allows, in
  ``requirements/lock.txt`` (runtime, dev, crosscheck) and, runtime only, ``runtime.txt``;
* ``requirements/floors.txt`` (what ``scripts/test-floors`` installs) is exactly the floors;
* the linter is pinned, cvxpy is no runtime dependency;
* a wheel built from the checkout carries the demo's configuration and the licence, and an
  install of it finds and validates the demo depot without the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {
    name: [Requirement(r) for r in reqs] for name, reqs in PROJECT["optional-dependencies"].items()
}


def pins(lock: str) -> dict[str, tuple[str, int]]:
    """``name -> (version, number of hashes)`` of a pip-compile file with hashes."""
    text = (REPO / "requirements" / lock).read_text()
    found = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if match:
            found[canonicalize_name(match[1])] = (match[2], block.count("--hash=sha256:"))
    return found


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("lock.txt", RUNTIME + EXTRAS["dev"] + EXTRAS["crosscheck"]),
        ("runtime.txt", RUNTIME),
    ],
)
def test_lock_pins_every_declared_dependency_inside_its_range(lock, requirements) -> None:
    pinned = pins(lock)
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} is declared but not in requirements/{lock}"
        version, hashes = pinned[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {name}=={version}, outside {req}: re-run pip-compile"
        )
        assert hashes, f"{name} has no hash in requirements/{lock}"
    # The editable install is built without build isolation, from the lock's backend.
    backend = Requirement(PYPROJECT["build-system"]["requires"][0])
    assert backend.specifier.contains(pinned[canonicalize_name(backend.name)][0])


def test_runtime_lock_has_no_dev_or_crosscheck_packages() -> None:
    pinned = pins("runtime.txt")
    for name in ("cvxpy", "scipy", "pytest", "ruff", "playwright"):
        assert name not in pinned


def test_floors_file_is_exactly_the_declared_floors() -> None:
    floors = {canonicalize_name(k): v for k, (v, _) in pins("floors.txt").items()}
    for req in RUNTIME:
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert lower, f"{req}: no floor"
        upper = [s for s in req.specifier if s.operator == "<"]
        assert upper, f"{req}: no upper bound"
        pinned = floors.get(canonicalize_name(req.name))
        assert pinned is not None and Version(pinned) == Version(lower[0]), (
            f"requirements/floors.txt does not install the floor of {req}"
        )
    assert set(floors) == {canonicalize_name(r.name) for r in RUNTIME}


def test_linter_is_pinned_and_cvxpy_is_optional() -> None:
    ruff = [r for r in EXTRAS["dev"] if r.name == "ruff"]
    assert len(ruff) == 1 and str(ruff[0].specifier).startswith("=="), "pin the ruff version"
    assert "cvxpy" not in {r.name for r in RUNTIME}
    assert "cvxpy" in {r.name for r in EXTRAS["crosscheck"]}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout (the build never writes into the repo)."""
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("sitectl", "devices", "optimizer"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("sitectl-*.whl")
    return built


def test_wheel_ships_the_demo_config_and_the_license(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "sitectl/sim/demo.yaml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "devices/profiles/eastron-sdm630.yaml" in names  # the demo's meters
    assert "devices/profiles/io/moxa-iologik-e1210.yaml" in names  # I/O profiles too


def test_installed_wheel_finds_and_validates_the_demo_depot(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    # From "/", so nothing can come from the checkout: the path is the installed package data.
    code = (
        "from sitectl.sim import DEMO_CONFIG; from sitectl.cli import main; print(DEMO_CONFIG);"
        "raise SystemExit(main(['check-config', '-q', str(DEMO_CONFIG)]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.splitlines()[0]).is_relative_to(target)
