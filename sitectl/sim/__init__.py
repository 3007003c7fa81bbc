"""A simulated depot: stub CSMS and simulated chargers (tests, benchmarks and the demo)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["DEMO_CONFIG"]

#: The demo depot's configuration, shipped as package data so ``sitectl demo`` works from a
#: wheel as well as from a checkout (a pip install is a directory, never a zip, so it is a path).
DEMO_CONFIG = Path(str(files(__name__) / "demo.yaml"))
